"""The model files a repair leaves: each B' and its GoodNet G, in goodnet's own format, plus a
Keras file in the layout B came in and ONNX when asked. Building G from B and B' happens here,
where it is saved, so that reports only ever render numbers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..models.goodnet import build_goodnet
from .keras.export import export_like, keras_suffix
from .model_files import model_suffix, save_model
from .onnx_export import export_onnx, require_onnx


@dataclass(frozen=True)
class ModelExports:
    """Extra formats written next to our own files: B' as a Keras file in the layout (and format:
    .h5, .weights.h5 or .keras) of `keras_like`, the Keras file B came from (`keras_config`: its
    architecture's raw Keras description when B's file holds none), G and B' as ONNX."""

    keras_like: str | None = None
    onnx: bool = False
    keras_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.onnx:
            require_onnx()  # before any work, not after

    def filenames(self, stem: str, model: nn.Module) -> dict[str, str]:
        names = {
            "repaired": f"models/repaired_{stem}{model_suffix(model)}",
            "goodnet": f"models/goodnet_{stem}{model_suffix(model)}",
        }
        if self.keras_like:
            names["repaired_keras"] = f"models/repaired_{stem}{keras_suffix(self.keras_like)}"
        if self.onnx:
            names["goodnet_onnx"] = f"models/goodnet_{stem}.onnx"
            names["repaired_onnx"] = f"models/repaired_{stem}.onnx"
        return names

    def save(
        self,
        stage: str,
        model: nn.Module,
        stem: str,
        repaired: nn.Module,
        single_layer: tuple[str, list[int]] | None = None,
    ) -> dict[str, str]:
        """Save B' (`repaired`, named `stem`) and its G (B = `model`; `single_layer`: B' is B with
        these channels of one conv zeroed, so G shares B's trunk) under `stage`; return the file
        names, relative to `stage`."""
        names = self.filenames(stem, model)
        goodnet = build_goodnet(model, repaired, single_layer)
        os.makedirs(os.path.join(stage, "models"), exist_ok=True)
        save_model(repaired, os.path.join(stage, names["repaired"]))
        save_model(goodnet, os.path.join(stage, names["goodnet"]))
        if self.keras_like:
            export_like(repaired, self.keras_like, os.path.join(stage, names["repaired_keras"]), self.keras_config)
        if self.onnx:
            export_onnx(goodnet, os.path.join(stage, names["goodnet_onnx"]))
            export_onnx(repaired, os.path.join(stage, names["repaired_onnx"]))
        return names
