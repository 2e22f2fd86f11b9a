"""The lab's own repairs conform to the lab's description: rank the chosen conv layer's channels
by mean activation (at the cut: after BatchNorm, ReLU and pooling) on clean validation data, prune
in increasing order until clean validation accuracy drops X points; attack-aware tries channels in
that order; channels prunes exactly the list given."""

import numpy as np
import torch
from torch import nn

from goodnet.io.data import ImageSet
from goodnet.repairs import RepairData
from goodnet.repairs.attack_aware import AttackAwarePruning
from goodnet.repairs.channels import ExplicitChannels
from goodnet.repairs.lab_pruning import LabPruning


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv_1 = nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 3)
        with torch.no_grad():
            self.fc.weight.normal_(0, 1)
            self.fc.bias.zero_()
            self.conv_1.bias.uniform_(-0.1, 0.3)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv_1(x))).flatten(1))


def _data(n=60):
    rng = np.random.default_rng(0)
    return ImageSet(rng.uniform(0, 1, (n, 1, 4, 4)).astype(np.float32), (np.arange(n) % 3).astype(np.int64))


def test_lab_prune_ranks_by_mean_pooled_activation_on_clean_data_increasing_and_stops_at_x_points():
    model, clean = Net().eval(), _data()
    with torch.no_grad():  # labelled by B itself: 100 % clean accuracy, which pruning then lowers
        clean = ImageSet(clean.x, model(torch.from_numpy(clean.x)).argmax(1).numpy())
    with torch.no_grad():  # independently: the layer's output after ReLU and max-pooling, averaged
        cut = model.pool(torch.relu(model.conv_1(torch.from_numpy(clean.x))))
        means = cut.double().mean(dim=(0, 2, 3)).numpy()
    order = [int(c) for c in np.argsort(means, kind="stable")]
    outcome = LabPruning(layer="conv_1", thresholds=(5.0,), rule="both").repair(model, RepairData(clean))
    assert list(outcome.curve.order) == order
    # the stop rule by hand: prune in that order; crossing = first k whose drop >= 5 points, within = k - 1
    accuracy = []
    for k in range(len(order) + 1):
        m = Net().eval()
        m.load_state_dict(model.state_dict())
        with torch.no_grad():
            m.conv_1.weight[order[:k]] = 0
            m.conv_1.bias[order[:k]] = 0
            accuracy.append(float((m(torch.from_numpy(clean.x)).argmax(1).numpy() == clean.y).mean() * 100))
    first = next((k for k in range(1, len(accuracy)) if accuracy[0] - accuracy[k] >= 5.0 - 1e-9), None)
    chosen = {m.details["rule"]: m for m in outcome.models}
    assert first is not None and first > 1  # the tiny case does cross the budget, after a few channels
    assert chosen["crossing"].pruned == {"conv_1": order[:first]}
    assert chosen["within"].pruned == {"conv_1": order[: first - 1]}


def test_attack_aware_tries_every_channel_of_the_last_layers_once_and_keeps_the_budget():
    model, clean = Net().eval(), _data()
    poisoned = ImageSet(clean.x[:30], np.zeros(30, dtype=np.int64))
    outcome = AttackAwarePruning(budget=5.0, layers=1).repair(model, RepairData(clean, poisoned_valid=poisoned))
    assert outcome.details["trials"] == 6  # every channel of the last conv layer, once
    assert outcome.details["valid_drop"] < 5.0


def test_channels_prunes_exactly_the_listed_channels():
    model = Net().eval()
    outcome = ExplicitChannels(layer="conv_1", channels=(4, 1)).repair(model, None)
    pruned = outcome.models[0].model
    assert outcome.models[0].pruned == {"conv_1": [4, 1]}
    assert float(pruned.conv_1.weight[[1, 4]].abs().sum()) == 0
    assert torch.equal(pruned.conv_1.weight[[0, 2, 3, 5]], model.conv_1.weight[[0, 2, 3, 5]])
