"""Data in other tools' layouts: an image folder, CIFAR-10/100 binary batches and a .npy pair are
read as the same images and labels the lab's HDF5 holds, what the reader found is recorded, and
every layout it cannot read faithfully is refused in one line."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from PIL import Image

from goodnet.errors import DataError
from goodnet.grid import file_identity
from goodnet.io.data import load_images
from goodnet.io.dataset_readers import label_file_candidates
from goodnet.spec import file_record


def _image_folder(root, images: np.ndarray, labels: np.ndarray, names=None) -> str:
    """Write (N, 1, H, W) 0..255 images as PNGs, one sub-folder per label (or per name)."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, names[label] if names else str(int(label)))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image[0].astype(np.uint8)).save(os.path.join(folder, f"{i:04d}.png"))
    return str(root)


def _grey(n=6, h=5, w=4, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, h, w)).astype(np.float32), np.arange(n, dtype=np.int64) % 3


def test_an_image_folder_reads_as_its_pixels_and_folder_labels(tmp_path):
    x, y = _grey()
    images = load_images(_image_folder(tmp_path / "set", x, y))
    order = np.argsort(y, kind="stable")  # read class by class, files sorted by name
    np.testing.assert_array_equal(images.x, x[order])
    np.testing.assert_array_equal(images.y, y[order])
    assert images.source == {
        "format": "image-folder",
        "image_shape": [1, 5, 4],
        "classes_from": "folder numbers",
        "classes": {"0": 0, "1": 1, "2": 2},
    }
    # named classes take labels in sorted order (torchvision's); hidden folders and files are skipped
    named = _image_folder(tmp_path / "named", x, y, names=["zebra", "ant", "moth"])
    os.makedirs(os.path.join(named, ".ipynb_checkpoints"))
    open(os.path.join(named, "ant", ".DS_Store"), "w").close()
    images = load_images(named)
    assert images.source["classes"] == {"ant": 0, "moth": 1, "zebra": 2}
    assert sorted(np.bincount(images.y)) == [2, 2, 2] and images.source["classes_from"] == "folder sorted names"
    # colour images and sub-folders inside a class
    rgb = tmp_path / "rgb" / "3" / "more"
    rgb.mkdir(parents=True)
    pixels = np.random.default_rng(1).integers(0, 256, (4, 3, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(rgb / "a.png")
    images = load_images(tmp_path / "rgb")
    assert images.x.shape == (1, 3, 4, 3) and images.y.tolist() == [3]
    np.testing.assert_array_equal(images.x[0], pixels.transpose(2, 0, 1))


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"0": [(5, 4)], "1": [(6, 4)]}, "goodnet never resizes"),
        ({"0": [(5, 4)], "cat": [(5, 4)]}, "mix numbers"),
        ({"7": [(5, 4)], "07": [(5, 4)]}, "both name label 7"),
        ({"0": [(5, 4)], "1": []}, "a class folder with no images"),
        ({}, "a folder with no class sub-folders"),
        ({"0": [(5, 4)], "0/notes.txt": None}, "not a PNG or JPEG image"),
        ({"0": [(5, 4)], "stray.png": None}, "a file beside the class folders"),
        ({"0": [(5, 4)], "1": ["rgb"]}, "never mixes grey and colour"),
        ({"99999999999999999999": [(5, 4)]}, "is too large a label"),
    ],
)
def test_an_image_folder_it_cannot_read_faithfully_is_refused(tmp_path, layout, message):
    root = tmp_path / "set"
    root.mkdir()
    for name, images in layout.items():
        if images is None:  # a plain file
            (root / name).write_text("not an image")
            continue
        (root / name).mkdir()
        for i, size in enumerate(images):
            pixels = np.zeros((5, 4, 3) if size == "rgb" else size, np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    with pytest.raises(DataError, match=message):
        load_images(root)


def _cifar_records(labels, label_bytes=1, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (len(labels), 3, 32, 32)).astype(np.uint8)
    head = np.array(labels, np.uint8).reshape(len(labels), label_bytes)
    return np.concatenate([head, pixels.reshape(len(labels), -1)], axis=1), pixels


def test_cifar_binary_batches_read_as_their_records(tmp_path):
    records, pixels = _cifar_records([3, 1, 4, 1, 5])
    records.tofile(tmp_path / "data_batch_1.bin")
    images = load_images(tmp_path / "data_batch_1.bin")
    np.testing.assert_array_equal(images.x, pixels.astype(np.float32))  # red, green, blue planes, row-major
    assert images.y.tolist() == [3, 1, 4, 1, 5] and images.source["layout"] == "CIFAR-10 binary records"
    # CIFAR-100: a coarse and a fine label byte; the fine one is the label
    records, pixels = _cifar_records([[2, 40], [19, 99], [0, 7]], label_bytes=2)
    records.tofile(tmp_path / "train.bin")
    images = load_images(tmp_path / "train.bin")
    assert images.y.tolist() == [40, 99, 7] and images.source["labels"] == "fine"
    np.testing.assert_array_equal(images.x, pixels.astype(np.float32))


def test_cifar_files_that_are_not_cifar_batches_are_refused(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="not a whole number of CIFAR-10"):
        load_images(tmp_path / "short.bin")
    records, _ = _cifar_records([3, 12])
    records.tofile(tmp_path / "bad.bin")
    with pytest.raises(DataError, match="label 12 is not a CIFAR-10 class"):
        load_images(tmp_path / "bad.bin")
    records, _ = _cifar_records([[25, 3]], label_bytes=2)
    records.tofile(tmp_path / "coarse.bin")
    with pytest.raises(DataError, match="coarse label 25"):
        load_images(tmp_path / "coarse.bin")
    # the pickled python-version batches are refused under any name, before anything is unpickled
    marker = tmp_path / "unpickled"
    for name in ("data_batch_1", "batch.npz", "batch.h5", "batch.bin"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"data": np.zeros(3), "labels": [0]}, f, protocol=4)
        with pytest.raises(DataError, match="does not unpickle"):
            load_images(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize(
    "images_name, labels_name",
    [
        ("x.npy", "y.npy"),
        ("X_train.npy", "y_train.npy"),
        ("train_images.npy", "train_labels.npy"),
        ("set.npy", "set_labels.npy"),
    ],
)
def test_a_npy_pair_finds_its_labels_by_name(tmp_path, images_name, labels_name):
    x = np.random.default_rng(0).integers(0, 256, (4, 6, 5, 3)).astype(np.uint8)  # channels last
    np.save(tmp_path / images_name, x)
    np.save(tmp_path / labels_name, np.array([0, 2, 1, 2]))
    images = load_images(tmp_path / images_name)
    np.testing.assert_array_equal(images.x, x.transpose(0, 3, 1, 2).astype(np.float32))
    assert images.y.tolist() == [0, 2, 1, 2]
    assert images.source["layout"] == "N x H x W x C (made channels-first)"
    assert images.source["labels_file"] == labels_name


def test_a_npy_pair_it_cannot_read_faithfully_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 5, 3)))
    np.save(tmp_path / "y.npy", np.zeros(2))
    with pytest.raises(DataError, match="could be channels-first or channels-last"):
        load_images(tmp_path / "x.npy")
    np.save(tmp_path / "x.npy", np.zeros((2, 4, 5, 6)))
    with pytest.raises(DataError, match="neither 1 nor 3 channels"):
        load_images(tmp_path / "x.npy")
    np.save(tmp_path / "alone.npy", np.zeros((2, 1, 5, 5)))
    with pytest.raises(DataError, match="no labels file beside it .looked for 'alone_labels.npy'"):
        load_images(tmp_path / "alone.npy")
    np.save(tmp_path / "X.npy", np.zeros((2, 1, 5, 5)))
    np.save(tmp_path / "Y.npy", np.zeros(2))
    with pytest.raises(DataError, match="more than one labels file"):
        load_images(tmp_path / "X.npy")  # y.npy and Y.npy both beside it
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    np.save(tmp_path / "objects_labels.npy", np.zeros(2))
    with pytest.raises(DataError, match="holds Python objects"):
        load_images(tmp_path / "objects.npy")
    assert label_file_candidates("d/x_train.npy") == ["d/y_train.npy", "d/Y_train.npy", "d/x_train_labels.npy"]


def test_a_folder_is_recorded_by_the_digest_of_its_files(tmp_path):
    x, y = _grey()
    folder = _image_folder(tmp_path / "set", x, y)
    record, identity = file_record(folder), file_identity(folder)
    assert record["bytes"] == sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
    assert file_record(folder) == record and file_identity(folder) == identity  # stable
    first = os.path.join(folder, "0", "0000.png")
    Image.fromarray(np.full((5, 4), 9, np.uint8)).save(first)  # one image edited in place
    assert file_record(folder)["sha256"] != record["sha256"] and file_identity(folder) != identity


def test_eval_and_defend_read_every_format_as_the_lab_file(tmp_path, capsys, demo_run):
    """The demo's clean test images as an image folder and as a .npy pair give the numbers its HDF5
    file gives; defend records the reader and the folder's classes in results.json."""
    inputs, model = demo_run["inputs"], demo_run["model"]
    lab = load_images(inputs["clean_test"])
    keep = np.flatnonzero(np.isin(lab.y, [0, 1, 2, 3]))[:120]  # a few classes keep the test fast
    x, y = lab.x[keep], lab.y[keep]
    folder = _image_folder(tmp_path / "clean_test", x, y)
    np.save(tmp_path / "x.npy", x.transpose(0, 2, 3, 1).astype(np.uint8))  # channels last, 0..255
    np.save(tmp_path / "y.npy", y)
    from goodnet.io.data import ImageSet, save_images

    save_images(tmp_path / "subset.h5", ImageSet(x, y))
    lines = {}
    for name, path in (("h5", tmp_path / "subset.h5"), ("folder", folder), ("npy", tmp_path / "x.npy")):
        code, out, err = run_cli(capsys, ["eval", path, inputs["poisoned_test"], model])
        assert code == 0, err
        lines[name] = [line for line in out.splitlines() if line.startswith("Clean Classification accuracy")]
    assert lines["folder"] == lines["h5"] == lines["npy"] and lines["h5"]
    out_dir = tmp_path / "defended"
    defend = ["defend", "--model", model, "--clean-valid", inputs["clean_valid"], "--clean-test", folder]
    code, _, err = run_cli(capsys, [*defend, "--quiet", "--no-strip", "--out", out_dir])
    assert code == 0, err
    with open(out_dir / "results.json") as f:
        doc = json.load(f)
    assert doc["data_formats"]["clean_test"] == {
        "format": "image-folder",
        "image_shape": [1, 28, 28],
        "classes_from": "folder numbers",
        "classes": {"0": 0, "1": 1, "2": 2, "3": 3},
    }
    assert doc["data_formats"]["clean_valid"]["format"] == "hdf5"
    assert doc["provenance"]["data"]["clean_test"]["sha256"] == file_record(folder)["sha256"]
    # an --out inside the image folder is refused: goodnet never writes into what it reads
    code, _, err = run_cli(capsys, [*defend, "--out", os.path.join(folder, "out")])
    assert_one_line_error(code, err, "is inside the input")


def test_what_a_data_set_is_recorded_by_is_every_file_it_is_read_from(tmp_path):
    from goodnet.io.dataset_readers import data_files, data_sha256

    np.save(tmp_path / "x.npy", np.zeros((2, 1, 4, 4), np.uint8))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    before = data_sha256(str(tmp_path / "x.npy"))
    assert data_files(str(tmp_path / "x.npy")) == [str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    np.save(tmp_path / "y.npy", np.array([1, 0]))  # only the labels change
    assert data_sha256(str(tmp_path / "x.npy")) != before and file_identity(str(tmp_path / "x.npy")) is not None
    # an image folder is recorded by the images it reads: a hidden file changes nothing
    x, y = _grey()
    folder = _image_folder(tmp_path / "set", x, y)
    digest = data_sha256(folder)
    (tmp_path / "set" / ".DS_Store").write_bytes(b"junk")
    assert data_sha256(folder) == digest
    # a named pipe among the images is refused before anything opens it (nothing blocks)
    os.mkfifo(tmp_path / "set" / "2" / "pipe.png")
    with pytest.raises(DataError, match="named pipe"):
        data_sha256(folder)
    os.remove(tmp_path / "set" / "2" / "pipe.png")
    # a link to a folder is refused, inside or as a class: it could lead outside, or back in
    os.symlink(tmp_path / "set" / "0", tmp_path / "set" / "1" / "loop")
    with pytest.raises(DataError, match="a link to a folder"):
        load_images(folder)
