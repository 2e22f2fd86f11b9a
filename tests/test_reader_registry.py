"""The reader registries: which reader each suffix and content reaches, renamed files refused as
their suffix's format refuses them, and a third-party reader found by suffix, then removed."""

import shutil

import h5py
import numpy as np
import pytest
import torch

from goodnet.errors import DataError, ModelError
from goodnet.io.data import DATA_READERS, data_readers, load_images, register_data_reader, unregister_data_reader
from goodnet.io.model_files import (
    MODEL_READERS,
    ModelRequest,
    load_model,
    model_readers,
    register_model_reader,
    save_model,
    unregister_model_reader,
)
from goodnet.models import SmallCNN

DATA_EXPECTED = (
    "expected .h5/.hdf5 with data/label, .npz with x/y, an image folder (one sub-folder of PNG/JPEG images per class), "
    "CIFAR-10/100 binary batches (.bin), or .npy images with their labels beside"
)
MODEL_EXPECTED = "expected .safetensors, Keras .h5/.keras, or a PyTorch .pt/.pth file"
ONNX_BYTES = b"\x08\x07\x3a\x00"  # ir_version 7 and an empty graph: the smallest file holds_onnx takes


def _h5(path):
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = np.zeros((2, 1, 4, 4)), np.array([0.0, 1.0])
    return str(path)


def _small_cnn():
    return SmallCNN(num_classes=3, input_shape=(1, 28, 28), width=4).eval()


@pytest.mark.parametrize(
    "suffix, readers",
    [
        (".h5", ["hdf5"]),
        (".hdf5", ["hdf5"]),
        (".he5", ["hdf5"]),
        (".H5", ["hdf5"]),
        (".npz", ["npz"]),
        (".csv", []),
        (".png", []),
        (".safetensors", []),
        (".pt", []),
    ],
)
def test_each_data_suffix_has_its_reader(suffix, readers):
    assert DATA_READERS.suffix_readers(suffix) == readers


@pytest.mark.parametrize(
    "suffix, readers",
    [
        (".safetensors", ["safetensors"]),
        (".h5", ["keras"]),
        (".hdf5", ["keras"]),
        (".keras", ["keras"]),
        (".weights.h5", ["keras"]),
        (".pt", ["torchscript", "pytorch"]),
        (".pth", ["torchscript", "pytorch"]),
        (".bin", ["torchscript", "pytorch"]),
        (".ts", ["torchscript", "pytorch"]),
        (".zip", ["torchscript", "pytorch"]),
        (".onnx", []),
        (".npz", []),
        (".he5", []),
    ],
)
def test_each_model_suffix_has_its_readers(suffix, readers):
    assert MODEL_READERS.suffix_readers(suffix) == readers


def test_listed_readers_and_the_formats_they_name():
    assert [r.name for r in data_readers()] == [
        "hdf5",
        "npz",
        "image-folder",
        "cifar-binary",
        "python-pickle",
        "npy-pair",
    ]
    assert [r.name for r in model_readers()] == ["onnx", "safetensors", "keras", "torchscript", "pytorch"]
    assert DATA_READERS.formats() == DATA_EXPECTED[len("expected ") :]
    assert MODEL_READERS.formats() == MODEL_EXPECTED[len("expected ") :]


def test_content_chooses_among_the_readers_of_a_suffix(tmp_path):
    model = _small_cnn()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.jit.save(torch.jit.script(model), tmp_path / "script.pt")
    save_model(model, str(tmp_path / "ours.safetensors"))
    (tmp_path / "model.pt").write_bytes(ONNX_BYTES)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 4, 4)), y=np.zeros(2))
    chosen = {
        name: MODEL_READERS.choose(str(tmp_path / name)).name
        for name in ("state.pt", "script.pt", "ours.safetensors", "model.pt")
    }
    assert chosen == {
        "state.pt": "pytorch",
        "script.pt": "torchscript",
        "ours.safetensors": "safetensors",
        "model.pt": "onnx",
    }
    assert DATA_READERS.choose(_h5(tmp_path / "d.h5")).name == "hdf5"
    assert DATA_READERS.choose(str(tmp_path / "d.npz")).name == "npz"


def test_renamed_hdf5_is_refused_as_its_suffix_says(tmp_path):
    original = _h5(tmp_path / "d.h5")
    for suffix in (".hdf5", ".he5", ".H5"):  # another HDF5 suffix: read as before
        assert len(load_images(shutil.copy(original, tmp_path / f"d{suffix}"))) == 2
    as_npz = shutil.copy(original, tmp_path / "d.npz")
    assert DATA_READERS.choose(as_npz).name == "npz"  # the name says what was meant, not the bytes
    with pytest.raises(DataError, match=r"'.*d\.npz': not a \.npz file \(not a zip archive of arrays\)$"):
        load_images(as_npz)
    with pytest.raises(DataError, match="not a whole number of CIFAR-10"):  # .bin: a CIFAR batch's name
        load_images(shutil.copy(original, tmp_path / "d.bin"))
    as_dat = shutil.copy(original, tmp_path / "d.dat")
    with pytest.raises(DataError) as refused:
        load_images(as_dat)
    assert str(refused.value).endswith(f"d.dat': unknown data format ({DATA_EXPECTED})")
    with pytest.raises(ModelError, match="a PyTorch weights file; pass --factory package.module:function"):
        load_model(shutil.copy(original, tmp_path / "m.pt"))
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(shutil.copy(original, tmp_path / "m.safetensors"))
    with pytest.raises(ModelError) as refused:
        load_model(shutil.copy(original, tmp_path / "m.npz"))
    assert str(refused.value).endswith(f"m.npz': unknown model format ({MODEL_EXPECTED})")


def test_onnx_is_refused_under_any_name(tmp_path):
    for name in ("m.onnx", "m.pt", "m.safetensors", "m.h5", "m.whatever"):
        (tmp_path / name).write_bytes(ONNX_BYTES)
        with pytest.raises(ModelError, match="holds an ONNX model, which goodnet writes"):
            load_model(str(tmp_path / name), arch="deepid", trust_code=True)


def test_torchscript_still_needs_trust(tmp_path):
    path = str(tmp_path / "m.ts")
    torch.jit.save(torch.jit.script(_small_cnn()), path)
    with pytest.raises(ModelError, match="a TorchScript file is a program, and loading it runs its author's code"):
        load_model(path, input_shape=(1, 28, 28))
    assert load_model(path, input_shape=(1, 28, 28), trust_code=True).num_classes == 3


def _read_text_images(path):
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    return rows[:, 1:].reshape(len(rows), 1, 2, 2), rows[:, 0]


def test_third_party_data_reader_is_found_by_suffix_then_removed(tmp_path):
    path = tmp_path / "d.pixels"
    path.write_text("0,1,2,3,4\n1,5,6,7,8\n")
    (tmp_path / "d.csv").write_text("0,1,2,3,4\n")
    register_data_reader("pixels", suffixes=(".pixels",), describe=".pixels text")(_read_text_images)
    try:
        assert DATA_READERS.suffix_readers(".PIXELS") == ["pixels"]
        images = load_images(str(path))
        assert images.image_shape == (1, 2, 2) and images.y.tolist() == [0, 1] and images.x.max() == 8
        with pytest.raises(DataError, match=r"\.npy images with their labels beside, or \.pixels text\)$"):
            load_images(str(tmp_path / "d.csv"))
        with pytest.raises(ValueError, match="taken"):
            register_data_reader("pixels", suffixes=(".px",))(lambda p: None)
    finally:
        assert unregister_data_reader("pixels").read is _read_text_images
    assert "pixels" not in [r.name for r in data_readers()]
    with pytest.raises(DataError) as refused:
        load_images(str(path))
    assert str(refused.value).endswith(f"unknown data format ({DATA_EXPECTED})")


def test_third_party_model_reader_by_magic_within_a_suffix(tmp_path):
    seen = []

    def read_toy(path, request):
        assert isinstance(request, ModelRequest)
        seen.append(path)
        return _small_cnn()

    marked, plain = tmp_path / "marked.pt", tmp_path / "plain.pt"
    marked.write_bytes(b"TOYMODEL" + b"\0" * 8)
    torch.save(_small_cnn().state_dict(), plain)
    with MODEL_READERS.registered("toy", read_toy, suffixes=(".pt",), magic=(b"TOYMODEL",)):
        assert load_model(str(marked)).num_classes == 3 and seen == [str(marked)]
        assert MODEL_READERS.choose(str(plain)).name == "pytorch"  # no magic: the suffix's other readers
        assert MODEL_READERS.formats() == MODEL_EXPECTED[len("expected ") :]  # undescribed: not listed
    assert "toy" not in [r.name for r in model_readers()]
    with pytest.raises(ModelError, match="a PyTorch weights file"):
        load_model(str(marked))
    register_model_reader("toy", suffixes=(".toy",))(read_toy)
    unregister_model_reader("toy")
    with pytest.raises(KeyError):
        unregister_model_reader("toy")


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"suffixes": ("h5",)}, "starts with a dot"),
        ({"suffixes": ".h5"}, "tuples"),
        ({"suffixes": (".x",), "magic": (b"",)}, "leading bytes"),
        ({"any_suffix": True}, "needs magic or a sniff"),
        ({}, "give the suffixes"),
    ],
)
def test_a_malformed_registration_is_refused(options, problem):
    with pytest.raises(TypeError, match=problem):
        register_data_reader("broken", **options)
    assert "broken" not in [r.name for r in data_readers()]


def test_export_formats_are_registered_writers_and_a_new_one_is_used(tmp_path):
    from goodnet.errors import SettingsError
    from goodnet.export import EXPORT_WRITERS, export_formats, export_model_file, register_export_writer
    from goodnet.io.model_files import ModelSource

    assert export_formats() == ("keras", "onnx")
    model = _small_cnn()
    save_model(model, str(tmp_path / "b.safetensors"))
    written = []

    @register_export_writer("npz-weights")
    def write(model, out, like, source):
        np.savez(out, **{k: v.numpy() for k, v in model.state_dict().items()})
        written.append(out)

    try:
        assert "npz-weights" in export_formats()
        out = str(tmp_path / "b.npz")
        export_model_file(ModelSource(str(tmp_path / "b.safetensors")), "npz-weights", out)
        assert written == [out] and set(np.load(out)) == set(model.state_dict())
        with pytest.raises(SettingsError, match="--like only applies to --to keras"):
            export_model_file(
                ModelSource(str(tmp_path / "b.safetensors")),
                "npz-weights",
                str(tmp_path / "c.npz"),
                like=str(tmp_path / "b.safetensors"),
            )
    finally:
        EXPORT_WRITERS.pop("npz-weights", None)
    with pytest.raises(SettingsError, match="export writes keras or onnx, not 'npz-weights'"):
        export_model_file(ModelSource(str(tmp_path / "b.safetensors")), "npz-weights", str(tmp_path / "d.npz"))
