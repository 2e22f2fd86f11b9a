"""A small CNN for 28x28 digits: the demo's BadNet, laid out like DeepID so the same defaults apply."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FlattenNHWC, ImageClassifier
from .registry import register_architecture


@register_architecture
class SmallCNN(ImageClassifier):
    """conv_1..conv_3 (3x3, same padding) each with a 2x2 max pool, fc_1, output.

    It divides raw 0..255 pixels by `input_divisor` itself, so its data files hold raw pixels like
    the lab's and no scaling option is needed."""

    arch = "small_cnn"
    channels_last_ready = True  # its forward takes channels-last maps (devices.training_layout)
    final_layer = "output"

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        input_divisor: float = 255.0,
        width: int = 16,
    ):
        super().__init__(num_classes, input_shape, input_divisor)
        self.width = int(width)
        channels, height, wide = self.input_shape
        h, w = height // 8, wide // 8
        if h < 1 or w < 1:
            raise ValueError(f"input {height}x{wide} is too small for SmallCNN")
        self.conv_1 = nn.Conv2d(channels, width, 3, padding=1)
        self.pool_1 = nn.MaxPool2d(2)
        self.conv_2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool_2 = nn.MaxPool2d(2)
        self.conv_3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.pool_3 = nn.MaxPool2d(2)
        self.flatten = FlattenNHWC()
        self.dropout = nn.Dropout(0.3)
        self.fc_1 = nn.Linear(4 * width * h * w, 128)
        self.output = nn.Linear(128, self.num_classes)

    def config(self):
        return {**super().config(), "width": self.width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale_input(x)
        x = self.pool_1(F.relu(self.conv_1(x)))
        x = self.pool_2(F.relu(self.conv_2(x)))
        x = self.pool_3(F.relu(self.conv_3(x)))
        x = F.relu(self.fc_1(self.dropout(self.flatten(x))))
        return self.output(x)
