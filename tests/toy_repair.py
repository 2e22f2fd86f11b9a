"""A repair written outside goodnet, as a user would: registering it is all it takes to appear in
`goodnet defend --help`, `--repair`, and `goodnet compare` (GOODNET_PLUGINS=toy_repair)."""

from dataclasses import dataclass

from goodnet import Repair, RepairedModel, RepairOutcome, register_repair, setting
from goodnet.pruning.graph_split import check_conv_layer
from goodnet.pruning.profiling import activation_order
from goodnet.pruning.zeroing import pruned_copy


@register_repair
@dataclass(frozen=True)
class ZeroQuietest(Repair):
    name = "toy-zero-quietest"
    description = "toy: zero the --count channels of --layer that clean data uses least"

    layer: str = setting("conv_3", "conv layer whose output channels are pruned")
    count: int = setting(4, "how many channels to zero", low=1)

    def check_model(self, model):
        """Refused before any work: a --layer that names no conv layer of B."""
        check_conv_layer(model, self.layer)

    def repair(self, model, data, progress=False):
        channels = activation_order(model, data.clean_valid.x, self.layer)[: self.count]
        return RepairOutcome(
            [RepairedModel(self.name, pruned_copy(model, self.layer, channels), {self.layer: channels})]
        )
