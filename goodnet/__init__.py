"""goodnet: repair backdoored neural networks, and prove the repair with numbers.

What a user calls, by level: read data and models (`load_images`, `load_model`, `ModelSource`),
pick a repair (`build_repair`, `repair_names`; `Guarded` puts any repair under the do-no-harm
guard), run and measure it (`run_repair` returns a frozen `Measurement`), write every output
(`write_outputs`) or do all of it from files (`DefenseSpec` and `defend`, or `defend_files`), and
write your own repair (`Repair`, `setting`, `register_repair`). Names are imported on first use, so `goodnet --help`
does not pay for plotting or training code.

Paths may be given as str or os.PathLike (e.g. pathlib.Path); a repair as a `Repair` or a
registered repair's name. A bad argument is refused before any work with a `GoodnetError` subclass
and a one-line message (the CLI's wording where the CLI has the same check), as the CLI refuses bad
input.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # data and models
    "ImageSet": "goodnet.io.data",
    "load_images": "goodnet.io.data",
    "save_images": "goodnet.io.data",
    "load_model": "goodnet.io.model_files",
    "save_model": "goodnet.io.model_files",
    "ModelSource": "goodnet.io.model_files",
    "ImageClassifier": "goodnet.models",
    "DeepID": "goodnet.models",
    "SmallCNN": "goodnet.models",
    "ResNet8": "goodnet.models",
    "build_model": "goodnet.models",
    "register_architecture": "goodnet.models",
    "GoodNet": "goodnet.models",
    "PrunedGoodNet": "goodnet.models",
    "TwoModelGoodNet": "goodnet.models",
    "build_goodnet": "goodnet.models",
    # repairs
    "Repair": "goodnet.repairs",
    "RepairData": "goodnet.repairs",
    "RepairedModel": "goodnet.repairs",
    "RepairOutcome": "goodnet.repairs",
    "Guarded": "goodnet.repairs",
    "setting": "goodnet.repairs",
    "register_repair": "goodnet.repairs",
    "build_repair": "goodnet.repairs",
    "repair_names": "goodnet.repairs",
    # measuring
    "run_repair": "goodnet.measure",
    "Measurement": "goodnet.measure",
    "RunInputs": "goodnet.measure",
    # outputs
    "write_outputs": "goodnet.outputs",
    "ModelExports": "goodnet.io.repaired_files",
    "defend_files": "goodnet.defend",
    "defend": "goodnet.defend",
    "DefenseSpec": "goodnet.spec",
    "evaluate_files": "goodnet.evaluation",
    # errors
    "GoodnetError": "goodnet.errors",
    "DataError": "goodnet.errors",
    "ModelError": "goodnet.errors",
    "SettingsError": "goodnet.errors",
    "OutputError": "goodnet.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'goodnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
