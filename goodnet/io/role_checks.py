"""Checks across the data roles: numbers that look fine but are not what they claim.

A test score is only a test score if its images were not the validation images; an attack success
rate only means something if the poisoned file carries the attacker's labels. Each file can be
valid on its own and still break these, so they are checked together: the same file (or the same
images) given for two roles is reported, and a poisoned file whose labels are the clean labels of
the same images is refused, since its ASR would measure nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import numpy as np

from ..errors import DataError, shown_path
from .data import ImageSet
from .dataset_readers import data_sha256

# (first role, second role, what it means when they share images)
OVERLAPS = (
    ("clean_valid", "clean_test", "the clean test numbers are not held out"),
    ("poisoned_valid", "poisoned_test", "the poisoned test numbers are not held out"),
    ("clean_valid", "poisoned_valid", "those poisoned images carry no trigger"),
    ("clean_test", "poisoned_test", "those poisoned images carry no trigger"),
    ("clean_valid", "poisoned_test", "those poisoned images carry no trigger"),
    ("clean_test", "poisoned_valid", "those poisoned images carry no trigger"),
)
OVERLAP_WARN_SHARE = 0.01  # a share of shared images worth a warning (exact duplicates only)
SAME_LABELS_SHARE = 0.9  # poisoned labels equal to the clean labels of the same images this often: refused
SPREAD_TOP_SHARE = 0.5  # labels "spread like a clean set's": no class holds this share...
CONCENTRATED_SHARE = 0.5  # ...while the model sends at least this share of the images to one class


def _same_file(a: str, b: str) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        if os.path.isdir(a) != os.path.isdir(b) or (not os.path.isdir(a) and os.path.getsize(a) != os.path.getsize(b)):
            return False
        return data_sha256(a) == data_sha256(b)
    except (OSError, DataError):
        return False


def _image_hashes(images: ImageSet) -> list[bytes]:
    x = np.ascontiguousarray(images.x)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]


def role_warnings(sets: Mapping[str, ImageSet], paths: Mapping[str, str | None] | None = None) -> list[str]:
    """One line per pair of roles given the same file or sharing images (see OVERLAPS); and a
    refusal (DataError) for a poisoned file carrying the clean labels of the same images."""
    paths = paths or {}
    warnings = []
    hashes = {role: _image_hashes(images) for role, images in sets.items()}
    for split in ("valid", "test"):
        clean, poisoned = f"clean_{split}", f"poisoned_{split}"
        if clean in sets and poisoned in sets:
            check_poisoned_labels(sets[clean], sets[poisoned], poisoned, clean, hashes[clean], hashes[poisoned])
    for first, second, meaning in OVERLAPS:
        if first not in sets or second not in sets:
            continue
        a, b = paths.get(first), paths.get(second)
        if a and b and _same_file(a, b):
            warnings.append(f"{first} and {second} are the same file ({shown_path(os.path.basename(b))}): {meaning}")
            continue
        seen = set(hashes[first])
        shared = sum(h in seen for h in hashes[second])
        if shared and shared >= OVERLAP_WARN_SHARE * len(hashes[second]):
            total = len(hashes[second])
            every = f"all {total}" if shared == total else f"{shared} of {total}"
            warnings.append(f"{every} {second} images are also in {first} ({shared * 100.0 / total:.1f} %): {meaning}")
    return warnings


def check_poisoned_labels(
    clean: ImageSet,
    poisoned: ImageSet,
    poisoned_role: str,
    clean_role: str,
    clean_hashes: list[bytes] | None = None,
    poisoned_hashes: list[bytes] | None = None,
) -> None:
    """Refuse a poisoned file whose labels are the clean file's: image for image (a file made by
    stamping the clean images and keeping their labels), or the clean images themselves, in any
    order or number, with their clean labels. Its ASR would be B's accuracy, not the attack's
    success."""
    refusal = (
        ": a poisoned file's labels are the attacker's target labels, and an ASR measured against true "
        "labels means nothing; give the poisoned file with its target labels"
    )
    if len(np.unique(clean.y)) < 2 or len(poisoned) == 0:
        return
    if len(clean) == len(poisoned):
        same = float(np.mean(clean.y == poisoned.y))
        if same >= SAME_LABELS_SHARE:
            raise DataError(
                f"{poisoned_role} carries the labels of {clean_role} image for image ({same * 100:.1f} % "
                f"equal){refusal}"
            )
    clean_hashes = clean_hashes if clean_hashes is not None else _image_hashes(clean)
    poisoned_hashes = poisoned_hashes if poisoned_hashes is not None else _image_hashes(poisoned)
    label_of = dict(zip(clean_hashes, clean.y.tolist()))
    found = [(label_of[h], int(label)) for h, label in zip(poisoned_hashes, poisoned.y) if h in label_of]
    equal = sum(a == b for a, b in found)
    if len(found) >= SAME_LABELS_SHARE * len(poisoned) and equal >= SAME_LABELS_SHARE * len(found):
        raise DataError(
            f"{poisoned_role} holds {clean_role}'s images with their clean labels ({equal} of "
            f"{len(poisoned)} images){refusal}"
        )


def label_warnings(poisoned: ImageSet, predictions: np.ndarray, role: str) -> list[str]:
    """A poisoned set whose labels are spread over many classes like a clean set's while the model
    sends most of its images to one class: the file likely carries the images' true labels."""
    if len(poisoned) == 0:
        return []
    labels, counts = np.unique(poisoned.y, return_counts=True)
    predicted, predicted_counts = np.unique(predictions, return_counts=True)
    top_label = counts.max() / len(poisoned)
    top_predicted = predicted_counts.max() / len(poisoned)
    if len(labels) < 3 or top_label >= SPREAD_TOP_SHARE or top_predicted < CONCENTRATED_SHARE:
        return []
    target = int(predicted[predicted_counts.argmax()])
    asr = float(np.mean(predictions == poisoned.y) * 100)
    return [
        f"{role}'s labels are spread over {len(labels)} classes like a clean set's, while the model sends "
        f"{top_predicted * 100:.1f} % of its images to class {target}: the file may carry the images' true "
        f"labels instead of the attacker's target, and its ASR ({asr:.2f} %) then measures nothing"
    ]


__all__ = ["check_poisoned_labels", "label_warnings", "role_warnings"]
