"""Labelled image sets in the layouts other tools write: an image folder, CIFAR's binary batches and
a pair of NumPy .npy files. Each is a data reader (see goodnet.io.data), so every command that
reads data reads them, and every set passes the same checks after.

- **An image folder** (torchvision's ImageFolder layout): one sub-folder of PNG/JPEG images per
  class. Sub-folders named by whole numbers give those labels; otherwise the class names, sorted as
  torchvision sorts them, give labels 0, 1, ... in that order (the mapping is recorded). Every image
  must have one size and one kind (grey or colour): goodnet never resizes, nor mixes the two. Pixel values
  are as stored (0..255 for 8-bit images).
- **CIFAR-10/100 binary batches** (`*.bin`, as the datasets' authors publish them): records of one
  label byte (CIFAR-10) or a coarse and a fine label byte (CIFAR-100; the fine label is read) and
  3 x 32 x 32 pixel bytes. Which of the two a file is follows from its size; a size that fits both or
  neither is refused. The pickled "python version" of the batches is refused: unpickling runs code.
- **A .npy pair**: the images file given, its labels found beside it by name (`x.npy` -> `y.npy`,
  `X_train.npy` -> `y_train.npy`, `train_images.npy` -> `train_labels.npy`, or `NAME.npy` ->
  `NAME_labels.npy`), both read without pickle. Images (N, C, H, W) or (N, H, W, C) with 1 or 3
  channels, or (N, H, W) grey; the layout found is recorded.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import numpy as np

from ..errors import DataError, shown_path
from .data import check_declared_size, read_image, register_data_reader
from .file_checks import input_file_problem
from .output_dir import file_sha256
from .readers import leading_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IGNORED_FILES = ("thumbs.db", "desktop.ini")  # what file managers leave in folders
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
NPY_MAGIC = b"\x93NUMPY"
CIFAR_PIXELS = 3 * 32 * 32
CIFAR_RECORDS = {"CIFAR-10": (1, 10), "CIFAR-100": (2, 100)}  # label bytes per record, classes
MAX_LABEL = np.iinfo(np.int32).max
LINKED_FOLDER = "a link to a folder; an image folder is read from the folders inside it only"


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILES


def _class_labels(path: str, names: list[str]) -> tuple[dict[str, int], str]:
    """Each class folder's label, and how they were given ('numbers' or 'sorted names')."""
    numeric = [re.fullmatch(r"[0-9]+", name) is not None for name in names]
    if all(numeric):
        labels: dict[str, int] = {}
        seen: dict[int, str] = {}
        for name in names:
            label = int(name)
            if label > MAX_LABEL:
                raise DataError(f"{shown_path(path)}: class folder {shown_path(name)} is too large a label")
            if label in seen:
                raise DataError(
                    f"{shown_path(path)}: class folders {shown_path(seen[label])} and {shown_path(name)} "
                    f"both name label {label}"
                )
            seen[label] = name
            labels[name] = label
        return labels, "numbers"
    if any(numeric):
        first = names[numeric.index(True)]
        other = names[numeric.index(False)]
        raise DataError(
            f"{shown_path(path)}: class folders mix numbers ({shown_path(first)}) and names "
            f"({shown_path(other)}); name them all by their label, or all by their class"
        )
    return {name: i for i, name in enumerate(sorted(names))}, "sorted names"


def _walk_error(error: OSError) -> None:
    raise DataError(f"{shown_path(error.filename or '')}: cannot read the folder ({error.strerror or error})")


def _class_images(path: str, folder: str) -> list[str]:
    """The image files under one class folder (sub-folders walked), sorted; anything else refused."""
    found = []
    for root, dirs, files in os.walk(os.path.join(path, folder), onerror=_walk_error):
        links = [d for d in dirs if not d.startswith(".") and os.path.islink(os.path.join(root, d))]
        if links:
            raise DataError(f"{shown_path(os.path.join(root, links[0]))}: {LINKED_FOLDER}")
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _ignored(name):
                continue
            full = os.path.join(root, name)
            problem = input_file_problem(full, "an image")
            if problem is not None:  # a pipe or device (never opened: nothing blocks), a broken link
                raise DataError(f"{shown_path(full)}: {problem}")
            if not name.lower().endswith(IMAGE_SUFFIXES):
                raise DataError(
                    f"{shown_path(full)}: not a PNG or JPEG image (by its name); an image folder holds only "
                    f"images in its class folders"
                )
            found.append(full)
    return found


def image_folder_files(path: str) -> tuple[list[tuple[str, int]], dict[str, int], str]:
    """Every image an image folder holds, with its label, in reading order; the class folders'
    labels; and how the labels were given. Hidden files and folders are skipped; a link to a folder
    is refused (it could lead outside, or back into, the folder); each problem in one line."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{shown_path(path)}: cannot read the folder ({exc.strerror or exc})") from None
    entries = [e for e in entries if not _ignored(e.name)]
    folders = [e.name for e in entries if e.is_dir()]
    linked = [e.name for e in entries if e.is_dir() and e.is_symlink()]
    if linked:
        raise DataError(f"{shown_path(os.path.join(path, linked[0]))}: {LINKED_FOLDER}")
    stray = [e.name for e in entries if not e.is_dir()]
    if stray:
        raise DataError(
            f"{shown_path(os.path.join(path, stray[0]))}: a file beside the class folders; an image folder "
            f"holds one sub-folder of images per class"
        )
    if not folders:
        raise DataError(
            f"{shown_path(path)}: a folder with no class sub-folders; a folder given as data is read as an image "
            f"folder (one sub-folder of PNG/JPEG images per class)"
        )
    labels, given_by = _class_labels(path, folders)
    files: list[tuple[str, int]] = []
    for folder in folders:
        images = _class_images(path, folder)
        if not images:
            raise DataError(f"{shown_path(os.path.join(path, folder))}: a class folder with no images")
        files += [(image, labels[folder]) for image in images]
    return files, labels, given_by


@register_data_reader(
    "image-folder", directory=True, describe="an image folder (one sub-folder of PNG/JPEG images per class)"
)
def read_image_folder(path: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """An ImageFolder directory as (images N x C x H x W, labels, details)."""
    files, labels, given_by = image_folder_files(path)
    first = read_image(files[0][0])
    check_declared_size(path, "images", (len(files), *first.shape))
    x = np.empty((len(files), *first.shape), dtype=np.float32)
    for i, (image, _) in enumerate(files):
        pixels = first if i == 0 else read_image(image)
        if pixels.shape != first.shape:
            raise DataError(
                f"{shown_path(image)}: {_described(pixels.shape)}, but {shown_path(files[0][0])} is "
                f"{_described(first.shape)}; goodnet never resizes, and never mixes grey and colour: give "
                f"images of one size and kind"
            )
        x[i] = pixels
    y = np.array([label for _, label in files], dtype=np.int64)
    details = {"classes_from": f"folder {given_by}", "classes": dict(labels)}
    return x, y, details


def _described(shape: tuple[int, ...]) -> str:
    kind = {1: "grey", 3: "colour"}.get(shape[0], f"{shape[0]} channels")
    return f"{kind} {shape[2]} x {shape[1]}"


def _cifar_kind(path: str, size: int) -> str:
    fits = [
        kind for kind, (label_bytes, _) in CIFAR_RECORDS.items() if size and size % (label_bytes + CIFAR_PIXELS) == 0
    ]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise DataError(
            f"{shown_path(path)}: {size} bytes fit both CIFAR-10 and CIFAR-100 records; cannot tell which this file is"
        )
    raise DataError(
        f"{shown_path(path)}: {size} bytes are not a whole number of CIFAR-10 ({1 + CIFAR_PIXELS} bytes) or "
        f"CIFAR-100 ({2 + CIFAR_PIXELS} bytes) records: not a CIFAR binary batch"
    )


@register_data_reader("cifar-binary", suffixes=(".bin",), describe="CIFAR-10/100 binary batches (.bin)")
def read_cifar_binary(path: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One CIFAR-10 or CIFAR-100 binary batch as (images N x 3 x 32 x 32, labels, details)."""
    size = os.path.getsize(path)
    kind = _cifar_kind(path, size)
    label_bytes, classes = CIFAR_RECORDS[kind]
    record = label_bytes + CIFAR_PIXELS
    count = size // record
    check_declared_size(path, "images", (count, 3, 32, 32))
    try:
        raw = np.fromfile(path, dtype=np.uint8).reshape(count, record)
    except (OSError, ValueError) as exc:
        raise DataError(f"{shown_path(path)}: cannot read ({exc})") from None
    labels = raw[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: the fine label, after the coarse one
    if label_bytes == 2 and int(raw[:, 0].max()) >= 20:
        raise DataError(
            f"{shown_path(path)}: coarse label {int(raw[:, 0].max())} is not a CIFAR-100 class group (0-19): "
            f"not a CIFAR-100 binary batch"
        )
    if int(labels.max()) >= classes:
        raise DataError(
            f"{shown_path(path)}: label {int(labels.max())} is not a {kind} class (0-{classes - 1}): not a "
            f"{kind} binary batch"
        )
    x = raw[:, label_bytes:].reshape(count, 3, 32, 32).astype(np.float32)
    return x, labels, {"layout": f"{kind} binary records", "labels": "fine" if label_bytes == 2 else "the label byte"}


@register_data_reader("python-pickle", magic=PICKLE_MAGIC, any_suffix=True)
def refuse_pickle(path: str):
    """A pickled file under any name (CIFAR's "python version" batches among them): refused."""
    raise DataError(
        f"{shown_path(path)}: a Python pickle (e.g. CIFAR's python-version batches); goodnet does not unpickle "
        f"data, since unpickling runs code: give the binary version (*.bin), an .npz or a .npy pair"
    )


def label_file_candidates(path: str) -> list[str]:
    """Where the labels of the .npy images file `path` may be, in the order they are tried."""
    folder, name = os.path.split(path)
    stem = name[: -len(".npy")] if name.lower().endswith(".npy") else name
    candidates = []
    token = re.compile(r"(?<![A-Za-z])[xX](?![A-Za-z])")
    if token.search(stem):
        candidates += [token.sub("y", stem, count=1), token.sub("Y", stem, count=1)]
    images = re.compile(r"(?<![A-Za-z])images(?![A-Za-z])")
    if images.search(stem):
        candidates.append(images.sub("labels", stem, count=1))
    candidates.append(stem + "_labels")
    seen: list[str] = []
    for candidate in candidates:
        full = os.path.join(folder, candidate + ".npy")
        if full not in seen and candidate != stem:
            seen.append(full)
    return seen


def _npy_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a .npy file declares, read before its array (nothing allocated)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{shown_path(path)}: not a readable .npy file ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{shown_path(path)}: holds Python objects, which need pickle; goodnet reads numbers only")
    return tuple(int(d) for d in shape), dtype


def _load_npy(path: str, what: str) -> np.ndarray:
    shape, dtype = _npy_header(path)
    # the array as stored, then its float32 copy (and a channels-last one's transposed copy)
    check_declared_size(path, what, shape, bytes_per_value=dtype.itemsize + 8)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{shown_path(path)}: not a readable .npy file ({exc})") from None


def _channels_first(x: np.ndarray, path: str) -> tuple[np.ndarray, str]:
    """Images as N x C x H x W, and the layout they were found in."""
    if x.ndim == 3:
        return x[:, None], "N x H x W (grey)"
    if x.ndim != 4:
        raise DataError(
            f"{shown_path(path)}: images have shape {x.shape}; expected N x C x H x W, N x H x W x C or N x H x W"
        )
    first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
    if first and last:
        raise DataError(
            f"{shown_path(path)}: images of shape {x.shape} could be channels-first or channels-last; "
            f"cannot tell which: store them as N x C x H x W in an .npz (x, y) instead"
        )
    if first:
        return x, "N x C x H x W"
    if last:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "N x H x W x C (made channels-first)"
    raise DataError(f"{shown_path(path)}: images of shape {x.shape} have neither 1 nor 3 channels first or last")


@register_data_reader(
    "npy-pair", suffixes=(".npy",), magic=(NPY_MAGIC,), describe=".npy images with their labels beside"
)
def read_npy_pair(path: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A .npy images file and the labels file beside it (label_file_candidates)."""
    labels_path = npy_labels_file(path)
    x, layout = _channels_first(_load_npy(path, "images"), path)
    y = _load_npy(labels_path, "labels")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    return x, y, {"layout": layout, "labels_file": os.path.basename(labels_path)}


def npy_labels_file(path: str) -> str:
    """The labels file of the .npy images file `path`: the one candidate beside it that exists
    (candidates naming one file, as on a file system that ignores case, count once)."""
    candidates = label_file_candidates(path)
    present: list[str] = []
    for candidate in candidates:
        if os.path.isfile(candidate) and not any(os.path.samefile(candidate, p) for p in present):
            present.append(candidate)
    if not present:
        raise DataError(
            f"{shown_path(path)}: no labels file beside it (looked for "
            f"{', '.join(shown_path(os.path.basename(c)) for c in candidates)})"
        )
    if len(present) > 1:
        raise DataError(
            f"{shown_path(path)}: more than one labels file beside it "
            f"({', '.join(shown_path(os.path.basename(c)) for c in present)}); keep one"
        )
    if os.path.samefile(present[0], path):
        raise DataError(f"{shown_path(path)}: its labels file is the images file itself")
    return present[0]


def read_from_several_files(path: str) -> bool:
    """Whether reading `path` as data reads other files than `path` itself (an image folder, a .npy
    pair): what its own size and times do not follow."""
    return os.path.isdir(path) or (path.lower().endswith(".npy") and leading_bytes(path, len(NPY_MAGIC)) == NPY_MAGIC)


def data_files(path: str) -> list[str]:
    """Every file that reading `path` as data reads: an image folder's images, a .npy pair's two
    files, else the file itself. What a data set is recorded and cached by."""
    if not read_from_several_files(path):
        return [path]
    if os.path.isdir(path):
        return [image for image, _ in image_folder_files(path)[0]]
    try:
        return [path, npy_labels_file(path)]
    except (DataError, OSError):
        return [path]  # refused when read, in its own words


def data_sha256(path: str) -> str:
    """The sha256 of what `path` holds as data: a file's bytes, or for an image folder or a .npy
    pair the sha256 of one line per file read (its path from the folder, and its own sha256)."""
    files = data_files(path)
    if files == [path]:
        return file_sha256(path)
    base = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    digest = hashlib.sha256()
    for full in files:
        relative = os.path.relpath(os.path.abspath(full), os.path.abspath(base)).replace(os.sep, "/")
        digest.update(f"{relative}\0{file_sha256(full)}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def data_bytes(path: str) -> int:
    """The total size of the files reading `path` as data reads (data_files)."""
    return sum(os.path.getsize(f) for f in data_files(path))
