"""Zoo configuration files: the built-in zoo is one (and keeps every BadNet it had), a user's
datasets (an image folder, CIFAR binary batches) make a zoo `goodnet compare --config` trains and
compares, triggers scale with the images, and every malformed file is refused in one line."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from PIL import Image

from goodnet.errors import SettingsError
from goodnet.zoo.attacks import Attack
from goodnet.zoo.badnets import zoo_images
from goodnet.zoo.catalog import CONFIGURATIONS, population_name, scan_population, zoo_part
from goodnet.zoo.config import builtin_zoo, load_zoo_config

# the cache keys of the built-in zoo's BadNets (dev seed 0, then eval seed 1), as they were before
# the zoo became a configuration file: the same keys are the same BadNets, so the same tables
BUILTIN_FINGERPRINTS = [
    "5b546959fc54", "dbf3aa42daa6", "1dae871aa838", "c737d9b14014", "29ea30bb9ad0", "9c15ca5c23ed",
    "3ff51570b39a", "8160a3acfe77", "25a5d380052b", "5fabf52d9066", "364bf8aa6ce5", "f17638ff8b0e",
    "b59983764ff3", "ad8e1b203141", "f1d5e1ac8578", "06a56cc551cb",
]  # fmt: skip


def test_the_builtin_zoo_is_a_configuration_file_with_the_same_badnets():
    zoo = builtin_zoo()
    assert zoo.badnets == CONFIGURATIONS and len(zoo.badnets) == 8
    assert [s.fingerprint() for s in zoo_part("all")] == BUILTIN_FINGERPRINTS
    assert zoo.seeds == {"dev": (0,), "eval": (1,)} and zoo.clean_seeds == {"dev": (0, 2), "eval": (1, 3)}


def test_triggers_scale_with_the_image_and_refuse_what_does_not_fit():
    assert Attack("patch").trigger.size == 4  # the built-in zoo's sizes, as set
    assert (Attack("patch", image_size=(56, 64)).trigger.size, Attack("patch", image_size=(56, 64)).trigger.margin) == (
        8,
        2,
    )
    assert Attack("moving-patch", image_size=(14, 14)).trigger.size == 2
    glasses = Attack("sunglasses", image_size=(84, 84)).trigger
    assert (glasses.top, glasses.lens_height, glasses.lens_width, glasses.gap) == (6, 12, 18, 12)
    assert Attack("patch", params=(("size", 3),), image_size=(56, 56)).trigger.size == 3  # given: kept
    with pytest.raises(SettingsError, match="does not fit 6 x 6 images"):
        Attack("patch", params=(("size", 7),), image_size=(6, 6))
    with pytest.raises(SettingsError, match="has no setting 'sise'"):
        Attack("patch", params=(("sise", 3),))
    # every attack runs on colour images of another size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 3, 20, 24)).astype(np.float32)
    for kind in ("patch", "blended", "all-to-all", "sunglasses", "wanet", "sig", "moving-patch"):
        out = Attack(kind, image_size=(20, 24)).trigger.apply(x, (0.0, 1.0), np.random.default_rng(1))
        assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0 and not np.array_equal(out, x)


def _blobs(classes: int, per_class: int, channels: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """0..255 images of noise with a bright square whose place says the class: learnt in an epoch."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (classes * per_class, channels, side, side)).astype(np.uint8)
    y = np.repeat(np.arange(classes), per_class)
    half = side // 2
    for i, label in enumerate(y):
        row, col = divmod(int(label), 2)
        x[i, :, row * half : (row + 1) * half, col * half : (col + 1) * half] += 150
    return x, y


def _make_datasets(root) -> None:
    x, y = _blobs(3, 134, 1, 12, seed=0)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / "folder" / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i:03d}.png")
    x, y = _blobs(3, 134, 3, 32, seed=1)
    records = np.concatenate([y[:, None].astype(np.uint8), x.reshape(len(y), -1)], axis=1)
    records.tofile(root / "data_batch_1.bin")


GRID = """
name = "two datasets"
[seeds]
dev = [0]
eval = [1]
[datasets.shapes]
path = "folder"
per_class = [100, 17, 17]
[datasets.colour]
path = "data_batch_1.bin"
range = [0, 255]
per_class = [100, 17, 17]
[defaults]
arch = "small_cnn"
epochs = 20
poison_rate = 0.1
[[badnet]]
dataset = "shapes"
attack = "patch"
[[badnet]]
dataset = "colour"
attack = "blended"
target = 2
"""


def test_compare_builds_and_runs_a_zoo_of_an_image_folder_and_cifar_batches(tmp_path, capsys):
    _make_datasets(tmp_path)
    config = tmp_path / "grid.toml"
    config.write_text(GRID)
    zoo = load_zoo_config(config)
    shapes, colour = zoo.badnets
    assert (shapes.image_shape, shapes.num_classes, shapes.data_range) == ((1, 12, 12), 3, (0.0, shapes.data_range[1]))
    assert shapes.attack.trigger.size == 2  # 4 pixels at 28 x 28, scaled to 12 x 12
    assert (colour.image_shape, colour.data_range, colour.per_class) == ((3, 32, 32), (0.0, 255.0), (100, 17, 17))
    assert zoo.datasets["shapes"]["format"] == "image-folder" and zoo.datasets["colour"]["format"] == "cifar-binary"
    assert zoo.datasets["shapes"]["range_from"] == "the lowest and highest value found"
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["compare", "--config", config, "--part", "dev", "--repairs", "prune", "--cache-dir", cache, "--quiet"]
    code, printed, err = run_cli(capsys, [*argv, "--out", out])
    assert code == 0, err
    doc = json.loads((out / "comparison.json").read_text())
    assert [(r["badnet"], r["dataset"], r["part"]) for r in doc["rows"]] == [
        ("patch/small_cnn/shapes/10%/s0", "shapes", "dev"),
        ("blended/small_cnn/colour/10%/s0", "colour", "dev"),
    ]
    assert doc["config"]["name"] == "two datasets" and doc["config"]["datasets"]["colour"]["classes"] == 3
    assert all(r["b_clean_acc"] > 90 for r in doc["rows"])  # both Bs learnt their data
    assert "Dataset shapes: 402 images of 3 classes, 1 x 12 x 12" in (out / "comparison.md").read_text()
    for label in ("shapes", "colour"):
        manifest = json.loads(
            (
                cache
                / os.path.basename(
                    doc["zoo"][f"{'patch' if label == 'shapes' else 'blended'}/small_cnn/{label}/10%/s0"]["directory"]
                )
                / "manifest.json"
            ).read_text()
        )
        assert manifest["settings"]["dataset"] == label and manifest["sizes"]["clean_valid"] == 51
    # a second run reuses the trained BadNets and gives the same rows
    code, _, err = run_cli(capsys, [*argv, "--out", tmp_path / "again"])
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "comparison.json").read_text())
    strip_time = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip_time(again["rows"]) == strip_time(doc["rows"])
    # the scanners measured over the same zoo's development part: its BadNets as compare trained
    # them and a clean reference model per dataset, the calibration fitted on them and named after it
    argv = ["scan", "--zoo", "dev", "--config", config, "--scanner", "mm-bd", "--cache-dir", cache, "--quiet"]
    code, printed, err = run_cli(capsys, [*argv, "--out", tmp_path / "scan"])
    assert code == 0, err
    population = json.loads((tmp_path / "scan" / "population.json").read_text())
    assert [(m["name"], m["backdoored"], m["target"]) for m in population["models"]] == [
        ("patch/small_cnn/shapes/10%/s0", True, 0),
        ("blended/small_cnn/colour/10%/s0", True, 2),
        ("clean/small_cnn/shapes/20ep/s0", False, None),
        ("clean/small_cnn/colour/20ep/s0", False, None),
    ]
    assert population["provenance"]["zoo"]["name"] == "two datasets" and population["calibration_fitted_here"]
    assert (
        "# goodnet: scanners measured on the dev part of the zoo 'two datasets'"
        in (tmp_path / "scan" / "report.md").read_text()
    )
    fitted = json.loads((tmp_path / "scan" / "calibration.json").read_text())["calibrations"]["mm-bd"]
    assert fitted["fitted_on"] == "the zoo 'two datasets', development part: 2 BadNets, 2 clean models"
    # its evaluation part reads that calibration, never goodnet's own; and never writes over it
    argv[2] = "eval"
    code, _, err = run_cli(capsys, [*argv, "--out", tmp_path / "scan-eval"])
    assert_one_line_error(code, err, "part 'eval' of your own zoo needs the calibration fitted on its development")
    calibration = str(tmp_path / "scan" / "calibration.json")
    code, _, err = run_cli(capsys, [*argv, "--calibration", calibration, "--out", tmp_path / "scan"])
    assert_one_line_error(code, err, "--out holds the input")
    assert not (tmp_path / "scan-eval").exists() and os.path.isfile(calibration)
    # a dataset edited after its BadNets were configured is refused, not read as the old one
    with open(tmp_path / "data_batch_1.bin", "r+b") as f:
        f.write(b"\x01")
    with pytest.raises(SettingsError, match="changed since the zoo configuration was read"):
        zoo_images(replace(colour, data_digest=colour.data_digest))


BAD_CONFIGS = [
    ('[seeds]\ndev = [0]\neval = [1]\n[[badnet]]\nattack = "patch"\nbogus = 1\n', "badnet 1: unknown key(s) bogus"),
    ('[seeds]\ndev = [0]\neval = [0]\n[[badnet]]\nattack = "patch"\n', "seed 0 is in both parts"),
    ('[seeds]\ndev = [0]\n[[badnet]]\nattack = "patch"\n', "`eval` must be a list of seeds"),
    ("[seeds]\ndev = [0]\neval = [1]\n", "lists no BadNets"),
    ('[seeds]\ndev = [0]\neval = [1]\n[[badnet]]\ndataset = "faces"\n', "no dataset named 'faces'"),
    ('[seeds]\ndev = [0]\neval = [1]\n[[badnet]]\nattack = "warp"\n', "`attack` must be one of patch"),
    ('[seeds]\ndev = [0]\neval = [1]\n[[badnet]]\nattack = ["patch", "patch"]\n', "is listed twice"),
    ("[seeds]\ndev = [0]\neval = [1]\n[[badnet]]\nattack = []\n", "an empty list gives no BadNet"),
    ("[seeds]\ndev = [0]\neval = [1]\n[[badnet]]\nscale = 7\n", "`scale` must be 255 or 1"),
    ("[seeds]\ndev = [0]\neval = [1]\n[[badnet]]\n[badnet.trigger]\nsise = 3\n", "has no setting 'sise'"),
    ("[seeds\n", "not a valid TOML file"),
    (
        '[seeds]\ndev = [0]\neval = [1]\n[datasets.s]\npath = "folder"\n[[badnet]]\ndataset = "s"\n'
        "[badnet.trigger]\nsize = 40\n",
        "does not fit 12 x 12 images",
    ),
    (
        '[seeds]\ndev = [0]\neval = [1]\n[datasets.s]\npath = "folder"\n[[badnet]]\ndataset = "s"\nscale = 1\n',
        "`scale` is the bundled digits' range",
    ),
    ('[seeds]\ndev = [0]\neval = [1]\n[datasets.s]\npath = "missing"\n[[badnet]]\ndataset = "s"\n', "no such file"),
    (
        '[seeds]\ndev = [0]\neval = [1]\n[datasets.s]\npath = "folder"\nrange = [0, 1]\n[[badnet]]\ndataset = "s"\n',
        "outside the declared range 0..1",
    ),
    (
        '[seeds]\ndev = [0]\neval = [1]\n[datasets.s]\npath = "folder"\nper_class = [100, 20, 20]\n'
        '[[badnet]]\ndataset = "s"\n',
        "needs 140 images of every class; the smallest class has 134",
    ),
    (
        '[seeds]\ndev = [0]\neval = [1]\n[datasets.s]\npath = "folder"\n[[badnet]]\ndataset = "s"\ntarget = 5\n',
        "target 5 is not a class of s (0..2)",
    ),
]


HEAD = '[seeds]\ndev = [0]\neval = [1]\n[datasets.s]\npath = "folder"\n'
BAD_CONFIGS += [
    (HEAD + '[[badnet]]\ndataset = "s"\n[badnet.trigger]\nsize = "4"\n', "`size` must be a whole number"),
    (HEAD + '[[badnet]]\ndataset = "s"\n[badnet.trigger]\nlevel = 5\n', "from 0 to 1, not 5"),
    (HEAD + '[[badnet]]\ndataset = "s"\narch = "deepid"\n', "deepid cannot take 1 x 12 x 12 images"),
    (HEAD + '[[badnet]]\ndataset = "s"\npoison_rate = 0.001\n', "poisons 0; it must poison at least 1"),
    (
        HEAD + "[[badnet]]\nepochs = [" + ", ".join(map(str, range(1, 1001))) + "]\ntarget = [0, 1]\n",
        "give 2000 BadNets",
    ),
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
]


@pytest.mark.parametrize("text, message", BAD_CONFIGS)
def test_a_malformed_zoo_configuration_is_refused_in_one_line(tmp_path, capsys, text, message):
    _make_datasets(tmp_path)
    config = tmp_path / "grid.toml"
    config.write_text(text)
    code, _, err = run_cli(capsys, ["compare", "--config", config, "--out", tmp_path / "out", "--quiet"])
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


def test_attack_trains_a_badnet_on_your_own_dataset(tmp_path, capsys):
    _make_datasets(tmp_path)
    out, cache = tmp_path / "badnet", tmp_path / "cache"
    argv = ["attack", "--kind", "patch", "--data", tmp_path / "folder", "--epochs", "20", "--cache-dir", cache]
    code, printed, err = run_cli(capsys, [*argv, "--per-class", "100,17,17", "--quiet", "--out", out])
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["dataset"] == "folder" and manifest["settings"]["image_shape"] == [1, 12, 12]
    assert manifest["attack"]["trigger"]["size"] == 2 and manifest["sizes"]["clean_valid"] == 51
    assert manifest["badnet"]["clean_test_accuracy"] > 90
    code, _, err = run_cli(
        capsys, ["eval", out / "clean_test.h5", out / "poisoned_test.h5", out / "badnet.safetensors"]
    )
    assert code == 0, err
    refusals = [
        ([*argv, "--scale", "1"], "--scale is the bundled digits' range"),
        (["attack", "--kind", "patch", "--per-class", "1,1,1"], "give --data with them"),
        ([*argv, "--target", "3"], "target 3 is not a class of folder (0..2)"),
        ([*argv, "--data-range", "0,1"], "outside the declared range 0..1"),
        (["attack", "--kind", "patch", "--data", tmp_path / "nothing"], "no such file"),
    ]
    for args, message in refusals:
        code, _, err = run_cli(capsys, [*args, "--out", tmp_path / "refused"])
        assert_one_line_error(code, err, message)
    code, _, err = run_cli(capsys, [*argv, "--out", tmp_path / "folder" / "inside"])
    assert_one_line_error(code, err, "is inside the input")
    assert not (tmp_path / "refused").exists() and not (tmp_path / "folder" / "inside").exists()


def test_badnets_that_name_alike_are_named_by_what_tells_them_apart(tmp_path, capsys):
    _make_datasets(tmp_path)
    config = tmp_path / "grid.toml"
    config.write_text(HEAD + '[[badnet]]\ndataset = "s"\nepochs = [20, 30]\n')
    labels = [b.label() for b in load_zoo_config(config).part("eval")]
    assert labels == ["patch/small_cnn/s/10%/epochs=20/s1", "patch/small_cnn/s/10%/epochs=30/s1"]
    # the zoo cache is never inside a dataset
    code, _, err = run_cli(
        capsys, ["compare", "--config", config, "--cache-dir", tmp_path / "folder" / "c", "--out", tmp_path / "o"]
    )
    assert_one_line_error(code, err, "--cache-dir is inside the input")
    # a data file called mnist is the user's data, not the bundled digits
    np.save(tmp_path / "mnist.npy", np.zeros((60, 1, 8, 8), np.uint8) + np.arange(60)[:, None, None, None])
    np.save(tmp_path / "mnist_labels.npy", np.arange(60) % 2)
    from goodnet.zoo.config import dataset_settings

    settings = dataset_settings(str(tmp_path / "mnist.npy"), {"kind": "patch"})
    assert settings.dataset == "mnist-data" and not settings.bundled and settings.image_shape == (1, 8, 8)


def test_a_configured_zoos_scan_population_names_every_model_apart(tmp_path):
    _make_datasets(tmp_path)
    config = tmp_path / "grid.toml"
    config.write_text(HEAD + '[clean_seeds]\ndev = [0, 5]\neval = [1]\n[[badnet]]\ndataset = "s"\nwidth = [8, 16]\n')
    population = scan_population("dev", None, load_zoo_config(config))
    assert [(population_name(s, backdoored), target) for s, backdoored, target in population] == [
        ("patch/small_cnn/s/10%/width=8/s0", 0),
        ("patch/small_cnn/s/10%/width=16/s0", 0),
        ("clean/small_cnn/s/20ep/width=8/s0", None),
        ("clean/small_cnn/s/20ep/width=16/s0", None),
        ("clean/small_cnn/s/20ep/width=8/s5", None),
        ("clean/small_cnn/s/20ep/width=16/s5", None),
    ]
    # the name tells them apart in tables only: each clean model is the one compare trains
    clean = [s for s, backdoored, _ in population if not backdoored]
    assert [s.fingerprint() for s in clean[:2]] == [b.clean_reference().fingerprint() for b, *_ in population[:2]]
