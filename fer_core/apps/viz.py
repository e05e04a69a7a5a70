"""Plotting helpers for training runs and evaluation results (the sweep's plots are in sweeps/report/plots.py).

Every ``plot_*`` function renders one PNG file and returns its path, so callers
(training loop, evaluation script, sweep report) can log or link the result.
The backend (Agg, for headless machines), palette, save rule and probability
bars they share with the prediction PNGs are in ``figures``.
"""

from __future__ import annotations

import math
from pathlib import Path

from .figures import (  # first: it selects the headless Agg backend before pyplot is imported
    COLOR_F1,
    COLOR_PRED,
    COLOR_RIGHT,
    COLOR_TRAIN,
    COLOR_VAL,
    COLOR_WRONG,
    draw_probability_bars,
    note,
    save_png,
)

# isort: split
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_training_curves",
    "plot_confusion_matrix",
    "plot_per_class_accuracy",
    "plot_sample_predictions",
]


def _finite(value) -> bool:
    """True for finite ints/floats (including numpy scalars), else False."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _series(history: list[dict], key: str) -> tuple[list, list]:
    """(x, y) points for ``key`` from a list of per-epoch dicts (x: ``epoch``, else the 1-based position).

    Entries without the key or with a non-finite value are skipped, so a metric
    logged only on some epochs still gives a correct (shorter) line.
    """
    xs, ys = [], []
    for i, row in enumerate(history):
        y = row.get(key)
        if not _finite(y):
            continue
        x = row["epoch"] if _finite(row.get("epoch")) else i + 1
        xs.append(x)
        ys.append(float(y))
    return xs, ys


def _integer_epoch_axis(ax, xs) -> None:
    """Give an axes integer epoch ticks (``xs``: every x drawn), also when only one epoch is plotted."""
    # Epochs are integers; fractional ticks (1.5, 2.5) would be misleading.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xs and max(xs) - min(xs) < 1:
        # A single epoch gives a zero-width range, for which matplotlib invents
        # ticks like 0.990/1.005; pad it to whole epochs instead.
        x = min(xs)
        ax.set_xlim(x - 1, x + 1)
        ax.set_xticks([x])


def plot_training_curves(history: list[dict], path) -> Path:
    """Plot loss and accuracy/F1 curves of one training run.

    Args:
        history: One dict per epoch with key ``epoch`` (int, 1-based) and any
            of ``train_loss``, ``val_loss``, ``train_accuracy``,
            ``val_accuracy``, ``val_macro_f1`` (accuracies as fractions 0..1).
            Missing keys or non-finite values are skipped.
        path: Output PNG path; parent folders are created.

    Returns:
        The output path.
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    # Markers make single points visible (a 1-epoch line has no length) and
    # show where the epochs are; with many epochs they would only add clutter.
    n_epochs = len(history)
    marker = "o" if n_epochs <= 40 else None

    panels = [
        (ax_loss, "Loss", [("train_loss", "train", COLOR_TRAIN), ("val_loss", "val", COLOR_VAL)]),
        (
            ax_acc,
            "Accuracy / macro-F1",
            [
                ("train_accuracy", "train acc", COLOR_TRAIN),
                ("val_accuracy", "val acc", COLOR_VAL),
                ("val_macro_f1", "val macro-F1", COLOR_F1),
            ],
        ),
    ]
    for ax, title, series in panels:
        drawn = False
        for key, label, color in series:
            xs, ys = _series(history, key)
            if not xs:
                continue
            drawn = True
            ax.plot(xs, ys, marker=marker, markersize=4, color=color, label=label, lw=1.8)
        ax.set_title(title)
        if not drawn:
            note(ax, "no data")
            continue
        ax.set_xlabel("epoch")
        _integer_epoch_axis(ax, [x for key, _, _ in series for x in _series(history, key)[0]])
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)

    # Accuracy-like values are fractions, so a fixed 0..1 scale keeps runs
    # comparable and stops tiny changes from looking dramatic.
    if ax_acc.lines:
        ax_acc.set_ylim(0.0, 1.02)
        ax_acc.set_ylabel("fraction")
        # Mark the epoch a checkpoint selector would most likely keep.
        for key in ("val_macro_f1", "val_accuracy"):
            xs, ys = _series(history, key)
            if xs:
                best = int(np.argmax(ys))
                ax_acc.scatter(
                    [xs[best]],
                    [ys[best]],
                    s=140,
                    marker="*",
                    color="gold",
                    edgecolor="black",
                    zorder=5,
                    label=f"best {'val macro-F1' if key == 'val_macro_f1' else 'val acc'}: "
                    f"{ys[best]:.3f} @ epoch {xs[best]}",
                )
                ax_acc.legend(loc="best", fontsize=9)
                break
    if ax_loss.lines:
        ax_loss.set_ylabel("loss")
    return save_png(fig, path)


def plot_confusion_matrix(
    cm, class_names: list[str], path, normalize: bool = True, title: str = "Confusion matrix"
) -> Path:
    """Plot a confusion matrix as an annotated heat map.

    Args:
        cm: Square list-of-lists or array of counts; rows are the true class,
            columns the predicted class.
        class_names: One name per row/column, in index order.
        path: Output PNG path; parent folders are created.
        normalize: If True, colour and annotate each row as fractions of its
            true-class support (i.e. per-class recall on the diagonal); rows
            with zero support stay 0. The raw count is shown under the percent.
        title: Figure title.

    Returns:
        The output path.

    Raises:
        ValueError: If ``cm`` is not square or does not match ``class_names``.
    """
    counts = np.asarray(cm, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"cm must be square, got shape {counts.shape}")
    n = counts.shape[0]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n}x{n} matrix")

    support = counts.sum(axis=1)
    if normalize:
        # `where` skips empty rows entirely, so no 0/0 RuntimeWarning and the
        # row stays 0 instead of NaN.
        shown = np.divide(counts, support[:, None], out=np.zeros_like(counts), where=support[:, None] > 0)
        vmax = 1.0
    else:
        shown = counts
        vmax = max(float(counts.max()), 1.0)

    side = max(5.0, 1.0 + 0.9 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of true class" if normalize else "count")

    # Font shrinks with the number of classes so two-line annotations fit.
    fs = 9 if n <= 8 else max(5, int(9 - (n - 8) * 0.4))
    for i in range(n):
        for j in range(n):
            raw = int(round(counts[i, j]))
            text = f"{shown[i, j] * 100:.0f}%\n({raw})" if normalize else f"{raw}"
            # Dark cells get white text; the threshold is relative to the
            # colour scale so it works for both normalised and raw counts.
            color = "white" if shown[i, j] > 0.55 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fs, color=color)

    # Showing the support on the row labels explains empty/noisy rows at once.
    ylabels = [f"{name} (n={int(s)})" for name, s in zip(class_names, support)]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(ylabels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(counts.sum())
    subtitle = f"accuracy {np.trace(counts) / total * 100:.1f}% on {total} samples" if total else "no samples"
    ax.set_title(f"{title}\n{subtitle}", fontsize=11)
    return save_png(fig, path)


def plot_per_class_accuracy(
    per_class_recall: dict[str, float],
    path,
    support: dict[str, int] | None = None,
    title: str = "Per-class accuracy (recall)",
) -> Path:
    """Plot per-class recall as horizontal bars with the balanced accuracy.

    Args:
        per_class_recall: Class name to recall (fraction 0..1), in display
            order (first class on top).
        path: Output PNG path; parent folders are created.
        support: Optional class name to number of true samples; shown in the
            tick labels as ``"disgust (n=56)"``.
        title: Figure title.

    Returns:
        The output path.
    """
    names = list(per_class_recall)
    values = [float(per_class_recall[k]) if _finite(per_class_recall[k]) else 0.0 for k in names]
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.5 * len(names) + 1.4)), layout="constrained")
    if not names:
        note(ax, "no classes")
        ax.set_title(title)
        return save_png(fig, path)

    labels = [f"{k} (n={int(support[k])})" if support is not None and k in support else k for k in names]
    y = np.arange(len(names))
    ax.barh(y, values, color=COLOR_PRED, height=0.65)
    for yi, v in zip(y, values):
        ax.text(v + 0.01, yi, f"{v * 100:.1f}%", va="center", ha="left", fontsize=9)
    mean = float(np.mean(values))
    ax.axvline(mean, color=COLOR_WRONG, ls="--", lw=1.5, label=f"mean = balanced accuracy {mean * 100:.1f}%")
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    # First class on top, matching the dict / confusion-matrix order.
    ax.invert_yaxis()
    # Fixed 0..1 scale (plus room for the value text) so weak classes are not
    # visually exaggerated by an auto-zoomed axis.
    ax.set_xlim(0.0, 1.12)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("recall")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    # Legend below the bars: inside the axes it would cover the value labels.
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14 if len(names) > 3 else -0.25),
        frameon=False,
        fontsize=9,
    )
    return save_png(fig, path)


def plot_sample_predictions(
    images, true_labels, probs, class_names: list[str], path, max_items: int = 16
) -> Path:
    """Plot a grid of sample images, each next to its predicted probabilities.

    Args:
        images: uint8 array N x H x W (grayscale), N x H x W x 1, or
            N x H x W x 3 (RGB). Float images in 0..1 are accepted too.
        true_labels: N true class indices.
        probs: N x C predicted probabilities.
        class_names: C class names in index order.
        path: Output PNG path; parent folders are created.
        max_items: At most this many (first) samples are drawn, 4 per row.

    Returns:
        The output path.
    """
    imgs = np.asarray(images)
    labels = np.asarray(true_labels).astype(int).ravel()
    p = np.asarray(probs, dtype=float)
    n = min(len(imgs), len(labels), len(p), max(int(max_items), 0))
    per_row = 4
    if n == 0:
        fig, ax = plt.subplots(figsize=(6, 2.5))
        note(ax, "no samples to show")
        return save_png(fig, path)

    def name(i: int) -> str:
        # Fall back to the index so a label outside class_names still renders.
        return class_names[i] if 0 <= i < len(class_names) else str(i)

    cols = min(per_row, n)
    rows = math.ceil(n / per_row)
    fig = plt.figure(figsize=(4.3 * cols, 2.35 * rows), layout="constrained")
    # Each sample gets its own [image | bars] sub-grid so titles and tick
    # labels of neighbouring samples cannot collide.
    outer = fig.add_gridspec(rows, cols, wspace=0.06, hspace=0.08)
    for k in range(n):
        inner = outer[k // per_row, k % per_row].subgridspec(1, 2, width_ratios=[1.0, 1.25], wspace=0.05)
        ax_img = fig.add_subplot(inner[0, 0])
        ax_bar = fig.add_subplot(inner[0, 1])

        img = imgs[k]
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        # Fixed intensity range: auto-scaling would stretch dark/low-contrast
        # faces and hide what the network actually saw.
        vmax = 1.0 if np.issubdtype(img.dtype, np.floating) and img.max() <= 1.0 else 255
        if img.ndim == 2:
            ax_img.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        else:
            ax_img.imshow(img if vmax == 255 and img.dtype == np.uint8 else np.clip(img / vmax, 0, 1))
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        # The square image is shorter than its cell; pinning it to the top
        # lifts its title above the bar axes, so the title (which runs over
        # the bars to the right) cannot collide with the first class label.
        ax_img.set_anchor("N")

        true = int(labels[k])
        pred = int(np.argmax(p[k]))
        ok = true == pred
        ax_img.set_title(
            f"true: {name(true)} / pred: {name(pred)}",
            loc="left",
            fontsize=8.5,
            color=COLOR_RIGHT if ok else COLOR_WRONG,
            fontweight="bold",
        )
        for spine in ax_img.spines.values():
            spine.set_edgecolor(COLOR_RIGHT if ok else COLOR_WRONG)
            spine.set_linewidth(2)
        draw_probability_bars(ax_bar, p[k], class_names, true_label=true)

    n_right = int(sum(int(np.argmax(p[k])) == int(labels[k]) for k in range(n)))
    fig.suptitle(f"Sample predictions: {n_right}/{n} correct", fontsize=11)
    return save_png(fig, path)
