"""Defend many models at once: `goodnet batch MANIFEST`, one defense per model listed, one table.

The manifest is a CSV file with a header row: `model` (required), `name` (default: the model
file's name), the data files `clean_valid`, `poisoned_valid`, `clean_test`, `poisoned_test`, and
`arch`, `factory`, `input_scale` as `goodnet defend` takes them; relative paths are read from the
manifest's folder, blank cells mean "not given", lines starting with # are comments. Every row is
one grid cell (see grid.py): run in order, in a process pool or on Ray, written as it finishes,
resumed after an interruption. A model that is refused (a damaged file, data that do not fit)
becomes a row saying why; the other models go on. Only defended models are kept for a rerun (a
refused one is tried again), and a model whose files changed (their content) is defended again.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .defend import defend
from .errors import GoodnetError, SettingsError
from .grid import GridCell, GridRunner, check_ray_address, finished, forget, run_context, run_grid
from .inspection.strip import StripSettings
from .io.model_files import ModelSource, manifest_arch, manifest_path
from .io.output_dir import check_output_dir, claim_state_dir
from .repairs import Repair
from .repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP
from .report.batch_report import BATCH_MARKER, batch_row, error_row, write_batch
from .spec import DefenseSpec

DATA_COLUMNS = ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")
PATH_COLUMNS = ("model",) + DATA_COLUMNS
COLUMNS = ("name",) + PATH_COLUMNS + ("arch", "factory", "input_scale")
MAX_ROWS = 100_000
MAX_NAME = 100


@dataclass(frozen=True)
class BatchEntry:
    """One model of the manifest, with its paths resolved."""

    name: str
    model: str
    data: dict[str, str | None] = field(default_factory=dict)
    arch: str | None = None
    factory: str | None = None
    input_scale: float = 1.0


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("._") or "model"


def _scale(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{where}: input_scale must be a positive number, not {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise SettingsError(f"{where}: input_scale must be a positive number, not {text!r}")
    return value


def read_manifest(path: str) -> list[BatchEntry]:
    """The models a manifest lists; one line naming the problem for anything malformed."""
    if os.path.isdir(path):
        raise SettingsError(f"{path}: is a directory, not a manifest file")
    if not os.path.isfile(path):
        raise SettingsError(f"{path}: no such manifest file")
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark is fine
            lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not a text (UTF-8 CSV) manifest") from None
    if not lines:
        raise SettingsError(f"{path}: the manifest lists no models (a header row with 'model', then one row each)")
    reader = csv.DictReader(lines)
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = list(reader)
    except csv.Error as exc:
        raise SettingsError(f"{path}: not a readable CSV manifest ({exc})") from None
    if len(set(header)) != len(header):
        raise SettingsError(f"{path}: a column is named twice in the header")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise SettingsError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))} (known: {', '.join(COLUMNS)})")
    if "model" not in header:
        raise SettingsError(f"{path}: the header has no 'model' column (known: {', '.join(COLUMNS)})")
    entries: list[BatchEntry] = []
    names: set[str] = set()
    for number, raw in enumerate(rows, start=2):
        if number - 1 > MAX_ROWS:
            raise SettingsError(f"{path}: more than {MAX_ROWS} models; split the manifest")
        if None in raw:
            raise SettingsError(f"{path}: row {number} has more cells than the header")
        row = {k.strip(): (v or "").strip() for k, v in raw.items()}
        where = f"{path}: row {number}"
        if not row.get("model"):
            raise SettingsError(f"{where}: no model file")

        def resolved(value: str) -> str | None:
            return manifest_path(value, base) if value else None

        model = resolved(row["model"])
        name = _safe_name(row.get("name") or os.path.splitext(os.path.basename(row["model"]))[0])
        if len(name) > MAX_NAME:
            raise SettingsError(f"{where}: the name is longer than {MAX_NAME} characters")
        if name.lower() in names:  # case-insensitive: the folders must differ on every file system
            raise SettingsError(f"{where}: the name '{name}' is used twice; give each row its own 'name'")
        names.add(name.lower())
        arch = manifest_arch(row["arch"], base) if row.get("arch") else None
        entries.append(
            BatchEntry(
                name=name,
                model=model,
                data={r: resolved(row.get(r, "")) for r in DATA_COLUMNS},
                arch=arch,
                factory=row.get("factory") or None,
                input_scale=_scale(row["input_scale"], where) if row.get("input_scale") else 1.0,
            )
        )
    if not entries:
        raise SettingsError(f"{path}: the manifest lists no models")
    return entries


def input_files(entry: BatchEntry) -> tuple[str, ...]:
    """The files a model's cell reads (model, data, an architecture file): their content is part of
    the cell's fingerprint, so a file rebuilt or edited in place makes the cell run again."""
    arch = [entry.arch] if entry.arch and os.sep in entry.arch else []
    return tuple(dict.fromkeys(path for path in [entry.model, *entry.data.values(), *arch] if path))


def _defended(row: dict[str, Any]) -> bool:
    """Only a defended model's row is kept for a rerun: a refusal (a full disk, a file being
    replaced) may not happen again, so its model runs again next time."""
    return not row.get("error")


def defend_entry(
    entry: BatchEntry,
    repair: Repair,
    out_dir: str,
    max_drop: float = DEFAULT_MAX_DROP,
    holdout: float = DEFAULT_HOLDOUT,
    strip: bool = True,
    scan: bool = False,
    force: bool = False,
    scan_schedule: str = "reference",
    trust_code: bool = False,
) -> dict[str, Any]:
    """A grid cell: `goodnet defend` on one model into `out_dir`; its row (a refusal is a row too)."""
    start = time.perf_counter()
    try:
        run = defend(
            DefenseSpec.build(
                ModelSource(entry.model, entry.arch, entry.factory, trust_code),
                dict(entry.data),
                out_dir,
                repair,
                input_scale=entry.input_scale,
                progress=False,
                force=force,
                max_drop=max_drop,
                holdout=holdout,
                strip=StripSettings() if strip else None,
                scan=scan,
                scan_schedule=scan_schedule,
            )
        )
    except GoodnetError as exc:
        return error_row(entry.name, entry.model, str(exc))
    except Exception as exc:  # noqa: BLE001 - one model's unforeseen failure must not end a batch of many
        return error_row(entry.name, entry.model, f"unexpected {type(exc).__name__}: {exc} (please report it)")
    return batch_row(entry.name, entry.model, run.document, time.perf_counter() - start)


def _summary(row: dict[str, Any]) -> str:
    if row["error"]:
        return f"refused: {row['error']}"
    parts = [f"{row['delivered']}"] + ([f"backdoor {row['backdoor']}"] if row.get("backdoor") else [])
    if row["clean_drop"] is not None:
        parts.append(f"clean drop {row['clean_drop']:.2f}")
    if row["asr"] is not None:
        parts.append(f"ASR {row['b_asr']:.2f} -> {row['asr']:.2f}")
    return ", ".join(parts)


def batch(
    entries: Sequence[BatchEntry],
    repair: Repair,
    state_dir: str,
    runner: GridRunner = GridRunner(),
    progress: bool = True,
    **defend: Any,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Defend every entry (see `defend_entry` for `defend`'s options); (rows, {name: output folder})."""
    outputs = {e.name: os.path.join(state_dir, "models", e.name) for e in entries}
    os.makedirs(os.path.join(state_dir, "models"), exist_ok=True)
    cells = [
        GridCell(
            e.name,
            defend_entry,
            {"entry": e, "repair": repair, "out_dir": outputs[e.name], **defend},
            inputs=input_files(e),
        )
        for e in entries
    ]
    context = run_context(runner)
    for cell in cells:  # a defended model whose output folder is gone runs again, and so does a refusal
        kept = finished(os.path.join(state_dir, "cells"), cell, context)
        if kept is not None and (not _defended(kept) or not os.path.isdir(outputs[cell.key])):
            forget(os.path.join(state_dir, "cells"), cell, context)
    rows = run_grid(
        cells, os.path.join(state_dir, "cells"), runner, "models" if progress else None, _summary, keep=_defended
    )
    return rows, outputs


@dataclass(frozen=True)
class BatchRun:
    rows: list[dict[str, Any]]  # one per model of the manifest; "error" says why a model was refused

    @property
    def refused(self) -> str | None:
        """One line on the models refused, or None when every model was defended."""
        failed = [r for r in self.rows if r["error"]]
        if not failed:
            return None
        return (
            f"{len(failed)} of {len(self.rows)} models were refused (first: {failed[0]['name']}: "
            f"{failed[0]['error']}); the table lists why"
        )


def run_batch(
    manifest: str,
    out_dir: str,
    repair: Repair,
    workers: int = 1,
    threads: int | None = None,
    ray: str | None = None,
    progress: bool = True,
    max_drop: float = DEFAULT_MAX_DROP,
    holdout: float = DEFAULT_HOLDOUT,
    strip: bool = True,
    scan: bool = False,
    force: bool = False,
    scan_schedule: str = "reference",
    trust_code: bool = False,
) -> BatchRun:
    """Defend every model the CSV `manifest` lists with `repair` (as `goodnet defend` would, with the
    options given), on a grid runner of `workers` processes, `threads` each, or on Ray at `ray`, and
    write batch.* and every model's own output into `out_dir`. A refused model becomes a row saying
    why and the others go on; everything else is checked before any work."""
    entries = read_manifest(manifest)
    check_ray_address(ray)  # before any work: an unreachable cluster is refused at once
    runner = GridRunner(workers=workers, threads=threads, ray=ray)
    inputs = [manifest] + [path for e in entries for path in (e.model, e.arch, *e.data.values())]
    check_output_dir(out_dir, marker=BATCH_MARKER, claim=True, inputs=inputs)
    state = claim_state_dir(out_dir, inputs)
    rows, outputs = batch(
        entries,
        repair,
        state,
        runner,
        progress=progress,
        max_drop=max_drop,
        holdout=holdout,
        strip=strip,
        scan=scan,
        force=force,
        scan_schedule=scan_schedule,
        trust_code=trust_code,
    )
    write_batch(
        out_dir,
        rows,
        outputs,
        {
            "repair": repair.name,
            "repair_settings": repair.settings(),
            "manifest": os.path.abspath(manifest),
            "runner": runner.describe(),
        },
    )
    shutil.rmtree(state, ignore_errors=True)  # every model's output is in the batch's now
    return BatchRun(rows)


__all__ = ["BatchEntry", "BatchRun", "batch", "defend_entry", "read_manifest", "run_batch"]
