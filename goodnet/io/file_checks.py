"""What is wrong with an input file, named for what it is, before anything opens it.

Model files, data files and images pass the same check (`check_input_file`): a missing path, a
directory, a named pipe or device (never opened, so nothing blocks), a symbolic link loop or a link
to a missing file, and a file goodnet may not read are each refused in one line. `shown_path`
quotes a path for a message so that no character in it (a newline, an escape sequence) can break
the message's one line.
"""

from __future__ import annotations

import errno
import os
import stat

import numpy as np

from ..errors import DataError, GoodnetError, ModelError, shown_path

__all__ = [
    "ONNX_REFUSAL",
    "check_input_file",
    "check_model_file",
    "check_validation_classes",
    "holds_onnx",
    "input_file_problem",
    "shown_path",
]


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a special file"


def input_file_problem(path: str, what: str) -> str | None:
    """What keeps goodnet from reading `path` as `what` (e.g. "a model file"), or None when it is a
    regular file goodnet may read. Only looks at the file system: never opens the file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except (OSError, ValueError):
            link = False
        if link:
            try:
                target = os.readlink(path)
            except OSError:
                return "is a symbolic link to a missing file"
            return f"is a symbolic link to a missing file {shown_path(target)}"
        return "no such file"
    except NotADirectoryError:
        return "no such file (a part of the path before the file name is not a directory)"
    except PermissionError:
        return "permission denied (a directory on the path cannot be searched)"
    except ValueError:  # a NUL character
        return "is not a usable path (it holds a NUL character)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop (the links point at each other; no file is at the end)"
        if exc.errno == errno.ENAMETOOLONG:
            return "the path is too long"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return f"is a directory, not {what}"
    if not stat.S_ISREG(info.st_mode):
        return f"is not a regular file ({_special_kind(info.st_mode)}); goodnet reads only regular files"
    if not os.access(path, os.R_OK):
        return "permission denied (goodnet may not read this file)"
    return None


def check_input_file(path: str, what: str, error: type[GoodnetError] = DataError) -> str:
    """`path` when goodnet can read it as `what` ("a model file", "a data file", "an image"); else
    raise `error` with the one-line reason (see input_file_problem)."""
    problem = input_file_problem(path, what)
    if problem is not None:
        raise error(f"{shown_path(path)}: {problem}")
    return path


# ONNX: a ModelProto protobuf. Its top-level fields (number: wire type): ir_version 1, opset_import 8,
# producer_name 2, producer_version 3, domain 4, model_version 5, doc_string 6, graph 7,
# metadata_props 14, training_info 20, functions 25, configuration 26.
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_ONNX_SNIFF_FIELDS = 64


def _varint(f) -> int | None:
    value, shift = 0, 0
    for _ in range(10):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    return None


def holds_onnx(path: str) -> bool:
    """Whether a regular file holds an ONNX model, judged by its contents: it opens with ONNX's
    ir_version field and its top-level fields are ONNX's, each whole (a graph among them), up to the
    end of the file. A PyTorch file never passes: it is a zip archive (b'PK') or a pickle (b'\\x80')."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if f.read(1) != b"\x08":  # field 1 (ir_version), a varint
                return False
            ir_version = _varint(f)
            if ir_version is None or not 1 <= ir_version <= 1000:
                return False
            seen = {1}
            for _ in range(_ONNX_SNIFF_FIELDS):
                if f.tell() == size:
                    return 7 in seen  # a model has a graph
                tag = _varint(f)
                if tag is None or _ONNX_FIELDS.get(tag >> 3) != tag & 7:
                    return False
                if tag & 7 == 0:
                    if _varint(f) is None:
                        return False
                else:
                    length = _varint(f)
                    if length is None or f.tell() + length > size:
                        return False
                    f.seek(length, os.SEEK_CUR)
                seen.add(tag >> 3)
            return 7 in seen and len(seen) >= 3
    except OSError:
        return False


ONNX_REFUSAL = (
    "holds an ONNX model, which goodnet writes (goodnet export --to onnx) but cannot read; give the "
    "model as a goodnet .safetensors file, a Keras .h5/.keras file, a PyTorch state dict (with "
    "--factory) or a TorchScript .pt file"
)


def check_model_file(path: str) -> str:
    """`path` when it is a regular, readable file that is not an ONNX model (which goodnet writes
    but does not read); else ModelError in one line."""
    check_input_file(path, "a model file", ModelError)
    if holds_onnx(path):
        raise ModelError(f"{shown_path(path)}: {ONNX_REFUSAL}")
    return path


def check_validation_classes(images, role: str) -> None:
    """Refuse clean validation data (`role` "clean-valid") of one class only: a repair fits on, and is
    judged by, clean images of every class, and on one class always answering it is already 100 %
    accurate, so nothing could show that the model is better than chance. Other roles may hold one
    class (poisoned data: the attacker's target). `images`: an ImageSet."""
    if role != "clean-valid" or len(images.y) == 0:
        return
    labels = np.unique(images.y)
    if len(labels) == 1:
        label = int(labels[0])
        raise DataError(
            f"{role} ({shown_path(images.name)}): holds images of one class only (label {label}, "
            f"{len(images.y)} images); a repair needs clean images of every class (on one class, always "
            f"answering {label} is already 100 % accurate)"
        )
