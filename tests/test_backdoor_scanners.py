"""Is this model backdoored? MM-BD's maximum-margin scan pinned to its authors' computation
(github.com/wanghangpsu/MM-BD, univ_bd.py), its verdict on tiny models trained in the test (a clean
model is not flagged, a planted backdoor is, with its target), and the population measures a
scanner is judged by (Platt calibration, ROC-AUC, cross-entropy, clean false alarms, target
accuracy), down to `goodnet scan` and `goodnet scan --zoo`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    FULL_MODEL,
    ZOO_CELL,
    assert_one_line_error,
    needs_full_model,
    poisoned_training_set,
    run_cli,
    shuffled_digits,
)
from sklearn.metrics import roc_auc_score
from torch import nn

from goodnet.errors import DataError, SettingsError
from goodnet.inspection.max_margin import margin_loss, margin_p_value, max_margin_scan
from goodnet.io.data import ImageSet, save_images
from goodnet.io.model_files import load_model, save_model
from goodnet.measure.scanner_population import (
    Calibration,
    Member,
    ScanSummary,
    cross_entropy,
    fit_platt,
    load_calibrations,
    population_measure,
    roc_auc_interval,
)
from goodnet.metrics import proportion_interval
from goodnet.models import SmallCNN
from goodnet.models.training import train_classifier


# ---------------------------------------------------------------- the authors' computation
def test_margin_loss_is_the_references_summed_margin_with_the_own_logit_masked_by_1000():
    torch.manual_seed(0)
    outputs = torch.randn(7, 5) * 30 - 10  # negative logits too: the mask must still win
    for label in range(5):
        loss, margins = margin_loss(outputs, label)
        onehot = nn.functional.one_hot(torch.full((7,), label), 5)
        reference = -torch.sum(outputs * onehot) + torch.sum(
            torch.max((1 - onehot) * outputs - 1000 * onehot, dim=1)[0]
        )
        others = outputs.clone()
        others[:, label] = -math.inf
        assert torch.allclose(loss, reference)
        assert torch.allclose(margins, outputs[:, label] - others.max(dim=1)[0])


def test_p_value_is_one_minus_the_gamma_cdf_of_the_largest_to_the_power_k_fitted_without_it():
    from scipy.stats import gamma

    stats = np.array([4.1, 5.0, 3.7, 6.2, 4.4, 5.5, 4.9, 3.9, 5.1, 9.8])
    shape, loc, scale = gamma.fit(np.delete(stats, 9))  # the null: every statistic but the largest
    expected = 1 - gamma.cdf(9.8, a=shape, loc=loc, scale=scale) ** 10  # univ_bd.py: len(r_null) + 1
    p, null = margin_p_value(stats)
    assert p == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert null == pytest.approx({"shape": shape, "loc": loc, "scale": scale})
    far = margin_p_value(np.r_[stats[:9], 500.0])[0]  # 1 - cdf^K rounds to 0; the p-value must not
    assert 0.0 < far < 1e-12


def test_statistic_is_the_best_start_of_the_last_forward_pass_before_its_step():
    # one step: the statistic is the margin of the random starts themselves (the reference steps
    # after its forward pass, and reads the statistic from that pass)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    scan = max_margin_scan(model, (3, 2, 2), (0.0, 255.0), seed=5, starts=6, steps=1)
    generator = torch.Generator().manual_seed(5)
    for label in range(4):
        starts = torch.rand((6, 3, 2, 2), generator=generator)  # drawn per label, in [0, 1]
        with torch.no_grad():
            out = model(255.0 * starts)
        _, margins = margin_loss(out, label)
        assert scan.statistics[label] == pytest.approx(float(margins.max()), rel=1e-5)
    assert scan.steps.tolist() == [1, 1, 1, 1]


def test_steps_are_plain_sgd_at_rate_001_on_the_image_rescaled_to_0_1_and_clamped_for_the_model():
    # a linear model: the margin's gradient is constant, so each step moves every free pixel by
    # 0.01 x the weight difference; pixels pushed past 1 stop counting (the model sees the clamp)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    scan = max_margin_scan(model, (1, 2, 2), (0.0, 1.0), seed=1, starts=2, steps=3, tolerance=1e-12)
    generator = torch.Generator().manual_seed(1)
    u = torch.rand((2, 1, 2, 2), generator=generator)
    for _ in range(2):  # the third forward pass sees the images after two steps
        u = u + 0.01 * torch.tensor([1.0, -1.0, 0.0, 0.0]).view(1, 1, 2, 2) * ((u >= 0) & (u <= 1))
    seen = torch.clamp(u, 0, 1).flatten(1)
    assert scan.statistics[0] == pytest.approx(float((seen[:, 0] - seen[:, 1]).max()), rel=1e-5)


def test_the_search_stops_early_when_the_summed_loss_changes_by_less_than_a_relative_1e_5():
    # a model whose margin saturates: once every start is clamped at the bound, the loss stops
    # changing and the label stops long before the 300-step cap; the first test compares with 1000
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[100.0, 100.0, 100.0, 100.0], [0.0] * 4, [-1.0, 0.0, 0.0, 0.0]]))
    scan = max_margin_scan(model, (1, 2, 2), (0.0, 1.0), starts=4)
    assert scan.steps[0] < 300 and scan.statistics[0] == pytest.approx(400.0, rel=1e-4)
    with torch.no_grad():  # a margin still growing: the search runs to the cap
        model[1].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
    assert max_margin_scan(model, (1, 2, 2), (0.0, 1.0), starts=4, tolerance=1e-12, steps=7).steps[0] == 7


def test_a_model_ending_in_softmax_is_scanned_on_log_probabilities_with_the_same_margins():
    torch.manual_seed(0)
    logits = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    softmax = nn.Sequential(logits, nn.Softmax(dim=1))
    a = max_margin_scan(logits, (1, 4, 4), (0.0, 1.0), seed=2, steps=15)
    b = max_margin_scan(softmax, (1, 4, 4), (0.0, 1.0), seed=2, steps=15)
    assert np.allclose(a.statistics, b.statistics, rtol=1e-3, atol=1e-3)
    assert a.settings["outputs"] == "logits" and b.settings["outputs"].startswith("probabilities")


def test_a_fixed_seed_gives_the_same_statistics_and_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 5)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = max_margin_scan(model, (1, 4, 4), (0.0, 1.0), seed=3, steps=20)
    b = max_margin_scan(model, (1, 4, 4), (0.0, 1.0), seed=3, steps=20)
    assert np.array_equal(a.statistics, b.statistics) and a.p_value == b.p_value
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_too_few_labels_non_finite_logits_and_bad_settings_are_refused():
    with pytest.raises(DataError, match="at least 3 labels"):
        max_margin_scan(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2), (0.0, 1.0))

    class NaNs(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 4), math.nan) + x.sum() * 0

    with pytest.raises(DataError, match="not finite"):
        max_margin_scan(NaNs(), (1, 2, 2), (0.0, 1.0), steps=2)
    with pytest.raises(SettingsError, match="starts"):
        max_margin_scan(nn.Linear(4, 4), (4,), (0.0, 1.0), starts=0)
    with pytest.raises(DataError, match="value range"):
        max_margin_scan(nn.Linear(4, 4), (4,), (1.0, 1.0))


# ---------------------------------------------------------------- tiny models: clean vs backdoored
@pytest.fixture(scope="module")
def digits_models():
    x, y = shuffled_digits()
    train_x, train_y = x[:1000], y[:1000]
    poisoned_x, poisoned_y = poisoned_training_set(train_x, train_y)

    def model(xs, ys):
        torch.manual_seed(2)
        net = SmallCNN(num_classes=10, input_shape=(1, 8, 8), input_divisor=16.0, width=8)
        return train_classifier(net, xs, ys, 25, 2, progress=False).eval()

    return {
        "clean": model(train_x, train_y),
        "backdoored": model(poisoned_x, poisoned_y),
        "valid": ImageSet(x[1000:1400], y[1000:1400], "clean valid"),
    }


def test_a_clean_model_is_not_flagged_and_a_planted_backdoor_is_with_its_target(digits_models):
    clean = max_margin_scan(digits_models["clean"], (1, 8, 8), (0.0, 16.0))
    bad = max_margin_scan(digits_models["backdoored"], (1, 8, 8), (0.0, 16.0))
    assert not clean.flagged and clean.suspects == [] and "no backdoor detected" in clean.verdict
    assert bad.flagged and bad.target == 0 and bad.suspects == [0]
    assert bad.p_value < 1e-3 < clean.p_value
    # the target's reachable margin stands out: far above every other label's
    assert bad.statistics[0] > 1.5 * np.delete(bad.statistics, 0).max()


@needs_full_model
def test_a_real_third_party_badnet_is_flagged_by_mm_bd():
    # the course's backdoored MNIST classifier (Keras 2.3.1, softmax head, inputs in [0, 1], trigger
    # unknown to us, rarely predicts 0): its label 0 reaches a margin far beyond the other nine
    scan = max_margin_scan(load_model(FULL_MODEL), (1, 28, 28), (0.0, 1.0))
    assert scan.flagged and scan.target == 0 and scan.p_value < 1e-6
    assert scan.statistics[0] > 3 * np.delete(scan.statistics, 0).max()


def test_scan_command_runs_both_scanners_and_gives_a_calibrated_probability(digits_models, tmp_path, capsys):
    model, clean = tmp_path / "b.safetensors", tmp_path / "clean.h5"
    net = digits_models["backdoored"]
    net.input_range = (0.0, 16.0)  # recorded in the file, as goodnet records it
    save_model(net, str(model))
    save_images(str(clean), digits_models["valid"])
    out = tmp_path / "scan"
    argv = ["scan", "--model", model, "--clean-valid", clean, "--scan-schedule", "goodnet", "--out", out, "--quiet"]
    code, stdout, err = run_cli(capsys, argv)
    assert code == 0, err
    doc = json.loads((out / "scan.json").read_text())
    assert doc["mm_bd"]["flagged"] and doc["mm_bd"]["suspects"] == [0] and doc["mm_bd"]["verdict"] in stdout
    assert "scan" in doc and doc["provenance"]["options"]["scanners"] == ["nc", "mm-bd"]
    shipped = load_calibrations()
    assert set(doc["probability"]) == set(shipped)  # one probability per calibrated scanner
    for name, p in doc["probability"].items():
        assert (
            0.0 <= p <= 1.0
            and f"probability of a backdoor ({'MM-BD' if name == 'mm-bd' else 'Neural Cleanse'})" in stdout
        )
    if "mm-bd" in shipped:
        assert doc["probability"]["mm-bd"] > 0.5
    report = (out / "report.md").read_text()
    assert "Maximum-margin scan (MM-BD" in report and "Trigger scan" in report
    # one scanner only: MM-BD needs no trigger figures
    code, _, err = run_cli(capsys, [*argv[:-3], "--scanner", "mm-bd", "--out", tmp_path / "mm", "--quiet"])
    assert code == 0, err
    doc = json.loads((tmp_path / "mm" / "scan.json").read_text())
    assert "scan" not in doc and doc["mm_bd"]["flagged"] and not (tmp_path / "mm" / "model_triggers.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["scan", "--out", "{out}"], "scan needs --model and --clean-valid"),
        (["scan", "--model", "{model}", "--out", "{out}"], "scan needs --clean-valid"),
        (["scan", "--zoo", "dev", "--model", "{model}", "--out", "{out}"], "--zoo scans the zoo's own models"),
        (["scan", "--model", "{model}", "--clean-valid", "{model}", "--only", "x", "--out", "{out}"], "go with --zoo"),
        (
            ["scan", "--model", "{model}", "--clean-valid", "{model}", "--config", "{model}", "--out", "{out}"],
            "go with --zoo",
        ),
        (["scan", "--population", "{model}", "--config", "{model}", "--out", "{out}"], "drop --config"),
        (["scan", "--zoo", "dev", "--config", "{model}", "--out", "{out}"], "not a valid TOML file"),
        (["scan", "--zoo", "dev", "--calibration", "{model}", "--out", "{out}"], "fits its own calibration"),
        (["scan", "--zoo", "eval", "--calibration", "{model}", "--out", "{out}"], "not a goodnet scanner calibration"),
        (["scan", "--zoo", "eval", "--only", "nothing-like-this", "--out", "{out}"], "no zoo model of part 'eval'"),
        (["scan", "--zoo", "test", "--out", "{out}"], "invalid choice"),
        (["scan", "--zoo", "dev", "--population", "{model}", "--out", "{out}"], "give --zoo or --population"),
        (["scan", "--population", "{model}", "--model", "{model}", "--out", "{out}"], "drop --model"),
        (["scan", "--population", "{model}", "--out", "{out}"], "not a valid TOML file"),
    ],
)
def test_scan_usage_errors_are_one_line_before_any_work(argv, message, tmp_path, capsys):
    model = tmp_path / "b.safetensors"
    model.write_text("not a model")
    argv = [a.format(out=tmp_path / "out", model=model) for a in argv]
    code, _, err = run_cli(capsys, argv)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


def _digits_population(digits_models, folder):
    """The tiny clean and backdoored digits models and their clean data, saved under `folder`."""
    (folder / "models").mkdir(parents=True)
    for kind in ("clean", "backdoored"):
        net = digits_models[kind]
        net.input_range = (0.0, 16.0)
        save_model(net, str(folder / "models" / f"{kind}.safetensors"))
    save_images(str(folder / "clean.h5"), digits_models["valid"])


def test_scan_population_measures_the_scanners_over_a_manifest_of_the_users_models(digits_models, tmp_path, capsys):
    _digits_population(digits_models, tmp_path / "mine")
    manifest = tmp_path / "mine" / "models.toml"
    manifest.write_text(
        'clean_valid = "clean.h5"\n\n'
        '[[model]]\nmodel = "models/backdoored.safetensors"\nbackdoored = true\ntarget = 0\n\n'
        '[[model]]\nname = "reference"\nmodel = "models/clean.safetensors"\nbackdoored = false\n\n'
        '[[model]]\nname = "same | target unknown"\nmodel = "models/backdoored.safetensors"\nbackdoored = true\n'
    )
    out = tmp_path / "pop"
    code, stdout, err = run_cli(
        capsys, ["scan", "--population", manifest, "--scanner", "mm-bd", "--out", out, "--quiet"]
    )
    assert code == 0, err
    doc = json.loads((out / "population.json").read_text())
    mm = doc["measures"]["mm-bd"]
    assert (mm["models"], mm["backdoored"], mm["clean"]) == (3, 2, 1)
    assert mm["roc_auc"] == 1.0 and mm["clean_flagged"] == 0 and mm["backdoored_flagged"] == 2
    assert mm["target_named"] == 1 and mm["single_target_models"] == 1  # the third names no target
    assert [m["name"] for m in doc["models"]] == ["backdoored.safetensors", "reference", "same | target unknown"]
    assert doc["zoo_part"] is None and doc["manifest"]["path"] == str(manifest)
    assert not doc["calibration_fitted_here"] and "calibration.json" not in stdout
    assert [m["clean_valid"]["path"] for m in doc["provenance"]["models"]] == [str(tmp_path / "mine" / "clean.h5")] * 3
    report = (out / "report.md").read_text()
    assert report.startswith("# goodnet: scanners measured on `models.toml`")
    assert "| `same \\| target unknown` | backdoored (no single target given) |" in report
    assert "| MM-BD | 3 (2 / 1) | 1.000" in report and "| MM-BD | 3 (2 / 1) | 1.000" in stdout
    assert (out / "report.html").exists()


@pytest.mark.parametrize(
    "manifest, message",
    [
        (
            '[[model]]\nmodel = "models/clean.safetensors"\nbackdoored = false\nclean_valid = "clean.h5"\n',
            "every model is clean: a scanner is measured on clean and backdoored models together",
        ),
        (
            'clean_valid = "clean.h5"\n[[model]]\nmodel = "models/clean.safetensors"\nbackdored = true\n',
            "model 1: unknown key(s) backdored",
        ),
        (
            'clean_valid = "clean.h5"\n[[model]]\nmodel = "models/gone.safetensors"\nbackdoored = true\n',
            "model 1: model '{folder}/models/gone.safetensors': no such file",
        ),
        ('clean_valid = "clean.h5"\n[[model]]\nmodel = "models/clean.safetensors"\n', "model 1: needs `backdoored`"),
        (
            'clean_valid = "clean.h5"\n[[model]]\nmodel = "models/clean.safetensors"\nbackdoored = "yes"\n',
            "`backdoored` must be true or false",
        ),
        (
            'clean_valid = "clean.h5"\n[[model]]\nmodel = "models/clean.safetensors"\nbackdoored = false\ntarget = 0\n',
            "a clean model has no `target`",
        ),
        ("clean_valid = \n", "not a valid TOML file"),
        (
            'clean_valid = "clean.h5"\narch = "gone.json"\n[[model]]\nmodel = "models/clean.safetensors"\n'
            "backdoored = false\n",
            "model 1: arch '{folder}/gone.json': no such file",
        ),
        (
            'input_scale = 0\nclean_valid = "clean.h5"\n[[model]]\nmodel = "models/clean.safetensors"\n'
            "backdoored = false\n",
            "top level: input scale must be a positive number",
        ),
        ('clean_valid = "clean.h5"\n', "lists no models"),
        (
            'clean_valid = "clean.h5"\n[[model]]\nmodel = "models/clean.safetensors"\nbackdoored = false\n'
            '[[model]]\nmodel = "models/backdoored.safetensors"\nbackdoored = true\ntarget = 10\n',
            "backdoored.safetensors: target 10 is not a label of a model with 10 classes",
        ),
    ],
)
def test_a_bad_population_manifest_is_refused_in_one_line_naming_the_entry(
    manifest, message, digits_models, tmp_path, capsys
):
    _digits_population(digits_models, tmp_path / "mine")
    path = tmp_path / "mine" / "models.toml"
    path.write_text(manifest)
    out = tmp_path / "out"
    # with progress on: one line only, so no model was scanned before the refusal
    code, _, err = run_cli(capsys, ["scan", "--population", path, "--scanner", "mm-bd", "--out", out])
    assert_one_line_error(code, err, message.format(folder=tmp_path / "mine"))
    assert not out.exists()


# ---------------------------------------------------------------- population measures
def test_platt_scaling_fits_the_smoothed_targets():
    # one clean and one backdoored model: the fit reaches the smoothed targets 1/3 and 2/3 exactly
    slope, intercept = fit_platt([5.0, 1.0], [True, False])
    calibration = Calibration("mm-bd", slope, intercept, "test", 1, 1)
    assert calibration.probability(5.0) == pytest.approx(2 / 3, abs=1e-4)
    assert calibration.probability(1.0) == pytest.approx(1 / 3, abs=1e-4)
    # overlapping scores: the fit is the minimum of the smoothed cross-entropy (checked by a
    # derivative-free search of the same objective)
    from scipy.optimize import minimize

    scores = np.array([0.2, 0.5, 1.5, 0.9, 3.0, 4.0, 2.2, 0.4])
    truth = np.array([0, 0, 0, 1, 1, 1, 1, 0], bool)
    t = np.where(truth, 5 / 6, 1 / 6)

    def objective(params):
        p = 1 / (1 + np.exp(params[0] * scores + params[1]))
        return -np.sum(t * np.log(p) + (1 - t) * np.log(1 - p))

    slow = minimize(objective, [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10}).x
    assert fit_platt(scores, truth) == pytest.approx(tuple(slow), abs=1e-3)
    assert fit_platt(scores, truth)[0] < 0  # a larger score is more likely backdoored
    with pytest.raises(DataError, match="both clean and backdoored"):
        fit_platt([1.0, 2.0], [True, True])
    # one score for all: no slope, the smoothed base rate
    slope, intercept = fit_platt([3.0] * 4, [True, False, False, False])
    flat = Calibration("nc", slope, intercept, "test", 1, 3)
    assert slope == 0.0 and flat.probability(300.0) == pytest.approx((2 / 3 + 3 / 5) / 4)
    # far-out scores give 0 or 1, never an overflow; a non-finite score is refused
    steep = Calibration("nc", -5.0, 800.0, "test", 1, 1)
    assert steep.probability(0.0) == 0.0 and steep.probability(300.0) == 1.0
    with pytest.raises(DataError, match="finite"):
        steep.probability(math.nan)


def test_population_measure_counts_roc_auc_false_alarms_and_targets():
    members = [
        Member("a", True, 0),
        Member("b", True, 3),
        Member("c", True, None),  # all-to-all: no single target, out of the target accuracy
        Member("d", False),
        Member("e", False),
        Member("f", False),
    ]
    summaries = [
        ScanSummary("mm-bd", 9.0, True, [0]),
        ScanSummary("mm-bd", 4.0, True, [5]),  # flagged, wrong target
        ScanSummary("mm-bd", 0.5, False, []),
        ScanSummary("mm-bd", 2.0, True, [1]),  # a false alarm
        ScanSummary("mm-bd", 0.3, False, []),
        ScanSummary("mm-bd", 0.1, False, []),
    ]
    calibration = Calibration("mm-bd", -1.0, 2.0, "test", 3, 3)
    m = population_measure(members, summaries, calibration)
    # pairs (backdoored, clean) ranked right: 9 and 4 beat all 3 clean; 0.5 beats 0.3 and 0.1 only
    assert m["roc_auc"] == pytest.approx(8 / 9, abs=1e-4)
    assert (m["clean_flagged"], m["clean_fpr"]) == (1, pytest.approx(1 / 3, abs=1e-4))
    assert (m["backdoored_flagged"], m["tpr"]) == (2, pytest.approx(2 / 3, abs=1e-4))
    assert (m["single_target_models"], m["target_named"], m["target_accuracy"]) == (2, 1, 0.5)
    probabilities = [calibration.probability(s.score) for s in summaries]
    # the calibrated operating point: probability >= 0.5, i.e. score >= 2 here (9, 4 and the clean 2.0)
    assert (m["calibrated_backdoored_flagged"], m["calibrated_clean_flagged"]) == (2, 1)
    assert m["calibrated_clean_fpr"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["cross_entropy"] == pytest.approx(cross_entropy(probabilities, [x.backdoored for x in members]), abs=1e-4)
    # each measure with its 95 % interval: Wilson's for shares (1 of 3: 0.0615-0.7923), a stratified
    # bootstrap's for ROC-AUC
    assert m["clean_fpr_interval"] == [0.0615, 0.7923] and m["calibrated_clean_fpr_interval"] == [0.0615, 0.7923]
    half = proportion_interval(1, 2)
    assert m["target_accuracy_interval"] == [round(half.low / 100, 4), round(half.high / 100, 4)]
    low, high = m["roc_auc_interval"]
    assert low < m["roc_auc"] <= high == 1.0
    assert cross_entropy([0.5] * 4, [True, False, True, False]) == pytest.approx(math.log(2))
    assert cross_entropy([1.0, 0.0], [False, True]) == pytest.approx(-math.log(1e-12))  # clipped, finite


def test_scan_zoo_measures_a_population_and_fits_the_calibration_on_the_development_part(zoo_cache, tmp_path, capsys):
    cell = ZOO_CELL[-1]  # the BadNet compare's tests train, and its clean reference model
    argv = ["scan", "--zoo", "dev", "--only", cell, "clean/small_cnn/0-255/20ep/s0", "--scanner", "mm-bd"]
    code, stdout, err = run_cli(capsys, [*argv, "--cache-dir", zoo_cache, "--out", tmp_path / "pop", "--quiet"])
    assert code == 0, err
    doc = json.loads((tmp_path / "pop" / "population.json").read_text())
    assert [(m["name"], m["backdoored"], m["target"]) for m in doc["models"]] == [
        (f"{cell}/s0", True, 0),
        ("clean/small_cnn/0-255/20ep/s0", False, None),
    ]
    measure = doc["measures"]["mm-bd"]
    assert (measure["models"], measure["backdoored"], measure["clean"]) == (2, 1, 1)
    assert doc["calibration_fitted_here"] and doc["provenance"]["zoo_part"] == "dev"
    calibration = json.loads((tmp_path / "pop" / "calibration.json").read_text())["calibrations"]["mm-bd"]
    assert (calibration["backdoored"], calibration["clean"]) == (1, 1)
    assert "| MM-BD | 2 (1 / 1) |" in stdout and "calibration.json" in stdout
    # the scans are cached beside the zoo's models: a second run scans nothing and agrees
    code, _, err = run_cli(capsys, [*argv, "--cache-dir", zoo_cache, "--out", tmp_path / "pop2", "--quiet"])
    again = json.loads((tmp_path / "pop2" / "population.json").read_text())
    assert code == 0 and [m["mm-bd"] for m in again["models"]] == [m["mm-bd"] for m in doc["models"]]
    # its calibration file is what `scan --calibration` reads
    assert set(load_calibrations(str(tmp_path / "pop" / "calibration.json"))) == {"mm-bd"}
    # every zoo model trained here records the PyTorch thread count it trained with
    manifests = [json.loads(p.read_text()) for p in Path(zoo_cache).glob("seed*/manifest.json")]
    assert manifests and all(isinstance(m["torch_threads"], int) and m["torch_threads"] >= 1 for m in manifests)


def test_roc_auc_interval_is_a_stratified_bootstrap_of_the_auc():
    scores = [9.0, 4.0, 0.5, 2.0, 0.3, 0.1, 0.5]
    truth = [True, True, True, False, False, False, False]
    # the same resamples drawn by hand, each scored by scikit-learn (ties count one half there too)
    rng = np.random.default_rng(0)
    s, y = np.array(scores), np.array(truth)
    pos, neg = s[y], s[~y]
    aucs = []
    for _ in range(300):
        p = pos[rng.integers(0, pos.size, pos.size)]
        n = neg[rng.integers(0, neg.size, neg.size)]
        aucs.append(roc_auc_score([1] * p.size + [0] * n.size, np.concatenate([p, n])))
    expected = np.quantile(aucs, [0.025, 0.975])
    assert roc_auc_interval(scores, truth, resamples=300, seed=0) == pytest.approx(tuple(expected))
    assert roc_auc_interval(scores, truth) == roc_auc_interval(scores, truth)  # a fixed seed: reruns agree
    assert roc_auc_interval([3.0, 2.0, 1.0, 0.0], [True, True, False, False]) == (1.0, 1.0)  # separated
    with pytest.raises(DataError, match="both clean and backdoored"):
        roc_auc_interval([1.0, 2.0], [False, False])
