"""The two stopping rules on crafted clean-validation curves."""

import pytest

from goodnet.pruning.selection import select


def _sel(correct, total, xs, drop="absolute"):
    return {(s.x, s.rule): s for s in select(correct, total, xs, drop)}


def test_drop_exactly_x_counts_as_crossing():
    # 1000 inputs: 986 -> 966 correct is a drop of exactly 2.0 pp (floats would say 1.9999...).
    s = _sel([986, 980, 970, 966, 900], 1000, [2])
    assert s[(2, "crossing")].channels_pruned == 3
    assert s[(2, "within")].channels_pruned == 2


def test_float_prone_values_are_exact():
    # 98.65 % -> 96.65 %: 2 pp exactly, with N = 2000.
    s = _sel([1973, 1940, 1933], 2000, [2])
    assert s[(2, "crossing")].channels_pruned == 2


def test_ties_and_plateaus_take_the_first_step():
    s = _sel([100, 100, 96, 96, 96, 90], 100, [4])
    assert s[(4, "crossing")].channels_pruned == 2
    assert s[(4, "within")].channels_pruned == 1


def test_threshold_never_reached():
    s = _sel([100, 99, 99, 98], 100, [2, 30])
    assert s[(2, "crossing")].channels_pruned == 3
    assert s[(30, "crossing")].channels_pruned is None and not s[(30, "crossing")].reached
    # Nothing crosses 30, so every model is within budget: the last one (all pruned) is kept.
    assert s[(30, "within")].channels_pruned == 3


def test_two_thresholds_crossed_by_one_channel():
    s = _sel([100, 99, 94, 80], 100, [2, 4, 10])
    assert s[(2, "crossing")].channels_pruned == 2
    assert s[(4, "crossing")].channels_pruned == 2
    assert s[(2, "within")].channels_pruned == s[(4, "within")].channels_pruned == 1
    assert s[(10, "crossing")].channels_pruned == 3


def test_crossing_at_first_step_keeps_original_within():
    s = _sel([100, 50], 100, [10])
    assert s[(10, "crossing")].channels_pruned == 1
    assert s[(10, "within")].channels_pruned == 0


def test_accuracy_going_up_is_not_a_drop():
    s = _sel([90, 95, 92, 87], 100, [3])
    assert s[(3, "crossing")].channels_pruned == 3


def test_relative_drop():
    # B has 50 of 100 correct: losing 2 is a 4 % relative drop but only 2 pp absolute.
    assert _sel([50, 49, 48], 100, [4], "relative")[(4, "crossing")].channels_pruned == 2
    assert _sel([50, 49, 48], 100, [4], "absolute")[(4, "crossing")].channels_pruned is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        select([1, 1], 1, [0])
    with pytest.raises(ValueError):
        select([1, 1], 1, [2], rules=["median"])
