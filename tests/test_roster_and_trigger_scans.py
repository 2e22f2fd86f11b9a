"""The field's defenses side by side: registered, in compare's roster, and the scan a user
without poisoned data runs (`goodnet scan`, `goodnet defend --scan`, `goodnet compare --scan`)."""

import html
import json
import os

from conftest import assert_one_line_error, assert_self_contained_page, run_cli

from goodnet.repairs import repair_names


def test_the_field_is_registered_and_compared():
    from goodnet.compare import comparison_roster

    field = {"nc", "nad", "ft-sam", "i-bau", "anp", "clp", "fst", "fine-tune"}
    assert field <= set(repair_names())
    assert field <= {r.name for r in comparison_roster()}


def test_scan_command_and_defend_scan(demo_run, tmp_path, capsys):
    clean = demo_run["inputs"]["clean_valid"]
    # the faster schedule: the authors' (the default) takes minutes per model on a CPU; on the demo its
    # label 0 is the most anomalous, below 2 (tests/test_conformance_nc.py pins that schedule)
    code, out, err = run_cli(
        capsys,
        [
            "scan",
            "--model",
            demo_run["model"],
            "--clean-valid",
            clean,
            "--scan-schedule",
            "goodnet",
            "--scanner",
            "nc",
            "--out",
            tmp_path / "scan",
            "--quiet",
        ],
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "scan" / "scan.json").read_text())
    scan = doc["scan"]  # the demo's target, label 0, has the smallest trigger and the largest anomaly index
    assert scan["mask_norms"][0] == min(scan["mask_norms"]) and scan["anomaly_index"][0] == scan["max_anomaly_index"]
    assert scan["suspects"] in ([], [0]) and scan["verdict"] in out
    assert doc["value_range"] == [0.0, 255.0]
    prov = doc["provenance"]  # what produced the scan, as results.json records it
    assert prov["model"]["path"] == os.path.abspath(demo_run["model"]) and len(prov["model"]["sha256"]) == 64
    assert prov["data"]["clean_valid"]["sha256"] and prov["seed"] == 0 and prov["torch"]
    for name in ("model_triggers.png", "model_norms.png", "report.md"):
        assert (tmp_path / "scan" / name).stat().st_size > 0
    page = assert_self_contained_page(tmp_path / "scan")
    assert html.escape(scan["verdict"], quote=False) in page
    # the scanned file is named by its file name, never called B (it may be a repaired B')
    report = (tmp_path / "scan" / "report.md").read_text()
    assert f"| `{os.path.basename(demo_run['model'])}` |" in report and "| B |" not in report
    code, _, err = run_cli(capsys, ["scan", "--model", demo_run["model"], "--out", tmp_path / "s2"])
    assert_one_line_error(code, err, "scan needs --clean-valid")

    code, out, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            demo_run["model"],
            "--repair",
            "fine-tune",
            "--variant",
            "goodnet",
            "--lr",
            "0.05",
            "--epochs",
            "15",
            "--clean-valid",
            clean,
            "--scan",
            "--scan-schedule",
            "goodnet",
            "--no-strip",
            "--out",
            tmp_path / "d",
            "--quiet",
        ],
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "d" / "results.json").read_text())
    before, after = doc["scan"]["B"], doc["scan"]["B' fine-tune"]
    assert before["anomaly_index"][0] == before["max_anomaly_index"] > after["anomaly_index"][0]
    assert doc["scan"]["B"]["settings"]["schedule"] == "goodnet"
    assert doc["strip"] is None
    report = (tmp_path / "d" / "report.md").read_text()
    assert "Trigger scan" in report and "b_prime_1_triggers.png" in report
    assert "Trigger scan" in assert_self_contained_page(tmp_path / "d")  # the reversed triggers embedded
    code, out, err = run_cli(
        capsys, ["defend", "--model", demo_run["model"], "--repair", "fine-tune", "--scan", "--out", tmp_path / "d2"]
    )
    assert_one_line_error(code, err, "--clean-valid")
    assert not (tmp_path / "d2").exists()


def test_compare_scan_table_reports_the_hit_rate_and_the_index_after():
    from goodnet.report.comparison import scan_table

    base = {"badnet_meets_bar": True, "scan_b_anomaly": 5.0, "scan_b_suspect": 0}
    rows = [
        {
            **base,
            "badnet": "patch",
            "repair": "a",
            "meets_bar": True,
            "scan_target": 0,
            "scan_hit": True,
            "scan_after_anomaly": 1.0,
        },
        {
            **base,
            "badnet": "patch",
            "repair": "b",
            "meets_bar": False,
            "scan_target": 0,
            "scan_hit": True,
            "scan_after_anomaly": 4.0,
        },
        {
            **base,
            "badnet": "all-to-all",
            "repair": "a",
            "meets_bar": True,
            "scan_target": None,
            "scan_hit": None,
            "scan_after_anomaly": 0.5,
            "scan_b_suspect": None,
        },
    ]
    table = scan_table(rows)
    assert "hit rate on the single-target BadNets that met their bar: 1 of 1" in table
    assert "below 2 in 2 of 2 cells" in table and "a 1.00*" in table and "– (all-to-all)" in table
    assert scan_table([{"badnet": "x", "scan_b_anomaly": None}]) is None
