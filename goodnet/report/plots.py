"""The pictures of a result: the pruning curve, channel activations, sample images with B's and
G's answers, and the comparison bars."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.data import ImageSet  # noqa: E402
from ..pruning.curve import PruningCurve  # noqa: E402


def plot_curve(curve: PruningCurve, rows: list[dict[str, Any]], path: str) -> None:
    frac = [row["fraction_pruned"] for row in rows]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    series = [
        ("valid_accuracy", "B' clean valid accuracy", "tab:blue", "-"),
        ("test_accuracy", "B' clean test accuracy", "tab:blue", "--"),
        ("valid_asr", "B' valid ASR", "tab:red", "-"),
        ("test_asr", "B' test ASR", "tab:red", "--"),
        ("goodnet_test_asr", "G test ASR", "tab:purple", ":"),
    ]
    for column, label, color, style in series:
        if rows[0][column] is not None:
            ax.plot(frac, [row[column] for row in rows], style, color=color, label=label)
    for sel in curve.selections:
        if sel.rule == "crossing" and sel.channels_pruned is not None:
            x = sel.channels_pruned / curve.num_channels
            ax.axvline(x, color="grey", lw=0.8, alpha=0.7)
            ax.text(x, 101, f"X={sel.x:g}", rotation=90, va="bottom", ha="center", fontsize=7)
    ax.set_xlabel(f"fraction of {curve.layer} channels pruned ({curve.order_name} mean activation)")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 104)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_activations(curve: PruningCurve, path: str) -> None:
    means = curve.mean_activation[curve.order]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    steps = np.arange(len(means))
    ax.bar(steps, means, color="tab:blue")
    dead_steps = steps[means == 0]
    ax.plot(dead_steps, np.zeros(len(dead_steps)), "x", color="tab:red", label="dead (mean 0)")
    ax.set_title(
        f"mean activation at {curve.cut} on clean validation data, in pruning order "
        f"({len(dead_steps)} of {len(means)} channels dead, red x)",
        fontsize=9,
    )
    ax.set_xlabel("pruning step")
    ax.set_ylabel("mean activation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _as_picture(image: np.ndarray) -> np.ndarray:
    picture = image.transpose(1, 2, 0)
    low, high = float(picture.min()), float(picture.max())
    picture = (picture - low) / (high - low) if high > low else np.zeros_like(picture)
    return picture[..., 0] if picture.shape[2] == 1 else picture[..., :3]


def plot_samples(
    images: ImageSet,
    labels_b: np.ndarray,
    labels_g: np.ndarray,
    extra_class: int,
    title: str,
    path: str,
    poisoned: bool,
    count: int = 8,
) -> None:
    count = min(count, len(images))
    fig, axes = plt.subplots(1, count, figsize=(1.6 * count, 2.2))
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(_as_picture(images.x[i]), cmap="gray")
        g = "flag" if labels_g[i] == extra_class else str(labels_g[i])
        truth = "target" if poisoned else "label"
        ax.set_title(f"{truth} {images.y[i]}\nB={labels_b[i]} G={g}", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_triggers(scan, value_range: tuple[float, float], title: str, path: str, count: int = 10) -> None:
    """The reversed triggers of a trigger scan as they would be stamped on a mid-grey image: the
    suspected targets first, then the labels with the smallest masks, `count` at most."""
    low, high = value_range
    position = {int(label): i for i, label in enumerate(scan.labels)}
    suspects = [int(t) for t in scan.suspects]
    by_norm = [int(scan.labels[i]) for i in np.argsort(scan.norms, kind="stable")]
    shown = [position[t] for t in (suspects + [t for t in by_norm if t not in suspects])[:count]]
    fig, axes = plt.subplots(1, len(shown), figsize=(1.7 * len(shown), 2.4), squeeze=False)
    for ax, i in zip(axes[0], shown):
        mask = np.asarray(scan.masks[i], dtype=np.float64)
        mask = mask[None] if mask.ndim == 2 else mask
        stamped = mask * np.asarray(scan.patterns[i], dtype=np.float64) + (1 - mask) * (low + high) / 2
        picture = np.clip((stamped - low) / (high - low) if high > low else stamped * 0, 0, 1).transpose(1, 2, 0)
        ax.imshow(picture[..., 0] if picture.shape[2] == 1 else picture[..., :3], cmap="gray", vmin=0, vmax=1)
        label = int(scan.labels[i])
        mark = " (suspect)" if label in scan.suspects else ""
        ax.set_title(f"label {label}{mark}\nnorm {scan.norms[i]:.1f}, AI {scan.anomaly[i]:.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_mask_norms(scan, title: str, path: str) -> None:
    """Every label's reversed-trigger mask norm, smallest first; suspected targets in red, the
    median dashed: a backdoor target is the outlier far below it."""
    order = np.argsort(scan.norms, kind="stable")
    suspects = set(scan.suspects)
    colors = ["tab:red" if int(scan.labels[i]) in suspects else "tab:blue" for i in order]
    fig, ax = plt.subplots(figsize=(max(5, min(14, 0.35 * len(order))), 3.2))
    ax.bar(range(len(order)), np.asarray(scan.norms)[order], color=colors)
    ax.axhline(float(np.median(scan.norms)), color="k", linestyle="--", linewidth=1, label="median")
    if len(order) <= 40:
        ax.set_xticks(range(len(order)), [str(int(scan.labels[i])) for i in order], fontsize=7)
    ax.set_xlabel("label (smallest mask first)")
    ax.set_ylabel("mask L1 norm (pixels)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
