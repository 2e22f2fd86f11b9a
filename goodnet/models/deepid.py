"""The lab's DeepID-style face recogniser (CSAW-HackML), with the lab's Keras layer names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FlattenNHWC, ImageClassifier
from .registry import register_architecture


@register_architecture
class DeepID(ImageClassifier):
    """conv_1..conv_3 with 2x2 max pools, then two branches from pool_3 (fc_1 on the flattened
    maps, conv_4 then fc_2) added, ReLU, and the `output` layer. Returns logits (Keras's softmax
    is left out: it does not change the argmax)."""

    arch = "deepid"
    channels_last_ready = True  # its forward takes channels-last maps (devices.training_layout)
    final_layer = "output"

    def __init__(
        self, num_classes: int = 1283, input_shape: tuple[int, int, int] = (3, 55, 47), input_divisor: float = 1.0
    ):
        super().__init__(num_classes, input_shape, input_divisor)
        channels, height, width = self.input_shape
        # Spatial sizes after each valid conv and floor-mode 2x2 pool, as in Keras.
        h, w = (height - 3) // 2, (width - 3) // 2
        h, w = (h - 2) // 2, (w - 2) // 2
        h, w = (h - 2) // 2, (w - 2) // 2
        if h < 2 or w < 2:
            raise ValueError(f"input {height}x{width} is too small for DeepID")
        self.conv_1 = nn.Conv2d(channels, 20, 4)
        self.pool_1 = nn.MaxPool2d(2)
        self.conv_2 = nn.Conv2d(20, 40, 3)
        self.pool_2 = nn.MaxPool2d(2)
        self.conv_3 = nn.Conv2d(40, 60, 3)
        self.pool_3 = nn.MaxPool2d(2)
        self.flatten_1 = FlattenNHWC()
        self.fc_1 = nn.Linear(60 * h * w, 160)
        self.conv_4 = nn.Conv2d(60, 80, 2)
        self.flatten_2 = FlattenNHWC()
        self.fc_2 = nn.Linear(80 * (h - 1) * (w - 1), 160)
        self.output = nn.Linear(160, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale_input(x)
        x = self.pool_1(F.relu(self.conv_1(x)))
        x = self.pool_2(F.relu(self.conv_2(x)))
        pool_3 = self.pool_3(F.relu(self.conv_3(x)))
        fc_1 = self.fc_1(self.flatten_1(pool_3))
        fc_2 = self.fc_2(self.flatten_2(F.relu(self.conv_4(pool_3))))
        return self.output(F.relu(fc_1 + fc_2))
