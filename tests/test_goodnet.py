"""GoodNet semantics: B's label when B and B' agree, class N when they do not."""

import numpy as np
import torch

from goodnet.inference import predict
from goodnet.io.model_files import load_model, save_model
from goodnet.metrics import flag_rate
from goodnet.models import DeepID, SmallCNN
from goodnet.models.goodnet import GoodNet, PrunedGoodNet, goodnet_labels
from goodnet.pruning.zeroing import pruned_copy


class _Fixed(GoodNet):
    def __init__(self, b, r):
        super().__init__(num_classes=10)
        self.b, self.r = torch.tensor(b), torch.tensor(r)

    def both_labels(self, x):
        return self.b, self.r


def test_agree_gives_label_disagree_gives_extra_class():
    g = _Fixed([1, 2, 3, 4], [1, 5, 3, 0])
    assert g(torch.zeros(4)).tolist() == [1, 10, 3, 10]
    assert goodnet_labels(np.array([1, 2, 3, 4]), np.array([1, 5, 3, 0]), 10).tolist() == [1, 10, 3, 10]
    assert flag_rate(np.array([1, 10, 3, 10]), 10) == 50.0


def test_pruned_goodnet_equals_running_b_and_b_prime():
    model = DeepID(num_classes=10).eval()
    x = (torch.rand(200, 3, 55, 47) * 255).numpy()
    pruned = list(range(0, 60, 2))
    g = PrunedGoodNet(model, "conv_3", pruned).eval()
    b = predict(model, x)
    b_prime = predict(pruned_copy(model, "conv_3", pruned), x)
    expected = np.where(b == b_prime, b, 10)
    got = predict(g, x)
    np.testing.assert_array_equal(got, expected)
    assert (got == 10).any() and (got != 10).any(), "test needs both agreeing and disagreeing inputs"


def test_goodnet_file_round_trip(tmp_path):
    model = SmallCNN(num_classes=10, width=4).eval()
    g = PrunedGoodNet(model, "conv_3", [1, 2, 3])
    path = str(tmp_path / "g.safetensors")
    save_model(g, path)
    loaded = load_model(path)
    assert isinstance(loaded, PrunedGoodNet) and loaded.pruned == [1, 2, 3] and loaded.layer == "conv_3"
    x = (torch.rand(64, 1, 28, 28) * 255).numpy()
    np.testing.assert_array_equal(predict(loaded, x), predict(g, x))


def test_goodnet_file_holds_one_copy_of_the_weights(tmp_path):
    model = SmallCNN(num_classes=10, width=4).eval()
    save_model(model, str(tmp_path / "b.safetensors"))
    save_model(PrunedGoodNet(model, "conv_3", [0]), str(tmp_path / "g.safetensors"))
    b_size = (tmp_path / "b.safetensors").stat().st_size
    g_size = (tmp_path / "g.safetensors").stat().st_size
    assert g_size < 1.1 * b_size
