"""The saliency figures of a checkpoint on a labelled split: the mean map per true class, and the most-confused
class pairs with example faces and their maps.

Maps are ``fer_core.saliency``'s class activation maps of the deployed model. ``saliency_by_class.png``:
per class, the mean map of the true class over (a seeded sample of) its images, drawn over their mean face.
``confusions.png``: the pairs (true A, predicted B) with the most images in the confusion matrix, each with
the faces the model gave B most confidently and the map of B on them (what made it say B).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .figures import note, save_png  # first: it selects the headless Agg backend before pyplot is imported

# isort: split
import matplotlib.pyplot as plt
import numpy as np

from ..checkpoint import load_model
from ..runtime import Runtime
from ..saliency import cam_layer, class_activation_maps
from .predict_plots import SALIENCY_ALPHA, SALIENCY_CMAP

# Images per class the mean map averages: enough for a stable mean, few enough that a FER2013 val split
# (3,589 images) adds seconds, not minutes, to the report on CPUs.
MAX_PER_CLASS = 100
PAIRS, EXAMPLES = 3, 4


def _gray(images: np.ndarray) -> np.ndarray:
    """uint8 N×S×S or N×S×S×3 -> float N×S×S in 0..255."""
    return images.mean(-1) if images.ndim == 4 else images.astype(np.float32)


def _overlay(ax, face: np.ndarray, heat: np.ndarray | None, title: str, color: str = "black") -> None:
    ax.imshow(face, cmap="gray", vmin=0, vmax=255)
    if heat is not None:
        ax.imshow(heat, cmap=SALIENCY_CMAP, alpha=SALIENCY_ALPHA, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8, color=color)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_saliency_by_class(
    images: np.ndarray, labels: np.ndarray, maps: np.ndarray, classes: Sequence[str], path, where: str
) -> Path:
    """One panel per class: its mean map over its mean face, and the mean face alone beneath."""
    fig, axes = plt.subplots(2, len(classes), figsize=(1.7 * len(classes), 4.0), squeeze=False)
    gray = _gray(images)
    for c, name in enumerate(classes):
        mine = labels == c
        if not mine.any():
            note(axes[0, c], "no images")
            axes[1, c].axis("off")
            continue
        face = gray[mine].mean(0)
        _overlay(axes[0, c], face, maps[mine].mean(0), f"{name}\n({int(mine.sum())} images)")
        _overlay(axes[1, c], face, None, "")
    axes[0, 0].set_ylabel("mean map", fontsize=9)
    axes[1, 0].set_ylabel("mean face", fontsize=9)
    fig.suptitle(f"Where the model looks for each true class: mean Grad-CAM at {where}", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def confused_pairs(confusion, pairs: int = PAIRS) -> list[tuple[int, int, int]]:
    """The off-diagonal cells with the most images: (true, predicted, count), most first, counts > 0."""
    cm = np.asarray(confusion)
    cells = [(int(cm[t, p]), t, p) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p]]
    return [(t, p, n) for n, t, p in sorted(cells, key=lambda c: (-c[0], c[1], c[2]))[:pairs]]


def plot_confusions(
    images: np.ndarray,
    probs: np.ndarray,
    picks: list[tuple[int, int, int, np.ndarray]],
    maps: list[np.ndarray],
    classes: Sequence[str],
    support: np.ndarray,
    path,
) -> Path:
    """A row per confused pair (true, predicted, count, example indices): each example face, then its map."""
    rows = max(1, len(picks))
    fig, axes = plt.subplots(rows, 2 * EXAMPLES, figsize=(1.45 * 2 * EXAMPLES, 2.1 * rows), squeeze=False)
    fig.subplots_adjust(hspace=0.75, wspace=0.08)  # room for each row's heading
    for ax in axes.flat:
        ax.axis("off")
    if not picks:
        note(axes[0, 0], "no confusions: every image classified right")
    gray = _gray(images)
    for r, ((t, p, n, idx), heat) in enumerate(zip(picks, maps)):
        share = n / max(int(support[t]), 1)
        heading = f"true {classes[t]} → predicted {classes[p]}: {n} images ({share:.0%} of {classes[t]})"
        axes[r, 0].text(0, 1.38, heading, transform=axes[r, 0].transAxes, fontsize=9, fontweight="bold")
        for k, i in enumerate(idx):
            _overlay(axes[r, 2 * k], gray[i], None, f"p({classes[p]}) {probs[i, p]:.2f}")
            _overlay(axes[r, 2 * k + 1], gray[i], heat[k], f"map of {classes[p]}")
    fig.suptitle(
        "The most-confused pairs on val: faces, and where the model found the wrong class", fontsize=10
    )
    return save_png(fig, path)


def write_saliency_figures(
    checkpoint: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    confusion,
    classes: Sequence[str],
    out: str | os.PathLike,
    runtime: Runtime,
    seed: int = 0,
) -> list[Path]:
    """``saliency_by_class.png`` and ``confusions.png`` in ``out`` for ``checkpoint`` on a labelled split.

    Args:
        checkpoint: the model (its deployed weights: the EMA when the run kept one).
        images: the split's uint8 model inputs; labels: their true classes; probs: the model's N×C probabilities.
        confusion: the split's confusion matrix (rows true, columns predicted) from the same probabilities.
        classes: class names in label order.
        out: the folder the PNGs go to.
        runtime: device settings.
        seed: the seed of the per-class sample.
    """
    model, pre, _, _ = load_model(checkpoint, runtime)
    where = f"{cam_layer(model, pre.img_size)[0]}"
    rng = np.random.default_rng(seed)
    sample = np.concatenate(
        [np.sort(rng.permutation(np.flatnonzero(labels == c))[:MAX_PER_CLASS]) for c in range(len(classes))]
    ).astype(int)
    maps = class_activation_maps(model, pre, images[sample], labels[sample], runtime)
    out = Path(out)
    by_class = plot_saliency_by_class(
        images[sample], labels[sample], maps, classes, out / "saliency_by_class.png", where
    )
    preds, picks = probs.argmax(1), []
    for t, p, n in confused_pairs(confusion):
        wrong = np.flatnonzero((labels == t) & (preds == p))
        picks.append((t, p, n, wrong[np.argsort(-probs[wrong, p], kind="stable")][:EXAMPLES]))
    heat = [class_activation_maps(model, pre, images[idx], [p] * len(idx), runtime) for _, p, _, idx in picks]
    support = np.asarray(confusion).sum(1)
    return [by_class, plot_confusions(images, probs, picks, heat, classes, support, out / "confusions.png")]
