"""An explicit channel list: rebuild someone else's B' (`defend --channels`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import GoodnetError
from ..pruning import pruned_copy
from .base import Repair, RepairData, RepairOutcome


@dataclass
class ExplicitChannels(Repair):
    name = "channels"
    needs_data = False
    layer: str = "conv_3"
    channels: list[int] = field(default_factory=list)

    def repair(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        channels = [int(c) for c in self.channels]
        if len(set(channels)) != len(channels):
            raise GoodnetError("--channels lists a channel twice")
        return RepairOutcome(pruned_copy(model, self.layer, channels),
                             {"layer": self.layer, "pruned": {self.layer: channels}},
                             single_layer=(self.layer, channels))
