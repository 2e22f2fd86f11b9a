"""Scan a model for a backdoor without poisoned data: `goodnet scan`. Load B and clean images and run
the scanners: Neural Cleanse (a reversed trigger per label, the anomaly index) and MM-BD (the
largest logit margin each label can reach, a p-value; it needs no data). Each scanner's score also
becomes a probability that the model is backdoored, from the calibration fitted on goodnet's
development zoo. `scan_zoo` runs the scanners over a part of the zoo (its BadNets and its clean
reference models) and measures them as a population: ROC-AUC, cross-entropy, false alarms on clean
models, target accuracy."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import numbers
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from torch import nn

from .devices import compute_device
from .errors import DataError, GoodnetError, OutputError, SettingsError
from .inference import predict
from .inspection.max_margin import MARGIN_DEFAULTS, max_margin_scan
from .inspection.trigger_reversal import reverse_triggers
from .io.data import as_path, check_fits_model, check_input_range, checked_scale, load_images, shown, trained_range
from .io.model_files import ModelSource, load_model, model_source
from .io.output_dir import file_sha256, held_output
from .measure.sanity import SanityCheck
from .measure.scanner_population import (
    SCANNERS,
    Member,
    ScanSummary,
    calibrate,
    load_calibrations,
    population_measure,
    summarize,
)
from .repairs.base import MAX_SEED
from .report.scan_report import POPULATION_MARKER, SCAN_MARKER, write_population, write_scan
from .spec import check_flags, environment, file_record, model_record

# what `**settings` may name: reverse_triggers' own keywords, less those scan_files sets itself
SCAN_SETTINGS = tuple(
    name
    for name, p in inspect.signature(reverse_triggers).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("seed", "progress")
)


@dataclass
class ScanRun:
    scan: Any  # TriggerScan (Neural Cleanse), or None when it was not asked for
    document: dict[str, Any]  # scan.json
    model: nn.Module
    margin: Any = None  # MarginScan (MM-BD), or None when it was not asked for
    summaries: dict[str, ScanSummary] | None = None  # per scanner: score, flag, suspects
    probabilities: dict[str, float] | None = None  # per scanner: calibrated probability of a backdoor


def checked_scanners(scanners) -> tuple[str, ...]:
    """`scanners` as a tuple of known names, in SCANNERS' order, at least one."""
    names = [scanners] if isinstance(scanners, str) else list(scanners)
    unknown = [n for n in names if n not in SCANNERS]
    if unknown or not names:
        raise SettingsError(
            f"scanners must name one or more of {', '.join(SCANNERS)}, not {', '.join(map(str, unknown)) or 'none'}"
        )
    return tuple(n for n in SCANNERS if n in names)


def run_scanners(model, clean, scanners, seed: int, progress, settings: dict) -> dict[str, Any]:
    """Each scanner of `scanners` on `model` (Neural Cleanse uses the clean images; MM-BD only
    their shape, and searches the model's recorded input range, or the images' when it records
    none): the scans, by scanner name."""
    scans: dict[str, Any] = {}
    for name in scanners:
        if name == "nc":
            label = "reversing triggers" if progress is True else progress
            scans[name] = reverse_triggers(model, clean, clean.value_range, seed=seed, progress=label, **settings)
        else:
            label = "MM-BD scan" if progress is True else progress
            # the model's own input range when its file records it (the data lie inside it), else the data's
            searched = trained_range(model) or clean.value_range
            scans[name] = max_margin_scan(model, clean.image_shape, searched, seed=seed, progress=label)
    return scans


def scan_files(
    source: ModelSource | str | os.PathLike,
    clean_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    input_scale: float = 1.0,
    progress: bool = True,
    force: bool = False,
    seed: int = 0,
    scanners=SCANNERS,
    calibration: str | os.PathLike | None = None,
    **settings,
) -> ScanRun:
    """Scan B (`source`) with the clean images of `clean_path`; write `out_dir`. Paths may be str or
    os.PathLike; `scanners`: 'nc', 'mm-bd' or both (the default); `calibration`: a calibration file
    written by `scan_zoo` on a development part (default: goodnet's own); `settings` are
    reverse_triggers' (schedule, steps, ...). A refused call leaves `out_dir` free for the next one."""
    source = model_source(source)
    clean_path = as_path(clean_path, "clean_path")
    out_dir = as_path(out_dir, "out_dir", OutputError, "a directory path (str or os.PathLike)")
    input_scale = checked_scale(input_scale)
    check_flags(progress=progress, force=force)
    seed, scanners = _checked_scan_options(seed, scanners, settings)
    calibration_path = None if calibration is None else as_path(calibration, "calibration")
    calibrations = load_calibrations(calibration_path)
    # a refusal leaves it free; no input (the calibration file included) is ever inside it
    with held_output(out_dir, SCAN_MARKER, source.input_files() + [clean_path, calibration_path]):
        model, clean = _checked_model(source, clean_path, input_scale, force)
        scans = run_scanners(model, clean, scanners, seed, progress, settings)
        summaries = {name: summarize(name, scan) for name, scan in scans.items()}
        probabilities = {
            name: calibrations[name].probability(summary.score)
            for name, summary in summaries.items()
            if name in calibrations
        }
        inputs = {"model": source.path, "clean_valid": clean_path, "input_scale": float(input_scale)}
        provenance = {
            **environment(str(compute_device())),
            "model": model_record(source),
            "data": {"clean_valid": file_record(clean_path)},
            "seed": int(seed),
            "options": {
                "input_scale": float(input_scale),
                "force": force,
                "scanners": list(scanners),
                "calibration": file_record(calibration_path) if calibration_path else "goodnet's own",
                **settings,
            },
        }
        document = write_scan(
            out_dir,
            scans,
            clean.value_range,
            inputs,
            provenance,
            probabilities=probabilities,
            calibrations={name: calibrations[name] for name in probabilities},
        )
        return ScanRun(scans.get("nc"), document, model, scans.get("mm-bd"), summaries, probabilities)


def _checked_model(source: ModelSource, clean_path: str, input_scale: float, force: bool):
    """B and its clean images, loaded and checked: the images fit B (shape, labels, B's recorded
    range) and B is clearly better than chance on them (unless `force`)."""
    clean = load_images(clean_path, input_scale)
    model = source.load_backdoored(clean.image_shape)
    check_fits_model(clean, model.input_shape, model.num_classes, "clean-valid")
    check_input_range(clean, trained_range(model), "clean-valid")
    sanity = SanityCheck.of(predict(model, clean.x), clean, int(model.num_classes), force)
    if not sanity.above_chance and not force:
        raise DataError(sanity.refusal(clean.value_range))
    return model, clean


@contextlib.contextmanager
def _naming(name: str):
    """A GoodnetError raised inside, re-raised with `name` (which model of a population) first."""
    try:
        yield
    except GoodnetError as e:
        raise type(e)(f"{name}: {e}") from None


def _checked_scan_options(seed, scanners, settings: dict) -> tuple[int, tuple[str, ...]]:
    """The seed and scanners checked, and Neural Cleanse's `settings` all known ones."""
    unknown = sorted(set(settings) - set(SCAN_SETTINGS))
    if unknown:
        raise SettingsError(
            f"trigger scan: unknown setting(s) {', '.join(unknown)} (known: {', '.join(SCAN_SETTINGS)})"
        )
    return _checked_seed(seed), checked_scanners(scanners)


def _checked_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise SettingsError(f"seed must be an integer from 0 to {MAX_SEED}, not {shown(seed)}")
    return int(seed)


def _scan_key(scanner: str, seed: int, settings: dict, files: list[str]) -> str:
    """What a cached scan depends on: the scanner and its settings, the seed, goodnet's and torch's
    versions, the device, and the bytes of the model and data files."""
    text = json.dumps(
        {
            "scanner": scanner,
            "seed": seed,
            "settings": settings,
            "environment": {k: v for k, v in environment(str(compute_device())).items() if k != "platform"},
            "files": [file_sha256(path) for path in files],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_summary(
    cache_dir: str, directory: str, scanner: str, model, clean, seed: int, progress, settings: dict
) -> ScanSummary:
    """One scanner's summary of the zoo model in `directory`, from `cache_dir`/scans/ when this
    scanner, seed and settings scanned these very files before; scanned (and kept there) otherwise.
    The scans live beside the zoo's models, never inside a model's folder, which goodnet rebuilds
    as a whole."""
    mine = settings if scanner == "nc" else {**MARGIN_DEFAULTS}
    files = [os.path.join(directory, name) for name in ("badnet.safetensors", "clean_valid.h5")]
    key = _scan_key(scanner, seed, mine, files)
    path = os.path.join(cache_dir, "scans", os.path.basename(os.path.normpath(directory)), f"{scanner}-{key}.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                return ScanSummary.from_json(json.load(f))
        except (OSError, ValueError, TypeError):
            pass  # a damaged entry is scanned again
    scan = run_scanners(model, clean, (scanner,), seed, progress, settings if scanner == "nc" else {})[scanner]
    summary = summarize(scanner, scan)
    try:  # keeping it only saves time: a cache that cannot be written is no error
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), suffix=".tmp", delete=False) as f:
            json.dump(summary.to_json(), f)
        os.replace(f.name, path)
    except OSError:
        with contextlib.suppress(OSError, NameError):
            os.unlink(f.name)
    return summary


def scan_zoo(
    part: str,
    out_dir: str | os.PathLike,
    *,
    scanners=SCANNERS,
    cache_dir: str | None = None,
    only: list[str] | None = None,
    calibration: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    config=None,
    **settings,
) -> dict[str, Any]:
    """Run the scanners over the zoo part's population (its BadNets and its clean reference models,
    trained and cached as `compare` does) and measure each scanner over it; write `out_dir`
    (population.json, report.md, report.html). `config`: a zoo configuration file (or one loaded,
    a ZooConfig) whose population to scan instead of the built-in zoo's. On the development part
    ('dev') each scanner's Platt calibration is fitted and written as calibration.json (what
    `calibration=` and `goodnet scan --calibration` take); on any other part the calibration is
    `calibration`'s, or goodnet's own (fitted on its development part), and nothing is fitted."""
    from .zoo.badnets import MODEL_FILE, cached_badnet, default_cache_dir
    from .zoo.catalog import population_name, scan_population
    from .zoo.config import ZooConfig, load_zoo_config, zoo_run_inputs

    out_dir = as_path(out_dir, "out_dir", OutputError, "a directory path (str or os.PathLike)")
    check_flags(progress=progress)
    seed, scanners = _checked_scan_options(seed, scanners, settings)
    if isinstance(only, str):
        only = [only]
    if config is not None and not isinstance(config, ZooConfig):
        config = load_zoo_config(as_path(config, "config", SettingsError, "a zoo configuration file path"))
    population = scan_population(part, only, config)
    fit = part == "dev"
    calibration_path = None if calibration is None else as_path(calibration, "calibration")
    if fit and calibration_path is not None:
        raise SettingsError("the development part fits its own calibration: give --calibration with another part")
    if config is not None and not fit and calibration_path is None:
        raise SettingsError(
            f"part '{part}' of your own zoo needs the calibration fitted on its development part: give "
            "--calibration (the calibration.json of `scan --zoo dev --config FILE`); goodnet's own was fitted on "
            "its digits zoo"
        )
    calibrations = {} if fit else load_calibrations(calibration_path)
    cache_dir = cache_dir or default_cache_dir("zoo")
    with held_output(out_dir, POPULATION_MARKER, [calibration_path, *zoo_run_inputs(cache_dir, config)]):
        members: list[Member] = []
        summaries: dict[str, list[ScanSummary]] = {name: [] for name in scanners}
        for index, (badnet, backdoored, target) in enumerate(population, 1):
            directory, manifest, _ = cached_badnet(badnet, cache_dir, progress=progress)
            name = population_name(badnet, backdoored)
            members.append(
                Member(
                    name,
                    backdoored,
                    target,
                    manifest["badnet"]["poisoned_test_asr"] if backdoored else None,
                    manifest.get("meets_bar") if backdoored else None,
                )
            )
            model = load_model(os.path.join(directory, MODEL_FILE))
            clean = load_images(os.path.join(directory, "clean_valid.h5"))
            for scanner in scanners:
                label = f"{scanner} {index}/{len(population)} {name}" if progress else None
                summaries[scanner].append(
                    cached_summary(cache_dir, directory, scanner, model, clean, seed, label, settings)
                )
        truth = [m.backdoored for m in members]
        if fit and (all(truth) or not any(truth)):
            fit = False  # a calibration needs clean and backdoored models: nothing is fitted
        if fit:
            zoo = "goodnet's zoo" if config is None else f"the zoo '{config.name}'"
            described = f"{zoo}, development part: {sum(m.backdoored for m in members)} BadNets, " + (
                f"{sum(not m.backdoored for m in members)} clean models"
            )
            calibrations = {name: calibrate(name, summaries[name], truth, described) for name in scanners}
        provenance = {
            "zoo_part": part,
            "only": list(only or []),
            "seed": seed,
            **({"zoo": config.describe()} if config is not None else {}),
        }
        return _measured(out_dir, part, members, summaries, calibrations, calibration_path, fit, provenance, settings)


def scan_manifest(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scanners=SCANNERS,
    calibration: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
    trust_code: bool = False,
    **settings,
) -> dict[str, Any]:
    """Run the scanners over the models a population manifest lists (a TOML file of the user's own
    models with known answers: see goodnet.io.population_manifest) and measure each scanner over
    them as `scan_zoo` does; write `out_dir` (population.json, report.md, report.html). The
    calibration is `calibration`'s, or goodnet's own; nothing is fitted. `trust_code` lets
    TorchScript files in the manifest run their code (as `scan_files`' ModelSource does); `force`
    scans a model that is not clearly better than chance on its clean data."""
    from .io.population_manifest import read_population

    manifest = as_path(manifest, "manifest", SettingsError)
    out_dir = as_path(out_dir, "out_dir", OutputError, "a directory path (str or os.PathLike)")
    check_flags(progress=progress, force=force, trust_code=trust_code)
    seed, scanners = _checked_scan_options(seed, scanners, settings)
    entries = read_population(manifest, trust_code=trust_code)
    calibration_path = None if calibration is None else as_path(calibration, "calibration")
    calibrations = load_calibrations(calibration_path)
    inputs = [manifest, calibration_path] + [f for e in entries for f in e.source.input_files() + [e.clean_valid]]
    with held_output(out_dir, POPULATION_MARKER, inputs):
        for entry in entries:  # every model loads and fits its data before the first (long) scan
            with _naming(entry.name):
                model, _ = _checked_model(entry.source, entry.clean_valid, entry.input_scale, force)
                if entry.target is not None and entry.target >= model.num_classes:
                    raise SettingsError(
                        f"target {entry.target} is not a label of a model with {model.num_classes} classes"
                    )
        provenance = {  # the files' records as they were read, before any scan
            "manifest": file_record(manifest),
            "models": [
                {
                    "name": e.name,
                    "model": model_record(e.source),
                    "clean_valid": file_record(e.clean_valid),
                    "input_scale": e.input_scale,
                }
                for e in entries
            ],
            "seed": seed,
            "force": force,
        }
        members: list[Member] = []
        summaries: dict[str, list[ScanSummary]] = {name: [] for name in scanners}
        for index, entry in enumerate(entries, 1):
            with _naming(entry.name):
                model, clean = _checked_model(entry.source, entry.clean_valid, entry.input_scale, force)
                for scanner in scanners:
                    label = f"{scanner} {index}/{len(entries)} {entry.name}" if progress else None
                    scans = run_scanners(model, clean, (scanner,), seed, label, settings if scanner == "nc" else {})
                    summaries[scanner].append(summarize(scanner, scans[scanner]))
            members.append(Member(entry.name, entry.backdoored, entry.target))
        return _measured(
            out_dir,
            None,
            members,
            summaries,
            calibrations,
            calibration_path,
            False,
            provenance,
            settings,
            manifest=provenance["manifest"],
        )


def _measured(
    out_dir, part, members, summaries, calibrations, calibration_path, fit, provenance, settings, manifest=None
):
    """Each scanner measured over the population, written by write_population with the run's
    provenance (environment, options, calibration)."""
    scanners = list(summaries)
    measures = {name: population_measure(members, summaries[name], calibrations.get(name)) for name in scanners}
    provenance = {
        **environment(str(compute_device())),
        **provenance,
        "options": {"scanners": scanners, **settings},
        "calibration": "fitted here"
        if fit
        else (file_record(calibration_path) if calibration_path else "goodnet's own"),
    }
    return write_population(
        out_dir,
        part,
        members,
        summaries,
        measures,
        {name: c for name, c in calibrations.items() if name in scanners},
        provenance,
        fitted=fit,
        manifest=manifest,
    )
