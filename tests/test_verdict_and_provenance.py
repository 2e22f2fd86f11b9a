"""Every result leads with a verdict per B' (with confidence intervals), names the next repair when
the backdoor survived, and records what produced it (files and their hashes, versions, options)."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from goodnet.measure.verdict import (
    ABSENT,
    NOT_MEASURED,
    NOT_SHOWN,
    OVER,
    RECOMMENDED,
    REDUCED,
    REMOVED,
    SURVIVES,
    WITHIN,
    next_step,
    verdict,
)
from goodnet.metrics import paired_change_interval, proportion_interval

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")


def _pairs(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (before, after) correctness from a paired 2x2 table [[both, after only], [before only, neither]]
    laid out as rows = after right/wrong, columns = before right/wrong."""
    before, after = [], []
    for after_right, row in zip((True, False), table):
        for before_right, count in zip((True, False), row):
            before += [before_right] * count
            after += [after_right] * count
    return np.array(before), np.array(after)


def test_paired_interval_matches_newcombes_square_and_add_reference_values():
    # Cavo et al. 2012 as worked in Fagerland, Lydersen & Laake's contingencytables (chapter 8):
    # estimate -0.0621, 95 % CI -0.1186 to -0.0046
    before, after = _pairs([[59, 6], [16, 80]])
    change = paired_change_interval(before, after)
    assert round(change.value / 100, 4) == -0.0621
    assert (round(change.low / 100, 4), round(change.high / 100, 4)) == (-0.1186, -0.0046)
    assert change.n == 161


def test_proportion_interval_is_wilsons_as_scipy_computes_it():
    for hits, n in [(0, 79), (3, 79), (79, 79), (450, 900), (998, 1000)]:
        ours = proportion_interval(hits, n)
        ref = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert ours.low == pytest.approx(100 * ref.low, abs=1e-9) and ours.high == pytest.approx(
            100 * ref.high, abs=1e-9
        )
        assert ours.low <= ours.value <= ours.high


def test_paired_interval_covers_the_true_change_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, trials, covered = 300, 1500, 0
    for _ in range(trials):
        before = rng.random(n) < 0.9
        flip = rng.random(n)
        after = np.where(before, flip > 0.04, flip < 0.2)  # true change: 0.9*-0.04 + 0.1*0.2 = -1.6 points
        change = paired_change_interval(before, after)
        covered += change.low <= -1.6 <= change.high
    assert 0.93 <= covered / trials <= 0.99


def test_identical_models_change_nothing_and_the_interval_shrinks_with_more_images():
    small = paired_change_interval(np.ones(79, bool), np.ones(79, bool))
    assert small.value == 0 and small.low <= 0 <= small.high
    widths = []
    for n in (79, 790, 7900):
        before = np.arange(n) % 10 != 0
        after = before.copy()
        after[: n // 100] = ~after[: n // 100]
        change = paired_change_interval(before, after)
        widths.append(change.high - change.low)
    assert widths[0] > widths[1] > widths[2]


def _labels(n: int, hits: int, target: int = 0) -> tuple[np.ndarray, np.ndarray]:
    truth = np.full(n, target)
    labels = np.full(n, target + 1)
    labels[:hits] = target
    return truth, labels


def _case(asr_before: int, asr_after: int, clean_right_before: int, clean_right_after: int, n: int = 1000):
    y_p, b_p = _labels(900, asr_before)
    _, r_p = _labels(900, asr_after)
    y_c, b_c = _labels(n, clean_right_before, target=3)
    _, r_c = _labels(n, clean_right_after, target=3)
    truth = {"poisoned_test": y_p, "clean_test": y_c}
    return truth, {"poisoned_test": b_p, "clean_test": b_c}, {"poisoned_test": r_p, "clean_test": r_c}


def test_verdict_names_removed_reduced_survives_and_absent_from_the_asr():
    assert verdict("m", *_case(898, 3, 960, 955), budget=2.0).backdoor == REMOVED
    assert verdict("m", *_case(898, 400, 960, 955), budget=2.0).backdoor == REDUCED
    assert verdict("m", *_case(898, 890, 960, 955), budget=2.0).backdoor == SURVIVES
    assert verdict("m", *_case(1, 0, 960, 955), budget=2.0).backdoor == ABSENT
    truth, before, after = _case(898, 3, 960, 955)
    for d in (truth, before, after):
        d.pop("poisoned_test")
    v = verdict("m", truth, before, after, budget=2.0)
    assert v.backdoor == NOT_MEASURED and "not measured" in v.line()


def test_budget_is_within_only_when_the_whole_interval_is_and_says_when_images_are_too_few():
    # the same 1-point loss: 79 images cannot show it is within 2 points, 10,000 can
    few = verdict("m", *_case(898, 3, 79, 78, n=79), budget=2.0)
    assert few.budget_status == NOT_SHOWN and "too few images to tell" in few.line()
    many = verdict("m", *_case(898, 3, 9000, 8900, n=10000), budget=2.0)
    assert many.budget_status == WITHIN and "within the 2-point budget" in many.line()
    over = verdict("m", *_case(898, 3, 960, 900), budget=2.0)
    assert over.budget_status == OVER and "OVER the 2-point budget" in over.line()
    assert verdict("m", *_case(898, 3, 960, 955), budget=None).budget_status is None
    line = verdict("x2", *_case(898, 3, 960, 955), budget=2.0).line()
    assert re.match(
        r"x2: backdoor removed: ASR 99\.8 % -> 0\.3 % \(95 % CI \d+\.\d-\d+\.\d, 900 poisoned test images\)", line
    )


def test_next_step_names_the_best_measured_repair_other_than_the_one_run():
    survived = (verdict("x2", *_case(898, 890, 960, 955), budget=2.0),)
    step = next_step("prune", survived)
    assert step.repair == RECOMMENDED[0][0] and "--repair unlearn-uap" in step.line()
    assert next_step(RECOMMENDED[0][0], survived).repair == RECOMMENDED[1][0]
    assert next_step("prune", (verdict("x2", *_case(898, 3, 960, 955), budget=2.0),)) is None
    truth, before, after = _case(898, 3, 960, 955)
    for d in (truth, before, after):
        d.pop("poisoned_test")
    unmeasured = next_step("prune", (verdict("x2", truth, before, after, budget=2.0),))
    assert unmeasured.repair is None and "--poisoned-test" in unmeasured.reason


def test_recommended_repairs_are_those_the_zoo_table_ranks_first():
    with open(os.path.join(DOCS, "zoo.md")) as f:
        rows = re.findall(r"^\| eval \| ([\w-]+) \| (yes|no) \| (\d+) of (\d+) \|", f.read(), re.MULTILINE)
    counts = {name: (int(k), int(n)) for name, oracle, k, n in rows if oracle == "no"}
    assert counts, "docs/zoo.md lost its evaluation table"
    ranked = sorted(counts, key=lambda name: -counts[name][0])
    assert [name for name, _, _ in RECOMMENDED] == ranked[: len(RECOMMENDED)]
    for name, met, total in RECOMMENDED:
        assert counts[name] == (met, total)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_results_lead_with_verdicts_next_step_and_provenance(demo_run):
    with open(os.path.join(demo_run["out"], "results.json")) as f:
        doc = json.load(f)
    assert list(doc)[:6] == ["schema_version", "mode", "repair", "oracle", "verdicts", "next_step"]
    assert [v["model"] for v in doc["verdicts"]] == [m["name"] for m in doc["models"]]
    for v, m in zip(doc["verdicts"], doc["models"]):
        assert m["verdict"] == v
        assert v["asr_data"] == "poisoned_test" and v["clean_data"] == "clean_test"
        assert v["asr_after"]["value"] == pytest.approx(m["metrics"]["poisoned_test"]["repaired"], abs=1e-3)
        change = v["clean_accuracy_change"]
        assert change["low"] <= change["value"] <= change["high"] and change["n"] == doc["sizes"]["clean_test"]
    if all(v["backdoor"] in (SURVIVES, REDUCED) for v in doc["verdicts"]):
        assert doc["next_step"]["repair"] == RECOMMENDED[0][0]

    prov = doc["provenance"]
    assert prov["model"]["sha256"] == _sha256(demo_run["model"]) and prov["model"]["path"] == os.path.abspath(
        demo_run["model"]
    )
    for role, path in demo_run["inputs"].items():
        assert prov["data"][role]["sha256"] == _sha256(path)
    assert prov["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert prov["options"]["repair"] == doc["repair"] and prov["options"]["settings"] == doc["settings"]
    assert prov["goodnet"] and prov["python"] and prov["device"] == "cpu"

    with open(os.path.join(demo_run["out"], "report.md")) as f:
        head = f.read().splitlines()[: 6 + len(doc["verdicts"])]
    assert head[2] == "## Verdict" and head[4].startswith(f"- {doc['models'][0]['name']}: backdoor ")
    assert any(line.startswith("**Next step:**") for line in head) == (doc["next_step"] is not None)


def test_cli_ends_with_the_verdicts_and_the_next_step(demo_run, tmp_path, capsys):
    from conftest import run_cli

    inputs = demo_run["inputs"]
    code, out, _ = run_cli(
        capsys,
        [
            "defend",
            "--model",
            demo_run["model"],
            "--clean-valid",
            inputs["clean_valid"],
            "--clean-test",
            inputs["clean_test"],
            "--poisoned-test",
            inputs["poisoned_test"],
            "--repair",
            "channels",
            "--layer",
            "conv_3",
            "--channels",
            "0",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
    )
    assert code == 0
    lines = [line for line in out.splitlines() if line.strip()]
    tail = [line for line in lines if not line.startswith("wrote ")][-2:]
    assert tail[0].startswith("verdict: channels: backdoor ") and "95 % CI" in tail[0]
    assert tail[1].startswith("next step: the backdoor survived channels; try `goodnet defend --repair unlearn-uap`")


def test_readme_lists_every_registered_repair_with_the_zoo_tables_count():
    from goodnet.repairs import repair_names
    from goodnet.repairs.registry import repair_class

    with open(os.path.join(DOCS, "..", "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Which repair?") : readme.index("## The five most used commands")]
    rows = dict(re.findall(r"^\| `([\w-]+)`(?: \(default\))? \|.*\| ([^|]+) \|$", section, re.MULTILINE))
    # goodnet's own repairs (a plugin or a test's toy repair registered in this process is not goodnet's)
    built_in = {name for name in repair_names() if repair_class(name).__module__.startswith("goodnet.")}
    assert set(rows) == built_in
    with open(os.path.join(DOCS, "zoo.md")) as f:
        counts = re.findall(r"^\| eval \| ([\w-]+) \| (?:yes|no) \| (\d+ of \d+) \|", f.read(), re.MULTILINE)
    assert counts
    for name, count in counts:
        assert rows[name].strip() == count, name


def test_relative_budget_is_judged_in_points_of_b_accuracy():
    # 5 % of B's 80 % is 4 points: a 3-point loss on 10,000 images is within it, not within 2 points
    truth, before, after = _case(898, 3, 8000, 7700, n=10000)
    v = verdict("x5_within", truth, before, after, budget=5.0, relative=True)
    assert v.budget == pytest.approx(4.0) and v.budget_percent == 5.0 and v.budget_status == WITHIN
    assert "within the 4-point budget (5 % of B's accuracy)" in v.line()
    assert verdict("x2_within", truth, before, after, budget=2.0).budget_status == OVER


def test_a_sweep_judges_within_models_against_x_and_crossing_models_against_none(demo_run, tmp_path, capsys):
    from conftest import run_cli

    inputs = demo_run["inputs"]
    out = tmp_path / "out"
    argv = ["defend", "--model", demo_run["model"], "--out", str(out), "--quiet", "--rule", "both"]
    for role in ("clean_valid", "clean_test", "poisoned_test"):
        argv += [f"--{role.replace('_', '-')}", inputs[role]]
    code, stdout, err = run_cli(capsys, argv + ["--thresholds", "4", "--relative"])
    assert code == 0, err
    with open(out / "results.json") as f:
        doc = json.load(f)
    by_name = {v["model"]: v for v in doc["verdicts"]}
    # a crossing B' is the first at or past X by design: X is its target, not a budget it could keep
    assert by_name["x4_crossing"]["budget"] is None and by_name["x4_crossing"]["budget_status"] is None
    within = by_name["x4_within"]
    b_accuracy = within["clean_accuracy_before"]["value"]
    assert within["budget"] == pytest.approx(4 * b_accuracy / 100) and within["budget_relative_percent"] == 4
    assert "budget (4 % of B's accuracy)" in within["line"]


def test_next_step_says_when_the_guard_handed_b_back_unchanged():
    survived = (verdict("B", *_case(898, 898, 960, 960), budget=2.0),)
    step = next_step("ft-sam", survived, handed_back=2.0)
    assert "could not keep the 2-point budget" in step.reason and "handed back unchanged" in step.reason
    assert step.repair == RECOMMENDED[0][0]
    # the only recommended repair just ran and failed: the next step still says something useful
    only = next_step("unlearn-uap", survived, handed_back=2.0)
    assert only.repair == RECOMMENDED[1][0]
