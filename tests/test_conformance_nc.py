"""Neural Cleanse conforms to its authors' code (github.com/bolunwang/backdoor: visualizer.py,
mad_outlier_detection.py) and BackdoorBench's unlearning (defense/nc.py): each defining computation
on a tiny case, against numbers worked out by hand."""

import numpy as np
import pytest
import torch
from torch import nn

import goodnet.inspection.trigger_reversal as tr
from goodnet.io.data import ImageSet
from goodnet.repairs import RepairData
from goodnet.repairs.neural_cleanse import NeuralCleanse, unlearning_set


def test_nc_anomaly_index_is_median_distance_over_1_4826_mad_and_flags_only_small_side_above_2():
    norms = [10.0, 12, 14, 16, 18, 20, 2, 40]
    # by hand: median 15; |x - 15| = 5 3 1 1 3 5 13 25, their median 4; MAD x 1.4826 = 5.9304
    spread = 1.4826 * 4
    expected = [(15 - 10) / spread, (15 - 12) / spread, (15 - 14) / spread, 0, 0, 0, 13 / spread, 0]
    assert np.allclose(tr.anomaly_indices(norms), expected)
    scan = tr.TriggerScan(
        list(range(8)),
        np.array(norms),
        np.zeros(8),
        np.zeros(8, bool),
        np.zeros((8, 1, 1)),
        np.zeros((8, 1, 1, 1)),
        tr.anomaly_indices(norms),
    )
    # label 6 (index 13 / 5.93 = 2.19) is flagged; label 7 (25 above the median) never is
    assert scan.suspects == [6]


def test_nc_a_label_whose_attack_never_succeeded_is_flagged_by_its_last_mask_norm_as_the_reference():
    norms = np.array([10.0, 12, 14, 16, 18, 20, 2, 40])
    reached = np.array([True] * 6 + [False, True])  # label 6 never reached 99 %: its last mask counts
    scan = tr.TriggerScan(
        list(range(8)),
        norms,
        np.zeros(8),
        reached,
        np.zeros((8, 1, 1)),
        np.zeros((8, 1, 1, 1)),
        tr.anomaly_indices(norms),
    )
    assert scan.suspects == [6]


def _run(schedule, sequence):
    """Feed (success, norm) checks; return the cost after each, and (record, stop) of each."""
    costs, results = [], []
    for success, norm in sequence:
        results.append(schedule.check(success, norm))
        costs.append(schedule.cost)
        if results[-1][1]:
            break
    return costs, results


def test_nc_lambda_starts_at_0_is_set_after_patience_successes_then_doubles_and_falls_by_2_to_the_1_5():
    s = tr.CostSchedule()  # the reference's defaults
    assert (s.init_cost, s.patience, s.cost_multiplier, s.success_threshold) == (1e-3, 5, 2.0, 0.99)
    assert s.cost == 0.0
    # 4 failures (lambda stays 0), 5 successes (lambda set to 1e-3 on the 5th), 5 more, 5 failures, 1 success
    sequence = [(0.5, 100.0)] * 4 + [(1.0, 90.0)] * 5 + [(0.995, 80.0)] * 5 + [(0.98, 70.0)] * 5 + [(1.0, 60.0)]
    costs, results = _run(s, sequence)
    # by hand: the check that sets lambda also counts as the first success towards doubling it, so the
    # doubling comes 4 checks later (check 13), and the 5th failure in a row (check 19) lowers it
    hand = [0.0] * 8 + [1e-3] * 4 + [2e-3] * 6 + [2e-3 / 2**1.5] * 2
    assert costs == pytest.approx(hand, rel=1e-12)
    # the record: only succeeding checks with a smaller mean norm than the best so far
    records = [r for r, _ in results]
    assert records == [False] * 4 + [True] + [False] * 4 + [True] + [False] * 4 + [False] * 5 + [True]
    assert s.best == 60.0 and s.went_up and s.went_down


def test_nc_success_counter_during_lambda_0_restarts_on_a_failure():
    s = tr.CostSchedule()
    costs, _ = _run(s, [(1.0, 5.0)] * 4 + [(0.9, 5.0)] + [(1.0, 5.0)] * 4)
    assert costs == [0.0] * 9  # 4 + 4 successes, never 5 in a row
    costs, _ = _run(s, [(1.0, 5.0)])
    assert costs == [1e-3]


def test_nc_early_stop_after_25_checks_without_a_better_norm_once_lambda_went_up_and_down():
    s = tr.CostSchedule()
    seq = [(1.0, 50.0)] * 10 + [(0.0, 50.0)] * 5  # lambda set (check 5), up (check 9), down (check 15)
    costs, results = _run(s, seq)
    assert s.went_up and s.went_down and not any(stop for _, stop in results)
    # the norm was recorded at check 1 and never improved: checks 2..15 are 14 stale checks already,
    # whatever lambda did; the 25th stale check (11 checks later) stops the label
    costs, results = _run(s, [(1.0, 50.0)] * 40)
    stops = [stop for _, stop in results]
    assert stops[-1] and len(stops) == 11 and not any(stops[:-1])
    assert costs[-1] == costs[-2]  # a stopping check changes lambda no more


def test_nc_mask_is_tanh_over_2_plus_half_and_pattern_spans_the_value_range():
    a = torch.tensor([[-3.0, -0.4], [0.0, 2.5]])
    b = torch.tensor([[[-1.0, 0.3], [4.0, -6.0]]])
    mask, pattern = tr.trigger_from_parameters(a, b, (-1.0, 255.0))
    assert torch.allclose(mask, torch.tanh(a) / 2 + 0.5)
    assert torch.allclose(pattern, -1.0 + 256.0 * (torch.tanh(b) / 2 + 0.5))
    x = torch.full((1, 2, 2), 7.0)
    assert torch.allclose(tr.stamp(x, mask, pattern), (1 - mask) * x + mask * pattern)
    # the initial draw goes through tanh's inverse: squashing it gives the draw back
    draw = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(tr._squash(tr._atanh(draw)), draw, atol=1e-6)


def test_nc_scan_defaults_are_the_reference_settings():
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(tr.reverse_triggers).parameters.items()}
    assert (
        defaults["lr"],
        defaults["batch_size"],
        defaults["init_cost"],
        defaults["success_threshold"],
        defaults["schedule"],
    ) == (0.1, 32, 1e-3, 0.99, "reference")
    assert tr.SCHEDULES["reference"] == {
        "start_cost_at_zero": True,
        "patience": 5,
        "cost_multiplier": 2.0,
        "early_stop_threshold": 1.0,
        "early_stop_patience": 25,
        "only_reached": False,
    }


def test_nc_unlearning_replaces_20_percent_of_the_images_by_stamped_copies_with_true_labels():
    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 1, 2, 2)
    y = np.arange(10) % 3
    mask = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    pattern = np.full((1, 2, 2), -5.0, np.float32)
    nx, ny, stamped = unlearning_set(x, y, mask[None], pattern[None], 0.2, seed=0)
    assert len(nx) == 10 and len(stamped) == 2  # replaced, not added
    rest = [i for i in range(10) if i not in stamped]
    originals = {row.tobytes(): label for row, label in zip(x, y)}
    assert all(originals[nx[i].tobytes()] == ny[i] for i in rest)  # 8 untouched images
    for i in stamped:  # the top-left pixel set to the pattern, the rest of the image kept, true label
        assert nx[i, 0, 0, 0] == -5.0
        match = [j for j in range(10) if np.array_equal(x[j, 0].flat[1:], nx[i, 0].flat[1:])]
        assert len(match) == 1 and y[match[0]] == ny[i]


class _Target(nn.Module):
    """3 labels; a bright top-left pixel sends everything to label 2."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        s = x.flatten(1)
        return self.w * torch.stack([s[:, 1], s[:, 2], 20 * s[:, 0] ** 2], dim=1)


def test_nc_nothing_flagged_hands_b_back_with_a_notice(monkeypatch):
    model = _Target()
    images = ImageSet(np.random.default_rng(0).uniform(0, 0.2, (12, 1, 2, 2)).astype(np.float32), np.arange(12) % 3)
    norms = np.array([3.0, 3.1, 2.9])
    fake = tr.TriggerScan(
        [0, 1, 2],
        norms,
        np.zeros(3),
        np.ones(3, bool),
        np.zeros((3, 2, 2), np.float32),
        np.zeros((3, 1, 2, 2), np.float32),
        tr.anomaly_indices(norms),
    )
    monkeypatch.setattr(NeuralCleanse, "scan", lambda self, model, data, progress=False: fake)
    outcome = NeuralCleanse(epochs=1).repair(model, RepairData(images))
    assert outcome.models[0].model is model and outcome.notice.startswith("nc: the trigger scan flagged no label")
    assert outcome.notice.endswith("; model unchanged")
