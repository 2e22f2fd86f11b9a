import os

import pytest

from goodnet.errors import GoodnetError
from goodnet.io.output_dir import atomic_directory


def test_failure_leaves_nothing(tmp_path):
    target = str(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as stage:
            open(os.path.join(stage, "results.json"), "w").write("{}")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failure_keeps_previous_result(tmp_path):
    target = str(tmp_path / "out")
    with atomic_directory(target) as stage:
        open(os.path.join(stage, "results.json"), "w").write("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as stage:
            raise RuntimeError("boom")
    assert open(os.path.join(target, "results.json")).read() == "old"
    with atomic_directory(target) as stage:
        open(os.path.join(stage, "results.json"), "w").write("new")
    assert open(os.path.join(target, "results.json")).read() == "new"
    assert os.listdir(tmp_path) == ["out"]


def test_file_in_the_way(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(GoodnetError, match="not a directory"):
        with atomic_directory(str(tmp_path / "out")):
            pass
