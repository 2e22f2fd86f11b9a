"""Labelled image sets in the lab's formats, checked before any model sees them.

The lab stores images as HDF5 with `data` (N, C, H, W) and `label` (N,); we also read `.npz` files
with `x` and `y`, and single PNG/JPEG images (for `goodnet classify`). Each labelled-set format is
one reader in DATA_READERS (`register_data_reader`, see goodnet.io.readers), chosen by suffix and
content; every set then passes the same checks. Values reach the model as stored (the lab's model
takes raw 0..255 pixels) unless an explicit divisor is given.
"""

from __future__ import annotations

import numbers
import os
import zipfile
import zlib
from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import DataError, OutputError, SettingsError, shown_path
from .file_checks import check_input_file, check_validation_classes
from .readers import HDF5_MAGIC, ZIP_MAGIC, Reader, ReaderRegistry

HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
# The data sets a defense can be given, by role. Only clean validation data may decide anything.
ROLES = ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")


@dataclass(frozen=True)
class ImageSet:
    """Images (float32, N x C x H x W) with one integer label each."""

    x: np.ndarray
    y: np.ndarray
    name: str = "data"
    source: dict | None = None  # what the reader found: its format, image shape, layout, class names

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def value_range(self) -> tuple[float, float]:
        """(lowest, highest) value in the images."""
        return float(self.x.min()), float(self.x.max())


READ_CHUNK = 4096  # images per HDF5 read: a large file is read into one float32 array piece by piece


def available_memory() -> int | None:
    """Bytes of memory this machine can give now (None where the platform does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_declared_size(path: str, what: str, shape: tuple[int, ...], bytes_per_value: float = 4) -> None:
    """Refuse to read an array whose declared size (as float32, or `bytes_per_value` per value
    where reading makes copies) exceeds the memory available, before allocating it: a 2 KB file may
    declare 20 million images."""
    need = bytes_per_value * float(np.prod([int(d) for d in shape], dtype=np.float64))
    free = available_memory()
    if free is not None and need > free:
        raise DataError(
            f"{shown_path(path)}: the '{what}' array declares shape {tuple(int(d) for d in shape)}, "
            f"{need / 2**30:.1f} GiB to read, more than the {free / 2**30:.1f} GiB of memory "
            f"available"
        )


def refuse_outside_storage(dataset: h5py.Dataset, where: str, error=None) -> None:
    """Refuse an HDF5 dataset whose values live in other files (external storage, a virtual
    dataset): reading it would pull in whatever files it names from this machine."""
    if dataset.external or dataset.is_virtual:
        raise (error or DataError)(
            f"{where}: its values are stored in other files "
            f"({'a virtual dataset' if dataset.is_virtual else 'external storage'}); "
            f"goodnet reads only what is inside the file"
        )


def _read_dataset(path: str, key: str, dataset: h5py.Dataset) -> np.ndarray:
    refuse_outside_storage(dataset, f"{shown_path(path)}: '{key}'")
    check_declared_size(path, key, dataset.shape)
    if dataset.dtype.kind not in "biuf" or dataset.ndim == 0 or dataset.shape[0] <= READ_CHUNK:
        return np.asarray(dataset[()])  # small, or not numbers (refused with its dtype by the caller)
    out = np.empty(dataset.shape, dtype=np.float32)
    for start in range(0, dataset.shape[0], READ_CHUNK):
        out[start : start + READ_CHUNK] = dataset[start : start + READ_CHUNK]
    return out


DATA_READERS = ReaderRegistry("data", DataError)
register_data_reader = DATA_READERS.register  # decorator: a function path -> (images, labels)
unregister_data_reader = DATA_READERS.unregister


def data_readers() -> tuple[Reader, ...]:
    """The registered data readers, in the order a lookup tries them (see goodnet.io.readers)."""
    return DATA_READERS.readers()


@register_data_reader("hdf5", suffixes=HDF5_SUFFIXES, magic=(HDF5_MAGIC,), describe=".h5/.hdf5 with data/label")
def read_hdf5_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The lab's HDF5 layout: datasets `data` (N, C, H, W) and `label` (N,)."""
    try:
        with h5py.File(path, "r") as f:
            for key in ("data", "label"):
                if key in f and isinstance(f.get(key, getlink=True), h5py.ExternalLink):
                    raise DataError(
                        f"{shown_path(path)}: '{key}' is a link to another file; goodnet reads only what is "
                        f"inside the file"
                    )
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise DataError(
                        f"{shown_path(path)}: HDF5 file has no '{key}' dataset "
                        f"(found: {', '.join(sorted(f.keys())) or 'nothing'})"
                    )
            return _read_dataset(path, "data", f["data"]), _read_dataset(path, "label", f["label"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{shown_path(path)}: not a readable HDF5 file ({exc})") from None


@register_data_reader("npz", suffixes=(".npz",), magic=(ZIP_MAGIC,), describe=".npz with x/y")
def read_npz_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A NumPy .npz archive with arrays `x` (N, C, H, W) and `y` (N,), read without pickle."""
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:  # np.load takes anything else for a pickle
            raise DataError(f"{shown_path(path)}: not a .npz file (not a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as f:
            for key in ("x", "y"):
                if key not in f.files:
                    raise DataError(
                        f"{shown_path(path)}: .npz file has no '{key}' array (found: {', '.join(f.files) or 'nothing'})"
                    )
            return f["x"], f["y"]
    except ValueError as exc:  # object arrays need pickle, which we refuse; or a damaged array header
        if "pickle" in str(exc):
            raise DataError(f"{shown_path(path)}: cannot read .npz without pickle ({exc})") from None
        raise DataError(f"{shown_path(path)}: not a readable .npz file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{shown_path(path)}: not a readable .npz file ({exc})") from None


def shown(value) -> str:
    """`value` as one short line for a message: its repr when short, else what type it is."""
    text = repr(value)
    return text if len(text) <= 60 and "\n" not in text else f"a {type(value).__name__}"


def as_path(value, what: str, error: type = DataError, expected: str = "a file path (str or os.PathLike)") -> str:
    """`value` (a str or an os.PathLike such as pathlib.Path) as a str path; anything else is
    refused with `error`, naming the argument `what`."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise error(f"{what} must be {expected}, not {shown(value)}")
    if not value:
        raise error(f"{what} must be {expected}, not an empty string")
    return value


def checked_scale(input_scale) -> float:
    """The divisor of pixel values: a positive finite number (the CLI's --input-scale)."""
    if (
        isinstance(input_scale, (bool, np.bool_))
        or not isinstance(input_scale, numbers.Real)
        or not (np.isfinite(input_scale) and input_scale > 0)
    ):
        raise DataError(f"input scale must be a positive number, got {shown(input_scale)}")
    return float(input_scale)


def check_arrays(x, y, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The checks every labelled image set passes, read from a file or given in memory: `x` as
    float32 (N, C, H, W), finite; `y` as int64 (N,) whole, non-negative class indices. `where`
    starts each message (the file, or the role and name of a set given in memory)."""
    try:
        x, y = np.asarray(x), np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: images and labels must be arrays of numbers ({exc})") from None
    if x.ndim != 4:
        raise DataError(f"{where}: images have shape {x.shape}, expected 4 dimensions (N, C, H, W)")
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}, expected (N,)")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: {x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError(f"{where}: contains no images")
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where}: images have dtype {x.dtype}, expected real numbers")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{where}: labels have dtype {y.dtype}, expected integers")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=(1, 2, 3)).sum())
        raise DataError(f"{where}: {bad} image(s) contain NaN or infinite values")
    if not np.isfinite(y).all() or np.any(y != np.round(y)):
        raise DataError(f"{where}: labels must be whole numbers")
    if y.min() < 0:
        raise DataError(f"{where}: negative label {y.min():g}")
    if y.max() > np.iinfo(np.int32).max:  # checked before the cast, which would wrap it round
        raise DataError(f"{where}: label {y.max():g} is too large to be a class index")
    return x, y.astype(np.int64, copy=False)


def check_images(images, where: str) -> ImageSet:
    """An ImageSet given in memory, held to the checks of a file's (see check_arrays); returned
    with float32 contiguous images and int64 labels."""
    if not isinstance(images, ImageSet):
        raise DataError(f"{where} must be an ImageSet (images x, labels y), not {shown(images)}")
    name = images.name if isinstance(images.name, str) else "data"
    x, y = check_arrays(images.x, images.y, f"{where} ({name})")
    if x is images.x and y is images.y and x.flags.c_contiguous and name is images.name:
        return images
    return ImageSet(x=np.ascontiguousarray(x), y=y, name=name)


def load_images(path: str | os.PathLike, input_scale: float = 1.0, name: str | None = None) -> ImageSet:
    """Read and check a labelled image file (or image folder); divide pixel values by `input_scale`.
    The set's `source` records the reader, the image shape and what the reader found (layout, classes)."""
    path = as_path(path, "path")
    input_scale = checked_scale(input_scale)
    if name is not None and not isinstance(name, str):
        raise DataError(f"name must be text or None, not {shown(name)}")
    if os.path.isdir(path):
        if not os.access(path, os.R_OK | os.X_OK):
            raise DataError(f"{shown_path(path)}: permission denied (goodnet may not read this folder)")
    else:
        check_input_file(path, "a data file", DataError)  # missing, a pipe or device, a broken link
    reader = DATA_READERS.choose(path)
    found = reader.read(path)
    x, y = check_arrays(found[0], found[1], shown_path(path))
    details = found[2] if len(found) > 2 else {}
    source = {"format": reader.name, "image_shape": [int(d) for d in x.shape[1:]], **details}
    x = np.ascontiguousarray(_divided(x, input_scale, path))
    return ImageSet(x=x, y=y, name=name or os.path.basename(os.path.normpath(path)), source=source)


def _divided(x: np.ndarray, input_scale: float, path: str) -> np.ndarray:
    """`x` / `input_scale`, refused in one line if a value stops being finite: values must stay
    finite after every transformation, not only as stored."""
    if input_scale == 1.0:
        return x
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # caught just below, in one line
        x = x / np.float32(input_scale)
    if not np.isfinite(x).all():
        raise DataError(
            f"{shown_path(path)}: dividing by the input scale {input_scale:g} makes values overflow "
            f"float32; give a scale near the data's range (e.g. 255)"
        )
    return x


def load_sets(paths: dict[str, str | None], input_scale: float = 1.0) -> dict[str, ImageSet]:
    """Read the data files given per role (None: not given); all must hold images of one size."""
    unknown = set(paths) - set(ROLES)
    if unknown:
        raise SettingsError(f"unknown data roles {sorted(map(str, unknown))} (known: {', '.join(ROLES)})")
    sets = {role: load_images(path, input_scale, name=path) for role, path in paths.items() if path}
    shapes = {s.image_shape for s in sets.values()}
    if len(shapes) > 1:
        raise DataError(f"the data files hold images of different sizes: {sorted(shapes)}")
    return sets


def check_fits_model(images: ImageSet, input_shape: tuple[int, ...], num_classes: int, role: str) -> None:
    """Refuse data the model cannot take, before any long computation starts."""
    if tuple(images.image_shape) != tuple(input_shape):
        raise DataError(
            f"{role} ({images.name}): images are {'x'.join(map(str, images.image_shape))} "
            f"(C x H x W) but the model takes {'x'.join(map(str, input_shape))}"
        )
    top = int(images.y.max())
    if top >= num_classes:
        raise DataError(f"{role} ({images.name}): label {top} is out of range for a model with {num_classes} classes")


def holdout_mask(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Which images to hold out: `share` of every class (rounded), in a seeded order."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held[members[: int(round(share * len(members)))]] = True
    return held


def split_by_mask(images: ImageSet, held: np.ndarray) -> tuple[ImageSet, ImageSet]:
    """(fit, held out): the images where `held` is False, and where it is True."""
    return (
        ImageSet(images.x[~held], images.y[~held], images.name + " (fit)"),
        ImageSet(images.x[held], images.y[held], images.name + " (held out)"),
    )


def split_holdout(images: ImageSet, share: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(fit, held out): `share` of every class held out (see holdout_mask)."""
    return split_by_mask(images, holdout_mask(images.y, share, seed))


def checked_range(value) -> tuple[float, float]:
    """A value range (low, high) of two finite numbers, low below high; anything else refused."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(f"an input range is two numbers (low, high), not {shown(value)}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise DataError(f"an input range is two finite numbers, low below high, not {shown(value)}")
    return low, high


def trained_range(model) -> tuple[float, float] | None:
    """The value range the model (or a GoodNet's B) was trained on, when its file records it."""
    return getattr(model, "input_range", None) or getattr(getattr(model, "backdoored", None), "input_range", None)


def range_origin(model) -> str:
    """Where the model's input range came from, for messages: its file, unless a run set it from data."""
    return getattr(model, "input_range_origin", None) or "recorded in its file"


def check_input_range(
    images: ImageSet, expected: tuple[float, float] | None, role: str, origin: str = "recorded in its file"
) -> None:
    """Refuse data whose values are on another scale than the model was trained on (its file
    records the range), e.g. raw 0..255 pixels for a model trained on [0, 1]: such a model runs,
    but every answer it gives is meaningless. Data may lie anywhere inside the trained range and a
    little past it; values beyond it by more than half its width, or (for 100 images or more) a
    spread under 1/16 of its width, are refused."""
    check_validation_classes(images, role)  # first: clean validation data of one class look like a range problem
    if expected is None or len(images) == 0:
        return
    low, high = expected
    width = high - low
    if not width > 0:
        return
    lo, hi = float(images.x.min()), float(images.x.max())
    if lo < low - width / 2 or hi > high + width / 2 or (len(images) >= 100 and hi - lo < width / 16):
        hint = ""
        if hi > 0 and high > 0 and lo >= 0 and low >= 0:
            ratio = hi / high
            hint = (
                f"; --input-scale {ratio:.4g} divides the data to fit"
                if ratio > 1
                else f"; the data look scaled down by {1 / ratio:.4g} (give the unscaled files)"
            )
        raise DataError(
            f"{role} ({images.name}): values lie in {lo:g}..{hi:g} but the model was trained on "
            f"{low:g}..{high:g} ({origin}){hint}"
        )


def save_images(path: str | os.PathLike, images: ImageSet) -> None:
    """Write the lab's HDF5 layout (`data` N x C x H x W, `label` N); only what load_images reads back."""
    path = as_path(path, "path", OutputError)
    images = check_images(images, "images")
    try:
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=images.x, compression="gzip", compression_opts=4)
            f.create_dataset("label", data=images.y.astype(np.float64))
    except OSError as exc:
        raise OutputError(f"{shown_path(path)}: cannot write ({exc})") from None


IMAGE_MODES = {"L": 1, "RGB": 3}


def read_image(path: str, input_scale: float = 1.0) -> np.ndarray:
    """A PNG/JPEG as a float32 C x H x W array of pixel values divided by `input_scale`."""
    from PIL import Image, UnidentifiedImageError

    check_input_file(path, "an image", DataError)  # missing, a directory, a pipe or device, a broken link
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I;16"):  # 16-bit grey: scale by bit depth to 8-bit levels, never clip
                array = np.asarray(image, dtype=np.float32) * np.float32(255.0 / 65535.0)
            else:
                if image.mode == "1":
                    image = image.convert("L")
                elif image.mode == "P":
                    image = image.convert("RGB")
                if image.mode not in IMAGE_MODES:
                    raise DataError(
                        f"{shown_path(path)}: image mode {image.mode} cannot be read faithfully (8-bit grey or "
                        f"RGB, or 16-bit grey, are read)"
                    )
                array = np.asarray(image, dtype=np.float32)
    except FileNotFoundError:
        raise DataError(f"{shown_path(path)}: no such file") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{shown_path(path)}: image is too large to read safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{shown_path(path)}: not a readable image ({exc})") from None
    return _divided(array[None] if array.ndim == 2 else array.transpose(2, 0, 1), input_scale, path)
