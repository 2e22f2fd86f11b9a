"""A small residual network (ResNet-8 layout: a stem and three basic blocks, each conv followed by
BatchNorm), for 28x28 or 32x32 images. It exists to exercise pruning where it is hardest: convs
inside residual blocks, whose output is normalised and then added to a skip connection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier
from .registry import register_architecture


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register_architecture
class ResNet8(ImageClassifier):
    arch = "resnet8"
    channels_last_ready = True  # its forward takes channels-last maps (devices.training_layout)
    final_layer = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        input_divisor: float = 255.0,
        width: int = 16,
    ):
        super().__init__(num_classes, input_shape, input_divisor)
        self.width = int(width)
        w = self.width
        self.conv_stem = nn.Conv2d(self.input_shape[0], w, 3, padding=1, bias=False)
        self.bn_stem = nn.BatchNorm2d(w)
        self.layer1 = BasicBlock(w, w, 1)
        self.layer2 = BasicBlock(w, 2 * w, 2)
        self.layer3 = BasicBlock(2 * w, 4 * w, 2)
        self.fc = nn.Linear(4 * w, self.num_classes)

    def config(self):
        return {**super().config(), "width": self.width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_stem(self.conv_stem(self.scale_input(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
