import os

import numpy as np
import pytest
import torch

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
LAB_WEIGHTS = os.path.join(FIXTURES, "lab_bd_weights.h5")

needs_lab_weights = pytest.mark.skipif(not os.path.isfile(LAB_WEIGHTS),
                                       reason="../shared/fixtures/lab_bd_weights.h5 not present")


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
    return {"out": out, "cache": cache, "base": base}
