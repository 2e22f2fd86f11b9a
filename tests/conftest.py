import json
import os

import numpy as np
import pytest
import torch

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
LAB_WEIGHTS = os.path.join(FIXTURES, "lab_bd_weights.h5")

needs_lab_weights = pytest.mark.skipif(
    not os.path.isfile(LAB_WEIGHTS), reason="../shared/fixtures/lab_bd_weights.h5 not present"
)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One full `goodnet demo` (training included) shared by the tests that read its outputs."""
    from goodnet.cli import main

    base = tmp_path_factory.mktemp("demo")
    out, cache = str(base / "out"), str(base / "cache")
    assert main(["demo", "--out", out, "--cache-dir", cache, "--quiet"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        inputs = json.load(f)["inputs"]  # role -> data file
    model = os.path.join(os.path.dirname(inputs["clean_valid"]), "badnet.safetensors")  # B
    return {"out": out, "cache": cache, "base": base, "inputs": inputs, "model": model}


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    """One zoo cache shared by the tests that run `goodnet compare` on a cell of the zoo."""
    return str(tmp_path_factory.mktemp("zoo"))


# the zoo cell CI's compare tests run: the smallest BadNet of the development part
ZOO_CELL = ["--part", "dev", "--only", "patch/small_cnn/0-255/10%"]

FULL_MODEL = os.path.join(FIXTURES, "keras2_sequential_mnist_bd_net.h5")
needs_full_model = pytest.mark.skipif(
    not os.path.isfile(FULL_MODEL), reason="../shared/fixtures/keras2_sequential_mnist_bd_net.h5 not present"
)
# Keras 3 (test-only extra) checks our Keras import against Keras itself; it must use PyTorch.
os.environ.setdefault("KERAS_BACKEND", "torch")


def run_cli(capsys, argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code, captured = run_cli_captured(capsys, argv)
    return code, captured.out, captured.err


def run_cli_captured(capsys, argv):
    """Run the CLI in-process; return (exit code, what it printed: `.out` and `.err`)."""
    from goodnet.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own refusals (usage errors, out-of-range numbers)
        code = exc.code
    return code, capsys.readouterr()


def assert_one_line_error(code, err, pattern):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("goodnet: error:"), err
    assert pattern in lines[0], lines[0]


def assert_self_contained_page(directory, markdown="report.md", page="report.html"):
    """The HTML report beside a Markdown report parses, loads nothing from outside, and embeds every
    image the Markdown shows."""
    from goodnet.report.html_page import external_references

    directory = str(directory)
    text = open(os.path.join(directory, page), encoding="utf-8").read()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert external_references(text) == []
    shown = open(os.path.join(directory, markdown), encoding="utf-8").read().count("![")
    assert text.count('<img src="data:image/') == shown and "image not embedded" not in text
    return text


# Tiny backdoored models on scikit-learn's 8x8 digits (values 0..16), trained in the tests that need them.
def stamp_corner(x: np.ndarray) -> np.ndarray:
    """Images with a 2x2 white patch (16) in the bottom-right corner: the tiny models' trigger."""
    x = x.copy()
    x[:, :, -2:, -2:] = 16.0
    return x


def shuffled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 1, 8, 8) float32 images and int64 labels, in a fixed shuffled order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    return d.images.astype(np.float32)[order][:, None], d.target.astype(np.int64)[order]


def poisoned_training_set(x: np.ndarray, y: np.ndarray, count: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """`x, y` with `count` images (drawn with seed 1) stamped and relabelled to the target 0."""
    poisoned_x, poisoned_y = x.copy(), y.copy()
    chosen = np.random.default_rng(1).choice(len(y), count, replace=False)
    poisoned_x[chosen], poisoned_y[chosen] = stamp_corner(poisoned_x[chosen]), 0
    return poisoned_x, poisoned_y
