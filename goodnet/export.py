"""Convert a model file to another format: `goodnet export` as one call.

B or B' goes to Keras (weights-only HDF5, or the layout of a given Keras file), B, B' or G to ONNX.
The output is checked against the inputs and the model's recorded input shape before anything is
written.
"""

from __future__ import annotations

from .errors import ModelError, SettingsError, shown_path
from .io.keras.export import export_like, keras_suffix, write_keras_weights
from .io.model_files import ModelSource
from .io.onnx_export import export_onnx
from .io.output_dir import check_not_an_input
from .models.goodnet import GoodNet

FORMATS = ("keras", "onnx")


def export_model_file(
    source: ModelSource, to: str, out: str, like: str | None = None, input_shape: tuple[int, int, int] | None = None
) -> None:
    """Write the model `source` names to `out` in the format `to` ("keras" or "onnx"). `like`: a
    Keras file whose layout to copy (Keras only); `input_shape` (C, H, W): the image size, for model
    files that do not state it."""
    if to not in FORMATS:
        raise SettingsError(f"export writes {' or '.join(FORMATS)}, not {to!r}")
    check_not_an_input(out, [source.path, like, source.arch], option="export --out")
    model = source.load(input_shape)
    recorded = getattr(model, "input_shape", None)
    if input_shape is not None and recorded is not None and tuple(recorded) != tuple(input_shape):
        raise SettingsError(
            f"--input-shape {','.join(map(str, input_shape))} contradicts the model's own input "
            f"shape {','.join(map(str, recorded))}, which its file records; drop --input-shape"
        )
    if to == "onnx":
        if like:
            raise SettingsError("--like only applies to --to keras")
        export_onnx(model, out)
    elif isinstance(model, GoodNet):
        raise ModelError(
            f"{shown_path(source.path)}: a GoodNet has no Keras form (it is two models); export B' "
            f"to Keras, or G to ONNX"
        )
    elif like:
        if keras_suffix(like) != keras_suffix(out):
            raise SettingsError(
                f"--out must end in {keras_suffix(like)} like --like {like} (Keras reads a file by its suffix)"
            )
        export_like(model, like, out)
    else:
        write_keras_weights(model, out)
