"""A PyTorch model goodnet does not know: a tiny residual network, trained on the demo's attack.

    PYTHONPATH=examples python examples/user_model.py      # writes tiny_resnet.pt and tiny_resnet_scripted.pt

then hand it to goodnet as `--factory user_model:tiny_resnet --model tiny_resnet.pt` (a plain state
dict, read with weights_only), or as the TorchScript file `--model tiny_resnet_scripted.pt`.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """Raw 0..255 pixels in, 10 scores out."""

    def __init__(self, classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block = Block(width)
        self.head = nn.Linear(width * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x / 255.0))
        return self.head(torch.flatten(F.max_pool2d(x, 2), 1))


def tiny_resnet() -> nn.Module:
    """The factory goodnet calls (`user_model:tiny_resnet`); weights come from the file."""
    return TinyResNet()


if __name__ == "__main__":
    from goodnet.models.training import train_classifier
    from goodnet.zoo.badnets import DemoSettings, attacker_training_set

    settings = DemoSettings()
    x, y, _ = attacker_training_set(settings)
    torch.manual_seed(0)
    model = train_classifier(tiny_resnet(), x, y, epochs=10, seed=0).eval()
    torch.save(model.state_dict(), "tiny_resnet.pt")
    torch.jit.save(torch.jit.script(model), "tiny_resnet_scripted.pt")
    print("wrote tiny_resnet.pt and tiny_resnet_scripted.pt")
