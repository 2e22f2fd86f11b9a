"""Convert a model file to another format: `goodnet export` as one call, with its writers by registry.

Each output format is a registered writer (`register_export_writer`), as repairs and readers are:
`keras` writes B or B' as Keras weights (HDF5) or in the layout of a given Keras file, `onnx` writes
B, B' or G. The output is checked against the inputs and the model's recorded input shape before
anything is written. A writer imports its format's code when it runs, so listing the formats (the
command line's `--to` choices) does not import PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ModelError, SettingsError, shown_path
from .io.output_dir import check_not_an_input

if TYPE_CHECKING:
    from torch import nn

    from .io.model_files import ModelSource


@dataclass(frozen=True)
class ExportWriter:
    """One output format of `goodnet export`: `write(model, out, like, source)`; `takes_like`: it
    copies the layout of a `--like` file of its own format."""

    name: str
    write: Callable[[nn.Module, str, str | None, ModelSource], None]
    takes_like: bool = False


EXPORT_WRITERS: dict[str, ExportWriter] = {}


def register_export_writer(name: str, takes_like: bool = False):
    """Decorator: register `write(model, out, like, source)` as the writer of format `name`."""

    def add(write: Callable[[nn.Module, str, str | None, ModelSource], None]):
        if name in EXPORT_WRITERS and EXPORT_WRITERS[name].write is not write:
            raise ValueError(f"an export writer named {name!r} is already registered")
        EXPORT_WRITERS[name] = ExportWriter(name, write, takes_like)
        return write

    return add


def export_formats() -> tuple[str, ...]:
    """The formats `goodnet export --to` writes, in registration order."""
    return tuple(EXPORT_WRITERS)


@register_export_writer("keras", takes_like=True)
def _write_keras(model: nn.Module, out: str, like: str | None, source: ModelSource) -> None:
    from .io.keras.export import export_like, keras_suffix, write_keras_weights
    from .models.goodnet import GoodNet

    if isinstance(model, GoodNet):
        raise ModelError(
            f"{shown_path(source.path)}: a GoodNet has no Keras form (it is two models); export B' "
            f"to Keras, or G to ONNX"
        )
    if like:
        if keras_suffix(like) != keras_suffix(out):
            raise SettingsError(
                f"--out must end in {keras_suffix(like)} like --like {like} (Keras reads a file by its suffix)"
            )
        export_like(model, like, out)
    else:
        write_keras_weights(model, out)


@register_export_writer("onnx")
def _write_onnx(model: nn.Module, out: str, like: str | None, source: ModelSource) -> None:
    from .io.onnx_export import export_onnx

    export_onnx(model, out)


def export_model_file(
    source: ModelSource, to: str, out: str, like: str | None = None, input_shape: tuple[int, int, int] | None = None
) -> None:
    """Write the model `source` names to `out` in the format `to` (see `export_formats`). `like`: a
    Keras file whose layout to copy (Keras only); `input_shape` (C, H, W): the image size, for model
    files that do not state it."""
    writer = EXPORT_WRITERS.get(to) if isinstance(to, str) else None
    if writer is None:
        raise SettingsError(f"export writes {' or '.join(export_formats())}, not {to!r}")
    check_not_an_input(out, [source.path, like, source.arch], option="export --out")
    model = source.load(input_shape)
    recorded = getattr(model, "input_shape", None)
    if input_shape is not None and recorded is not None and tuple(recorded) != tuple(input_shape):
        raise SettingsError(
            f"--input-shape {','.join(map(str, input_shape))} contradicts the model's own input "
            f"shape {','.join(map(str, recorded))}, which its file records; drop --input-shape"
        )
    if like and not writer.takes_like:
        raise SettingsError(
            f"--like only applies to --to {' or '.join(n for n, w in EXPORT_WRITERS.items() if w.takes_like)}"
        )
    writer.write(model, out, like, source)
