"""Backdoor triggers, applied to images (N, C, H, W) in any pixel range.

Every trigger has `apply(x, value_range=(0.0, 255.0), rng=None)`: `x` is float32 data whose
pixels lie in `value_range = (low, high)`, and the result lies there too. Levels are relative to
the range, so one trigger works on raw 0..255 pixels and on 0..1 data alike: a solid pixel at
`level` is low + level * (high - low) (level 1.0: `high`), a blend pattern is drawn in [low, high],
and an additive signal given in 0..255 units is scaled by (high - low) / 255 and the result clipped
to [low, high]. The default range (0, 255) is raw 8-bit pixels, as in the demo's data. `rng` is
used only by triggers that draw something per image (the moving patch); the others ignore it.
`describe()` is JSON-ready (it is part of the zoo cache's fingerprint).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ValueRange = tuple[float, float]
RAW_RANGE: ValueRange = (0.0, 255.0)
REFERENCE_SIDE = 28  # the triggers' pixel sizes are set for 28 x 28 images (the zoo's digits)


def scaled_pixels(trigger, height: int, width: int):
    """`trigger` with its sizes in pixels (its PIXEL_FIELDS) scaled from 28 x 28 images to images of
    `height` x `width`, by the shorter side (at least 1 pixel each; a margin may stay 0)."""
    from dataclasses import replace

    factor = min(height, width) / REFERENCE_SIDE
    changes = {}
    for name in getattr(trigger, "PIXEL_FIELDS", ()):
        value = getattr(trigger, name)
        changes[name] = max(0 if name in ("margin", "top") else 1, int(round(value * factor)))
    return replace(trigger, **changes) if changes else trigger


def _bounds(value_range: ValueRange) -> tuple[float, float]:
    low, high = (float(v) for v in value_range)
    if not low < high:
        raise ValueError(f"value range {value_range} is empty (low must be below high)")
    return low, high


def _level(level: float, value_range: ValueRange) -> float:
    """The pixel value at relative `level` of the range (0: low, 1: high)."""
    low, high = _bounds(value_range)
    return low + level * (high - low)


def _clip(x: np.ndarray, value_range: ValueRange, dtype) -> np.ndarray:
    low, high = _bounds(value_range)
    return np.clip(x, low, high).astype(dtype, copy=False)


@dataclass(frozen=True)
class PatchTrigger:
    """A solid square at relative `level` (1.0: the range's top, white), `margin` pixels from the
    bottom-right corner (BadNets)."""

    size: int = 4
    level: float = 1.0
    margin: int = 1
    PIXEL_FIELDS = ("size", "margin")

    def fits(self, height: int, width: int) -> str | None:
        if self.size + self.margin > min(height, width):
            return f"a {self.size} x {self.size} patch {self.margin} pixel(s) from the corner"
        return None

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        bottom, right = height - self.margin, width - self.margin
        return slice(bottom - self.size, bottom), slice(right - self.size, right)

    def apply(
        self, x: np.ndarray, value_range: ValueRange = RAW_RANGE, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        out = x.copy()
        rows, cols = self.region(x.shape[2], x.shape[3])
        out[:, :, rows, cols] = _level(self.level, value_range)
        return out

    def describe(self) -> dict:
        return {"kind": "patch", **asdict(self)}


@dataclass(frozen=True)
class BlendTrigger:
    """A fixed random full-image pattern, uniform over the value range, mixed in at `ratio`
    (Chen et al. 2017's blended attack)."""

    ratio: float = 0.1
    pattern_seed: int = 12345

    def pattern(self, shape: tuple[int, ...], value_range: ValueRange = RAW_RANGE) -> np.ndarray:
        low, high = _bounds(value_range)
        return np.random.default_rng(self.pattern_seed).uniform(low, high, shape).astype(np.float32)

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        return slice(0, height), slice(0, width)

    def apply(
        self, x: np.ndarray, value_range: ValueRange = RAW_RANGE, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        mixed = (1 - self.ratio) * x + self.ratio * self.pattern(x.shape[1:], value_range)[None]
        return _clip(mixed, value_range, x.dtype)  # a convex mix: clipping only catches rounding

    def describe(self) -> dict:
        return {"kind": "blended", **asdict(self)}


@dataclass(frozen=True)
class SunglassesTrigger:
    """A larger occluding shape near the top: two solid lenses and a bridge, like the lab's
    sunglasses (for 28x28 digits: lenses 4x6 at rows 2-5, 52 pixels, over three times the patch).
    It sits near the top so that it covers little of the digit: lower down it would hide the digit
    even from a clean model, and no repair could tell a surviving backdoor from plain misreading.
    Solid at relative `level`."""

    level: float = 1.0
    top: int = 2
    lens_height: int = 4
    lens_width: int = 6
    gap: int = 4
    PIXEL_FIELDS = ("top", "lens_height", "lens_width", "gap")

    def fits(self, height: int, width: int) -> str | None:
        if self.top + self.lens_height > height or 2 * self.lens_width + self.gap > width:
            return (
                f"sunglasses {2 * self.lens_width + self.gap} pixels wide and {self.lens_height} high, "
                f"{self.top} from the top"
            )
        return None

    def mask(self, height: int, width: int) -> np.ndarray:
        m = np.zeros((height, width), dtype=bool)
        left = (width - 2 * self.lens_width - self.gap) // 2
        rows = slice(self.top, self.top + self.lens_height)
        m[rows, left : left + self.lens_width] = True
        m[rows, left + self.lens_width + self.gap : left + 2 * self.lens_width + self.gap] = True
        m[self.top + 1, left + self.lens_width : left + self.lens_width + self.gap] = True  # bridge
        return m

    def apply(
        self, x: np.ndarray, value_range: ValueRange = RAW_RANGE, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        out = x.copy()
        out[:, :, self.mask(x.shape[2], x.shape[3])] = _level(self.level, value_range)
        return out

    def describe(self) -> dict:
        return {"kind": "sunglasses", **asdict(self)}


@dataclass(frozen=True)
class WarpTrigger:
    """WaNet (Nguyen & Tran, ICLR 2021): a fixed, smooth, nearly invisible warp of the whole image.

    A `grid_size` x `grid_size` grid of random (x, y) offsets in [-1, 1] (seeded by `seed`) is
    divided by its mean absolute value, upsampled bicubically to H x W, scaled by
    `strength` / H and added to the identity sampling grid (normalised [-1, 1] coordinates); the
    grid is clamped to [-1, 1] and the image resampled bilinearly (grid_sample, align_corners=True).
    Resampling is a convex mix of neighbouring pixels, so it is range-independent.

    Left out: the paper's "noise mode" (training images given random warps and their correct
    labels, to keep the backdoor from firing on any warp); it is a training-time regulariser of the
    attacker's, not part of the trigger. Strength 1.0 (about 0.4 pixel of mean displacement on
    28x28, 1 at most) is twice the paper's 0.5, so that a model trained with random-shift
    augmentation still learns the warp (chosen on the zoo's development seed)."""

    strength: float = 1.0
    grid_size: int = 4
    seed: int = 2021

    def offsets(self, height: int, width: int) -> np.ndarray:
        """The (H, W, 2) offset field in normalised coordinates ((x, y) order, as grid_sample wants)."""
        import torch
        import torch.nn.functional as F

        k = self.grid_size
        coarse = np.random.default_rng(self.seed).uniform(-1.0, 1.0, (1, 2, k, k))
        coarse = coarse / np.abs(coarse).mean()
        fine = (
            F.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bicubic", align_corners=True)[0]
            .permute(1, 2, 0)
            .numpy()
        )
        return self.strength * fine / height

    def grid(self, height: int, width: int) -> np.ndarray:
        """The (H, W, 2) sampling grid: identity plus offsets, clamped to [-1, 1]."""
        ys, xs = np.meshgrid(np.linspace(-1.0, 1.0, height), np.linspace(-1.0, 1.0, width), indexing="ij")
        identity = np.stack([xs, ys], axis=-1)
        return np.clip(identity + self.offsets(height, width), -1.0, 1.0)

    def apply(
        self, x: np.ndarray, value_range: ValueRange = RAW_RANGE, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        n, _, height, width = x.shape
        grid = torch.from_numpy(self.grid(height, width)).to(torch.float32)[None].expand(n, -1, -1, -1)
        with torch.no_grad():
            warped = F.grid_sample(
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                grid,
                mode="bilinear",
                padding_mode="border",
                align_corners=True,
            ).numpy()
        return _clip(warped, value_range, x.dtype)

    def describe(self) -> dict:
        return {"kind": "wanet", **asdict(self)}


@dataclass(frozen=True)
class SinusoidTrigger:
    """SIG (Barni, Kallas & Tondi, ICIP 2019): a horizontal sinusoid
    v(i, j) = delta * sin(2 pi j frequency / W) added to every channel and clipped to the range.
    `delta` is in 0..255 units (scaled by (high - low) / 255 for other ranges)."""

    delta: float = 20.0
    frequency: float = 6.0

    def signal(self, width: int, value_range: ValueRange = RAW_RANGE) -> np.ndarray:
        low, high = _bounds(value_range)
        columns = np.arange(width, dtype=np.float64)
        return self.delta * (high - low) / 255.0 * np.sin(2 * np.pi * columns * self.frequency / width)

    def apply(
        self, x: np.ndarray, value_range: ValueRange = RAW_RANGE, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        return _clip(x + self.signal(x.shape[3], value_range)[None, None, None, :], value_range, x.dtype)

    def describe(self) -> dict:
        return {"kind": "sig", **asdict(self)}


@dataclass(frozen=True)
class MovingPatchTrigger:
    """The demo's solid square (same size and level), at a position drawn per image uniformly over
    the whole image, so the backdoor cannot live in one spatial location. Positions come from the
    `rng` given to apply, or from a generator seeded with `seed` when none is.

    pattern "checker": the square is a checkerboard of `level` and the range's bottom (top-left at
    `level`) instead of solid. The zoo uses the checkerboard: on digits a solid white blob anywhere
    looks like a piece of stroke, so a BadNet learns it poorly, while a checkerboard looks like no
    stroke."""

    size: int = 4
    level: float = 1.0
    seed: int = 4321
    pattern: str = "solid"
    PIXEL_FIELDS = ("size",)

    def fits(self, height: int, width: int) -> str | None:
        return f"a {self.size} x {self.size} patch" if self.size > min(height, width) else None

    def __post_init__(self):
        if self.pattern not in ("solid", "checker"):
            raise ValueError(f"unknown moving-patch pattern '{self.pattern}' (known: solid, checker)")

    def block(self, value_range: ValueRange = RAW_RANGE) -> np.ndarray:
        """The (size, size) square's pixel values."""
        on = np.full((self.size, self.size), _level(self.level, value_range), np.float32)
        if self.pattern == "checker":
            on[np.add.outer(np.arange(self.size), np.arange(self.size)) % 2 == 1] = _bounds(value_range)[0]
        return on

    def positions(self, n: int, height: int, width: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """(n, 2) top-left corners (row, column), each uniform over every place the patch fits."""
        if self.size > min(height, width):
            raise ValueError(f"a {self.size}x{self.size} patch does not fit a {height}x{width} image")
        rng = np.random.default_rng(self.seed) if rng is None else rng
        return np.stack([rng.integers(0, height - self.size + 1, n), rng.integers(0, width - self.size + 1, n)], axis=1)

    def apply(
        self, x: np.ndarray, value_range: ValueRange = RAW_RANGE, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        out = x.copy()
        block = self.block(value_range)
        for i, (row, col) in enumerate(self.positions(len(x), x.shape[2], x.shape[3], rng)):
            out[i, :, row : row + self.size, col : col + self.size] = block
        return out

    def describe(self) -> dict:
        return {"kind": "moving-patch", **asdict(self)}
