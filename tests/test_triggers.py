"""The attack zoo's triggers: unchanged on raw pixels, range-independent, and the new attacks'
properties (WaNet's fixed warp, the moving patch, clean-label SIG). No training here."""

import json

import numpy as np
import pytest

from goodnet.errors import GoodnetError
from goodnet.io.data import ImageSet
from goodnet.zoo.attacks import KINDS, Attack
from goodnet.zoo.triggers import (
    BlendTrigger,
    MovingPatchTrigger,
    PatchTrigger,
    SinusoidTrigger,
    SunglassesTrigger,
    WarpTrigger,
)

RANGES = [(0.0, 255.0), (0.0, 1.0)]
TRIGGERS = [
    PatchTrigger(),
    BlendTrigger(),
    SunglassesTrigger(),
    WarpTrigger(),
    SinusoidTrigger(),
    MovingPatchTrigger(),
    MovingPatchTrigger(pattern="checker"),
]


@pytest.fixture(scope="module")
def raw():
    """Digit-like raw pixels: mostly 0, some 255, some in between (extremes included)."""
    rng = np.random.default_rng(7)
    x = rng.choice([0.0, 255.0], size=(40, 1, 28, 28), p=[0.8, 0.2])
    x[:, :, 8:20, 8:20] = rng.uniform(0, 255, (40, 1, 12, 12))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def labelled(raw):
    return ImageSet(raw, np.arange(len(raw), dtype=np.int64) % 10, "digits")


def test_kinds_keep_the_old_ones_first():
    assert KINDS == ("patch", "blended", "all-to-all", "sunglasses", "wanet", "sig", "moving-patch")
    for kind in KINDS:
        json.dumps(Attack(kind).describe())  # JSON-ready (part of the cache fingerprint)


def test_patch_on_raw_pixels_is_unchanged(raw):
    expected = raw.copy()
    expected[:, :, 23:27, 23:27] = 255.0  # 4x4, one pixel from the bottom-right corner
    np.testing.assert_array_equal(PatchTrigger().apply(raw), expected)
    np.testing.assert_array_equal(PatchTrigger().apply(raw, (0.0, 255.0)), expected)
    assert PatchTrigger().region(28, 28) == (slice(23, 27), slice(23, 27))


def test_blend_on_raw_pixels_is_unchanged(raw):
    pattern = np.random.default_rng(12345).uniform(0, 255, raw.shape[1:]).astype(np.float32)
    expected = (0.9 * raw + 0.1 * pattern[None]).astype(np.float32)
    out = BlendTrigger().apply(raw)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(BlendTrigger().pattern(raw.shape[1:]), pattern)


def test_sunglasses_on_raw_pixels_are_unchanged(raw):
    mask = np.zeros((28, 28), bool)
    mask[2:6, 6:12] = mask[2:6, 16:22] = True  # the lenses
    mask[3, 12:16] = True  # the bridge
    expected = raw.copy()
    expected[:, :, mask] = 255.0
    np.testing.assert_array_equal(SunglassesTrigger().apply(raw), expected)
    assert mask.sum() == 52


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: "-".join(map(str, t.describe().values())))
@pytest.mark.parametrize("value_range", RANGES, ids=["raw", "unit"])
def test_output_stays_in_range(trigger, value_range, raw):
    low, high = value_range
    x = (raw / 255.0 * (high - low) + low).astype(np.float32)
    out = trigger.apply(x, value_range, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= low and out.max() <= high
    assert (out != x).any()


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: "-".join(map(str, t.describe().values())))
def test_unit_range_is_raw_range_scaled(trigger, raw):
    """On x/255 with range (0, 1) a trigger gives its raw-pixel result divided by 255 (the moving
    patch too, given generators seeded alike)."""
    unit = trigger.apply(raw / np.float32(255), (0.0, 1.0), np.random.default_rng(3))
    scaled = trigger.apply(raw, (0.0, 255.0), np.random.default_rng(3)) / np.float32(255)
    np.testing.assert_allclose(unit, scaled, atol=1e-5, rtol=0)


def test_solid_levels_are_relative_to_the_range(raw):
    x = np.full((2, 1, 28, 28), -1.0, np.float32)
    out = PatchTrigger(level=0.5).apply(x, (-1.0, 1.0))
    assert (out[:, :, 23:27, 23:27] == 0.0).all() and (out == 0.0).sum() == 2 * 16
    assert (SunglassesTrigger().apply(x, (-1.0, 1.0)) == 1.0).sum() == 2 * 52


def test_wanet_is_a_fixed_warp_that_changes_the_image(raw):
    trigger = WarpTrigger()
    first = trigger.apply(raw)
    np.testing.assert_array_equal(first, WarpTrigger().apply(raw))  # same pattern, any call
    np.testing.assert_array_equal(first[:5], trigger.apply(raw[:5], rng=np.random.default_rng(9)))
    assert np.abs(first - raw).mean() > 5  # in raw units
    grid = trigger.grid(28, 28)
    assert grid.shape == (28, 28, 2) and np.abs(grid).max() <= 1.0
    assert not np.allclose(WarpTrigger(seed=1).grid(28, 28), grid)
    # an image constant everywhere stays constant: a resampling, nothing added
    flat = np.full((1, 3, 28, 28), 100.0, np.float32)
    np.testing.assert_allclose(trigger.apply(flat), flat, atol=1e-3)


def test_moving_patch_moves_yet_is_reproducible():
    trigger = MovingPatchTrigger()
    x = np.zeros((200, 1, 28, 28), np.float32)
    out = trigger.apply(x, (0.0, 255.0), np.random.default_rng(5))
    corners = []
    for image in out[:, 0]:
        rows, cols = np.nonzero(image)
        assert len(rows) == 16 and (image[rows, cols] == 255.0).all()
        assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3  # one 4x4 square
        corners.append((rows.min(), cols.min()))
    corners = np.array(corners)
    assert len({tuple(c) for c in corners}) > 150  # different places for different images
    assert corners.min() == 0 and corners.max() == 24  # over the whole image, edges included
    np.testing.assert_array_equal(out, trigger.apply(x, (0.0, 255.0), np.random.default_rng(5)))
    assert not np.array_equal(out, trigger.apply(x, (0.0, 255.0), np.random.default_rng(6)))
    np.testing.assert_array_equal(trigger.apply(x), trigger.apply(x))  # seeded default

    checker = MovingPatchTrigger(pattern="checker").block((0.0, 1.0))
    np.testing.assert_array_equal(checker, np.indices((4, 4)).sum(axis=0) % 2 == 0)
    with pytest.raises(ValueError, match="pattern"):
        MovingPatchTrigger(pattern="stripes")


def test_moving_patch_training_poisoning_uses_the_given_generator(labelled):
    attack = Attack("moving-patch", target=0)
    a = attack.poison_training_set(labelled.x, labelled.y, 0.25, 10, np.random.default_rng(1))
    b = attack.poison_training_set(labelled.x, labelled.y, 0.25, 10, np.random.default_rng(1))
    c = attack.poison_training_set(labelled.x, labelled.y, 0.25, 10, np.random.default_rng(2))
    for got, again in zip(a, b):
        np.testing.assert_array_equal(got, again)
    assert not np.array_equal(a[0], c[0])
    assert (labelled.y[a[2]] != 0).all() and (a[1][a[2]] == 0).all()


def test_sig_signal_and_clean_label_poisoning(labelled):
    j = np.arange(28)
    expected = np.clip(labelled.x + 20 * np.sin(2 * np.pi * j * 6 / 28), 0, 255).astype(np.float32)
    np.testing.assert_allclose(SinusoidTrigger().apply(labelled.x), expected, atol=1e-4)

    assert not any(Attack(kind).clean_label for kind in KINDS)  # the zoo's sig is poison-label
    with pytest.raises(GoodnetError, match="clean-label"):
        Attack("all-to-all", clean_label=True)
    attack = Attack("sig", target=3, clean_label=True)  # the paper's form
    x, y, chosen = attack.poison_training_set(labelled.x, labelled.y, 0.1, 10, np.random.default_rng(1))
    assert len(chosen) == 4 and (labelled.y[chosen] == 3).all()  # target-class images only
    np.testing.assert_array_equal(y, labelled.y)  # labels unchanged
    untouched = np.setdiff1d(np.arange(len(y)), chosen)
    np.testing.assert_array_equal(x[untouched], labelled.x[untouched])
    np.testing.assert_array_equal(x[chosen], attack.trigger.apply(labelled.x[chosen]))
    with pytest.raises(GoodnetError, match="target-class"):  # 4 images of class 3 in 40
        attack.poison_training_set(labelled.x, labelled.y, 0.2, 10, np.random.default_rng(1))

    poisoned = attack.poisoned_set(labelled, 10, "p")  # evaluation: every non-target image
    assert len(poisoned.y) == (labelled.y != 3).sum() and (poisoned.y == 3).all()

    x, y, chosen = Attack("sig", target=3).poison_training_set(
        labelled.x, labelled.y, 0.1, 10, np.random.default_rng(1)
    )
    assert (labelled.y[chosen] != 3).all() and (y[chosen] == 3).all()  # poison-label: relabelled


@pytest.mark.parametrize("kind", KINDS)
def test_attacks_pass_the_range_through(kind, labelled):
    attack = Attack(kind, target=0)
    unit = ImageSet(labelled.x / np.float32(255), labelled.y, "unit")
    poisoned = attack.poisoned_set(unit, 10, "p", (0.0, 1.0))
    raw = attack.poisoned_set(labelled, 10, "p")
    np.testing.assert_allclose(poisoned.x, raw.x / np.float32(255), atol=1e-5, rtol=0)
    x, y, chosen = attack.poison_training_set(unit.x, unit.y, 0.1, 10, np.random.default_rng(1), (0.0, 1.0))
    assert x.min() >= 0 and x.max() <= 1 and (x[chosen] != unit.x[chosen]).any()
