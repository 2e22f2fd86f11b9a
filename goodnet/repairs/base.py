"""The one base class for repairs: B in, a repaired B' out, with what was done.

A repair sees only the data its contract allows: `RepairData.clean_valid` always, and
`poisoned_valid` only when the repair declares itself an oracle (`uses_poisoned_data`), which the
lab forbids for design and every output labels. Nothing gets test data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..data import ImageSet
from ..errors import GoodnetError


@dataclass(frozen=True)
class RepairData:
    clean_valid: ImageSet
    poisoned_valid: ImageSet | None = None


@dataclass
class RepairOutcome:
    model: nn.Module
    details: dict[str, Any] = field(default_factory=dict)  # JSON-ready: what was pruned, chosen, ...
    # set when B' is B with channels of one conv zeroed and nothing else changed: G can then share
    # B's trunk (PrunedGoodNet) instead of running two whole models
    single_layer: tuple[str, list[int]] | None = None


class Repair:
    """Subclasses set `name` and implement `repair`; `uses_poisoned_data` marks an oracle."""

    name: ClassVar[str]
    uses_poisoned_data: ClassVar[bool] = False
    needs_data: ClassVar[bool] = True

    def repair(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        raise NotImplementedError

    def run(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        """`repair` with the data contract enforced."""
        if self.needs_data and (data is None or data.clean_valid is None):
            raise GoodnetError(f"the {self.name} repair needs clean validation data")
        if self.uses_poisoned_data and data.poisoned_valid is None:
            raise GoodnetError(f"the {self.name} repair is an oracle: it needs poisoned validation data")
        if data is not None and not self.uses_poisoned_data:
            data = RepairData(clean_valid=data.clean_valid)  # it never sees poisoned data
        return self.repair(model.eval(), data, progress)

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
