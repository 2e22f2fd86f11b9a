"""An explicit channel list: rebuild someone else's B' (`defend --channels`), no data needed."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SettingsError
from ..lazy_torch import nn
from ..pruning.graph_split import check_conv_layer, resolve_layer
from ..pruning.zeroing import pruned_copy
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair


@register_repair
@dataclass(frozen=True)
class ExplicitChannels(Repair):
    name = "channels"
    relative_cost = 0.01
    guarded = False  # the user chose the channels; no data to judge on is required
    description = (
        "prune exactly the channels listed in --channels (someone else's B'); data files are optional and only measured"
    )
    data = "none"
    in_comparison = False  # it needs a channel list, which no zoo BadNet comes with

    layer: str = setting("conv_3", "conv layer whose output channels are pruned")
    channels: tuple[int, ...] = setting(
        (), "the channels of --layer to prune (C1,C2,... or C1 C2 ...)", low=0, nonempty=True
    )

    def check(self) -> None:
        if len(set(self.channels)) != len(self.channels):
            raise SettingsError("--channels lists a channel twice")

    def check_model(self, model: nn.Module) -> None:
        """The `layer` setting must name a conv layer of the model."""
        check_conv_layer(model, resolve_layer(model, self.layer))

    def repair(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        channels = list(self.channels)
        return RepairOutcome(
            [RepairedModel(self.name, pruned_copy(model, self.layer, channels), {self.layer: channels})],
            {"layer": self.layer, "pruned": {self.layer: channels}},
        )
