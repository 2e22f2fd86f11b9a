"""The zoo: BadNets on three architectures, two value ranges, seven attacks, split by seed into a
development and an evaluation part."""

import pytest

from goodnet.errors import GoodnetError
from goodnet.io.data import load_images
from goodnet.io.model_files import load_model
from goodnet.pruning.graph_split import resolve_layer
from goodnet.zoo.badnets import DATA_FILES, MODEL_FILE, BadNetSettings, build_badnet
from goodnet.zoo.catalog import CONFIGURATIONS, select_badnets, zoo_part


@pytest.mark.parametrize(
    "arch,scale,kind", [("deepid", 255.0, "moving-patch"), ("resnet8", 1.0, "sig"), ("small_cnn", 1.0, "wanet")]
)
def test_a_tiny_zoo_badnet_of_each_architecture(arch, scale, kind, tmp_path):
    settings = BadNetSettings(kind=kind, arch=arch, scale=scale, augment=True, epochs=1, per_class=(30, 10, 10))
    manifest = build_badnet(settings, str(tmp_path / "b"), progress=False)
    model = load_model(str(tmp_path / "b" / MODEL_FILE))
    assert tuple(model.input_shape) == settings.input_shape == ((3, 55, 47) if arch == "deepid" else (1, 28, 28))
    assert model.input_range[1] == pytest.approx(scale, rel=0.02) and model.input_range[0] == 0.0
    for name in DATA_FILES.values():
        images = load_images(str(tmp_path / "b" / name))
        assert images.x.shape[1:] == settings.input_shape and 0 <= images.x.min() and images.x.max() <= scale
    assert manifest["label"] == settings.label() and manifest["settings"]["augment"] is True
    expected = {"deepid": "conv_3", "small_cnn": "conv_3", "resnet8": "layer3.conv2"}[arch]
    assert resolve_layer(model, "auto") == expected


def test_the_zoo_is_split_by_seed_and_covers_what_it_claims():
    dev, evaluation = zoo_part("dev"), zoo_part("eval")
    assert {s.seed for s in dev} == {0} and {s.seed for s in evaluation} == {1}
    assert len(dev) == len(evaluation) == len(CONFIGURATIONS) == 8
    assert {s.arch for s in dev} == {"small_cnn", "deepid", "resnet8"} and {s.scale for s in dev} == {1.0, 255.0}
    assert {s.poison_rate for s in dev} == {0.1, 0.01} and all(s.augment for s in dev)
    assert {"wanet", "sig", "moving-patch", "patch", "blended", "all-to-all", "sunglasses"} == {s.kind for s in dev}
    assert len({s.label() for s in dev + evaluation}) == 2 * len(CONFIGURATIONS)
    assert [s.label() for s in select_badnets("eval", ["wanet"])] == ["wanet/small_cnn/0-255/10%/s1"]
    with pytest.raises(GoodnetError, match="no zoo BadNet"):
        select_badnets("dev", ["nothing-like-this"])
    with pytest.raises(GoodnetError, match="unknown zoo architecture"):
        BadNetSettings(arch="vgg")
