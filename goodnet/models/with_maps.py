"""A traced model that also keeps feature maps: NAD's teacher and student (see
repairs.attention_distillation, whose `tapped` builds the graph). It lives here, apart from the
repair, because defining an nn.Module subclass imports PyTorch, which listing the repairs must not."""

from __future__ import annotations

import torch
from torch import fx, nn


class WithMaps(nn.Module):
    """Runs a tapped graph: returns the logits, keeps the stage maps of the latest pass."""

    def __init__(self, graph: fx.GraphModule):
        super().__init__()
        self.graph_module = graph
        self.maps: tuple[torch.Tensor, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, self.maps = self.graph_module(x)
        return logits
