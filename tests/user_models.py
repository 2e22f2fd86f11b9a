"""PyTorch models goodnet did not define: loaded by tests as `user_models:tiny_resnet`, and the tiny
conv net the conformance tests replay training steps on."""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block = Block(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = self.block(self.stem(x / 255.0))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tiny_resnet():
    torch.manual_seed(1)
    model = TinyResNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.3)
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model


class TinyConvHead(nn.Module):
    """One 3x3 conv (1 -> 4 channels) on 6x6 images, ReLU, one linear head to 3 classes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


class FileWritingNet(nn.Module):
    """A model whose forward creates a file (`probe`): what a TorchScript file's code can do when
    it runs. goodnet must never run it unless told the file is trusted."""

    def __init__(self, probe: str):
        super().__init__()
        self.probe = probe
        self.head = nn.Linear(28 * 28, 10)

    def forward(self, x):
        mark = torch.from_file(self.probe, shared=True, size=1)
        return self.head(x.flatten(1)) + mark.sum() * 0
