"""DefenseSpec: everything one defense of one model needs, checked once and frozen. The CLI, batch
and the demo build one from their inputs and hand it to goodnet.defend; nothing downstream takes
loose options or checks them again."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError, OutputError, SettingsError
from .inspection.strip import StripSettings
from .inspection.trigger_reversal import SCHEDULES
from .io.data import ROLES, as_path, checked_scale, shown
from .io.dataset_readers import data_bytes, data_sha256
from .io.file_checks import check_model_file
from .io.model_files import ModelSource, model_source
from .measure.relearning import RelearnSettings
from .measure.runner import check_options
from .repairs.base import Repair
from .repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP, HOLDOUT_SEED
from .repairs.registry import checked_repair


def data_files(data_paths: Any) -> dict[str, str | None]:
    """`data_paths` (role -> file path, str or os.PathLike, or None) with str paths; unknown roles
    and anything but paths refused."""
    if not isinstance(data_paths, Mapping):
        raise DataError(
            f"data_paths must be a dict of role -> file path (roles: {', '.join(ROLES)}), not {shown(data_paths)}"
        )
    unknown = set(data_paths) - set(ROLES)
    if unknown:
        raise SettingsError(f"unknown data roles {sorted(map(str, unknown))} (known: {', '.join(ROLES)})")
    return {
        role: None
        if path is None
        else as_path(path, f"data_paths[{role!r}]", DataError, "a file path (str or os.PathLike) or None")
        for role, path in data_paths.items()
    }


def check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be True or False, not {shown(value)}")


@dataclass(frozen=True)
class GuardSettings:
    """The do-no-harm guard's budget: `max_drop` points of held-out clean accuracy (None: no guard,
    library use only), judged on a `holdout` share of every class of the clean validation data."""

    max_drop: float | None = DEFAULT_MAX_DROP
    holdout: float = DEFAULT_HOLDOUT


@dataclass(frozen=True)
class DefenseSpec:
    """One defense: B (`source`), the data files by role, the output folder, the repair and how to
    run it. Build it with `DefenseSpec.build`, which checks every field before any work."""

    source: ModelSource
    data: dict[str, str | None]  # role -> file path (None: not given)
    out_dir: str
    repair: Repair
    input_scale: float = 1.0
    onnx: bool = False  # also write G and B' as ONNX
    progress: bool = True
    force: bool = False  # go on past the checks that B is worth repairing
    guard: GuardSettings = field(default_factory=GuardSettings)
    strip: StripSettings | None = StripSettings()  # STRIP on B beside G's detection (None: not STRIP)
    scan: bool = False  # reverse triggers of B and every B' (Neural Cleanse) on clean validation data
    scan_schedule: str = "reference"
    relearn: RelearnSettings | None = None  # the re-learning test's settings (None: not run)
    relearn_reference: str | None = None  # a clean model of B's kind, read as B is (B's --arch/--factory)

    @classmethod
    def build(
        cls,
        source: ModelSource | str | os.PathLike,
        data_paths: dict[str, str | os.PathLike | None],
        out_dir: str | os.PathLike,
        repair: Repair | str,
        input_scale: float = 1.0,
        onnx: bool = False,
        progress: bool = True,
        force: bool = False,
        max_drop: float | None = DEFAULT_MAX_DROP,
        holdout: float = DEFAULT_HOLDOUT,
        strip: StripSettings | None = StripSettings(),
        scan: bool = False,
        scan_schedule: str = "reference",
        relearn: RelearnSettings | None = None,
        relearn_reference: str | os.PathLike | None = None,
    ) -> DefenseSpec:
        """The spec of these inputs, every one checked: paths may be str or os.PathLike; `repair` a
        Repair or a registered repair's name (its default settings)."""
        source = model_source(source)
        data = data_files(data_paths)
        out_dir = as_path(out_dir, "out_dir", OutputError, "a directory path (str or os.PathLike)")
        repair = checked_repair(repair)
        input_scale = checked_scale(input_scale)
        check_flags(onnx=onnx, scan=scan)
        check_options(progress=progress, force=force, max_drop=max_drop, holdout=holdout, strip=strip)
        if scan:
            if not isinstance(scan_schedule, str) or scan_schedule not in SCHEDULES:
                raise SettingsError(
                    f"trigger scan: schedule must be one of {', '.join(SCHEDULES)}, not {shown(scan_schedule)}"
                )
            if not data.get("clean_valid"):
                raise SettingsError("--scan reverses triggers on clean validation data: give --clean-valid")
        if relearn is not None and not isinstance(relearn, RelearnSettings):
            raise SettingsError(f"relearn must be a RelearnSettings or None, not {shown(relearn)}")
        if relearn_reference is not None:
            if relearn is None:
                raise SettingsError("a re-learning reference is given but the re-learning test is not asked for")
            relearn_reference = check_model_file(
                as_path(relearn_reference, "--relearn-reference", SettingsError, "a model file path")
            )
        if relearn is not None:
            missing = [r for r in ("clean_valid", "poisoned_valid", "poisoned_test") if not data.get(r)]
            if missing:
                raise SettingsError(
                    "--relearn tunes on clean and poisoned validation data and measures on poisoned test "
                    "data: give " + ", ".join("--" + r.replace("_", "-") for r in missing)
                )
        return cls(
            source,
            data,
            out_dir,
            repair,
            input_scale,
            onnx,
            progress,
            force,
            GuardSettings(max_drop, holdout),
            strip,
            scan,
            scan_schedule,
            relearn,
            relearn_reference,
        )

    @property
    def reference_source(self) -> ModelSource | None:
        """The re-learning test's clean reference, read as B is (B's arch, factory and trust)."""
        if self.relearn_reference is None:
            return None
        return dataclasses.replace(self.source, path=self.relearn_reference)

    def input_files(self) -> list[str | None]:
        """Every file this defense reads: B's files, the data files and the clean reference."""
        return self.source.input_files() + list(self.data.values()) + [self.relearn_reference]

    def provenance(self, device: str | None = None) -> dict[str, Any]:
        """What produced a result, so it can be cited and reproduced: each file read (absolute path,
        size, SHA-256), the factory's source file, the versions of goodnet, PyTorch, NumPy and
        Python, the seeds and every option. `device`: where the work ran."""
        settings = self.repair.settings()
        return {
            **environment(device),
            "model": model_record(self.source),
            "data": {role: file_record(path) for role, path in self.data.items() if path},
            "seed": settings.get("seed"),
            "holdout_seed": (  # the guard runs only on clean validation data
                HOLDOUT_SEED
                if self.guard.max_drop is not None and self.repair.guarded and self.data.get("clean_valid")
                else None
            ),
            "options": {
                "repair": self.repair.name,
                "settings": settings,
                "input_scale": self.input_scale,
                "max_drop": self.guard.max_drop,
                "holdout": self.guard.holdout,
                "strip": None if self.strip is None else self.strip.to_json(),
                "scan": self.scan,
                "scan_schedule": self.scan_schedule if self.scan else None,
                "relearn": None if self.relearn is None else self.relearn.to_json(),
                "relearn_reference": None if self.relearn_reference is None else file_record(self.relearn_reference),
                "onnx": self.onnx,
                "force": self.force,
            },
        }


def environment(device: str | None = None) -> dict[str, Any]:
    """The versions and the machine a result was computed with."""
    return {
        "goodnet": _version("goodnet"),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }


def model_record(source: ModelSource) -> dict[str, Any]:
    """A model as provenance records it: its file, and the architecture file or factory it needs."""
    return {
        **file_record(source.path),
        "arch": source.arch,
        "arch_file": file_record(source.arch) if source.arch and os.path.isfile(source.arch) else None,
        "factory": source.factory,
        "factory_file": _factory_record(source.factory),
        "trust_code": source.trust_code,
    }


def file_record(path: str) -> dict[str, Any]:
    """A file as provenance records it: absolute path, size in bytes and SHA-256 of its bytes (of
    data read from several files, an image folder or a .npy pair: their total size and
    data_sha256's digest of them all)."""
    return {"path": os.path.abspath(path), "bytes": data_bytes(path), "sha256": data_sha256(path)}


def _factory_record(factory: str | None) -> dict[str, Any] | None:
    """The source file of a factory's module (`package.module:function`), when it has one."""
    if not factory:
        return None
    try:
        spec = importlib.util.find_spec(factory.split(":", 1)[0])
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return file_record(origin) if origin and os.path.isfile(origin) else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(package)
        return getattr(module, "__version__", None)
