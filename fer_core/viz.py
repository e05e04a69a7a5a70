"""Plotting helpers for training runs, evaluation results and hyperparameter sweeps.

Every ``plot_*`` function renders one PNG file and returns its path, so callers
(training loop, evaluation script, sweep driver) can log or link the result.
All figures are drawn with the non-interactive Agg backend because the code
runs on headless machines (CI, Ray workers) where no display exists.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

# Select Agg before pyplot is imported: pyplot picks its backend on import and
# an interactive one would fail (or try to open windows) on headless workers.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = [
    "plot_training_curves",
    "plot_confusion_matrix",
    "plot_per_class_accuracy",
    "draw_probability_bars",
    "plot_sample_predictions",
    "plot_sweep_history",
    "plot_param_vs_metric",
    "plot_param_importance",
]

DPI = 120

# One palette for the whole module so that "right", "wrong", "predicted" and
# "best" mean the same colour in every figure a user looks at.
_COLOR_TRAIN = "tab:blue"
_COLOR_VAL = "tab:orange"
_COLOR_F1 = "tab:green"
_COLOR_RIGHT = "#1a7f37"
_COLOR_WRONG = "#c62828"
_COLOR_PRED = "#2b6cb0"
_COLOR_OTHER = "#c9d3de"
_COLOR_BEST = "#111111"


# --------------------------------------------------------------------------
# internal helpers
# --------------------------------------------------------------------------


def _save(fig, path) -> Path:
    """Save ``fig`` as PNG at ``path`` (creating parent folders) and close it.

    Args:
        fig: The matplotlib figure to save.
        path: Output file path (str or Path).

    Returns:
        The output path as a ``pathlib.Path``.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" is a safety net for legends placed outside the axes;
    # without it they would be clipped at the figure border.
    fig.savefig(out, dpi=DPI, bbox_inches="tight", facecolor="white")
    # Closing matters: long sweeps call these functions hundreds of times and
    # pyplot keeps every open figure alive otherwise.
    plt.close(fig)
    return out


def _note(ax, text: str) -> None:
    """Write a centered grey note on an otherwise empty axes.

    Args:
        ax: The axes to write on.
        text: The note.
    """
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=11,
        color="0.35",
        wrap=True,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _finite(value) -> bool:
    """Tell whether ``value`` is a real, finite number.

    Args:
        value: Anything.

    Returns:
        True for finite ints/floats (including numpy scalars), else False.
    """
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _series(history: list[dict], key: str, x_keys=("epoch",)) -> tuple[list, list]:
    """Extract (x, y) points for ``key`` from a list of per-step dicts.

    Entries without the key or with a non-finite value are skipped, so a metric
    logged only on some epochs still gives a correct (shorter) line.

    Args:
        history: One dict per step.
        key: The metric to extract.
        x_keys: Keys tried in order for the x value; the 1-based position in
            ``history`` is used if none is present.

    Returns:
        Two lists, x values and y values.
    """
    xs, ys = [], []
    for i, row in enumerate(history):
        y = row.get(key)
        if not _finite(y):
            continue
        x = next((row[k] for k in x_keys if _finite(row.get(k))), i + 1)
        xs.append(x)
        ys.append(float(y))
    return xs, ys


def _integer_epoch_axis(ax, xs) -> None:
    """Give an axes integer epoch ticks, also when only one epoch is plotted.

    Args:
        ax: The axes whose x axis shows epochs.
        xs: All x values drawn on it.
    """
    # Epochs are integers; fractional ticks (1.5, 2.5) would be misleading.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xs and max(xs) - min(xs) < 1:
        # A single epoch gives a zero-width range, for which matplotlib invents
        # ticks like 0.990/1.005; pad it to whole epochs instead.
        x = min(xs)
        ax.set_xlim(x - 1, x + 1)
        ax.set_xticks([x])


def _lower_is_better(metric: str) -> bool:
    """Guess the optimisation direction of a metric from its name.

    Args:
        metric: Metric name such as ``"val_loss"`` or ``"val_macro_f1"``.

    Returns:
        True for loss/error-like names, where the minimum is best.
    """
    name = metric.lower()
    return any(token in name for token in ("loss", "error", "err_", "mse", "mae"))


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


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
        (
            ax_loss,
            "Loss",
            [("train_loss", "train", _COLOR_TRAIN), ("val_loss", "val", _COLOR_VAL)],
        ),
        (
            ax_acc,
            "Accuracy / macro-F1",
            [
                ("train_accuracy", "train acc", _COLOR_TRAIN),
                ("val_accuracy", "val acc", _COLOR_VAL),
                ("val_macro_f1", "val macro-F1", _COLOR_F1),
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
            _note(ax, "no data")
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
                    [xs[best]], [ys[best]], s=140, marker="*", color="gold",
                    edgecolor="black", zorder=5,
                    label=f"best {'val macro-F1' if key == 'val_macro_f1' else 'val acc'}: "
                          f"{ys[best]:.3f} @ epoch {xs[best]}",
                )
                ax_acc.legend(loc="best", fontsize=9)
                break
    if ax_loss.lines:
        ax_loss.set_ylabel("loss")
    return _save(fig, path)


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------


def plot_confusion_matrix(
    cm,
    class_names: list[str],
    path,
    normalize: bool = True,
    title: str = "Confusion matrix",
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
        shown = np.divide(
            counts, support[:, None], out=np.zeros_like(counts), where=support[:, None] > 0
        )
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
    subtitle = (f"accuracy {np.trace(counts) / total * 100:.1f}% on {total} samples" if total
                else "no samples")
    ax.set_title(f"{title}\n{subtitle}", fontsize=11)
    return _save(fig, path)


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
        _note(ax, "no classes")
        ax.set_title(title)
        return _save(fig, path)

    labels = [
        f"{k} (n={int(support[k])})" if support is not None and k in support else k for k in names
    ]
    y = np.arange(len(names))
    ax.barh(y, values, color=_COLOR_PRED, height=0.65)
    for yi, v in zip(y, values):
        ax.text(v + 0.01, yi, f"{v * 100:.1f}%", va="center", ha="left", fontsize=9)
    mean = float(np.mean(values))
    ax.axvline(mean, color=_COLOR_WRONG, ls="--", lw=1.5,
               label=f"mean = balanced accuracy {mean * 100:.1f}%")
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
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 if len(names) > 3 else -0.25),
              frameon=False, fontsize=9)
    return _save(fig, path)


def draw_probability_bars(ax, probs, class_names: list[str], true_label: int | None = None) -> None:
    """Draw class probabilities as horizontal bars on an existing axes.

    The predicted (argmax) class is drawn in a strong colour, the others in
    light grey. The true class, if given, gets a black bar outline and a bold
    tick label (green when it is also the prediction, red otherwise). Sized to
    stay legible in small grid cells (e.g. 2 x 1.8 inches).

    Args:
        ax: Matplotlib axes to draw on (it is cleared of ticks it had).
        probs: Sequence of C probabilities (fractions 0..1).
        class_names: C class names in index order; the first one is drawn on top.
        true_label: Index of the true class, or None if unknown.

    Raises:
        ValueError: If ``probs`` and ``class_names`` differ in length.
    """
    p = np.nan_to_num(np.asarray(probs, dtype=float).ravel(), nan=0.0)
    if p.size != len(class_names):
        raise ValueError(f"{p.size} probabilities for {len(class_names)} classes")
    y = np.arange(p.size)
    pred = int(np.argmax(p)) if p.size else -1

    colors = [_COLOR_PRED if i == pred else _COLOR_OTHER for i in y]
    edges = ["black" if true_label is not None and i == true_label else "none" for i in y]
    ax.barh(y, np.clip(p, 0.0, 1.0), color=colors, edgecolor=edges, linewidth=1.4, height=0.72)

    for i, v in enumerate(p):
        # Long bars get their value inside (white) so the text never runs past
        # x=1, short bars get it just after the bar end.
        if v > 0.72:
            ax.text(v - 0.02, i, f"{v:.2f}", va="center", ha="right", fontsize=7,
                    color="white", fontweight="bold")
        else:
            ax.text(max(v, 0.0) + 0.02, i, f"{v:.2f}", va="center", ha="left", fontsize=7,
                    color="0.15")

    ax.set_xlim(0.0, 1.0)
    ax.set_yticks(y)
    ax.set_yticklabels(class_names, fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xticks([0.0, 0.5, 1.0])
    ax.tick_params(axis="x", labelsize=7)
    ax.tick_params(axis="y", length=0, pad=2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if true_label is not None and 0 <= true_label < p.size:
        label = ax.get_yticklabels()[true_label]
        label.set_fontweight("bold")
        label.set_color(_COLOR_RIGHT if true_label == pred else _COLOR_WRONG)


def plot_sample_predictions(
    images,
    true_labels,
    probs,
    class_names: list[str],
    path,
    max_items: int = 16,
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
        _note(ax, "no samples to show")
        return _save(fig, path)

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
        inner = outer[k // per_row, k % per_row].subgridspec(1, 2, width_ratios=[1.0, 1.25],
                                                             wspace=0.05)
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
            loc="left", fontsize=8.5, color=_COLOR_RIGHT if ok else _COLOR_WRONG,
            fontweight="bold",
        )
        for spine in ax_img.spines.values():
            spine.set_edgecolor(_COLOR_RIGHT if ok else _COLOR_WRONG)
            spine.set_linewidth(2)
        draw_probability_bars(ax_bar, p[k], class_names, true_label=true)

    n_right = int(sum(int(np.argmax(p[k])) == int(labels[k]) for k in range(n)))
    fig.suptitle(f"Sample predictions: {n_right}/{n} correct", fontsize=11)
    return _save(fig, path)


# --------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------


def plot_sweep_history(trials: list[dict], metric: str, path, mode: str = "max") -> Path:
    """Plot the learning curve of every trial of a hyperparameter sweep.

    Completed trials are thin coloured lines, trials stopped early by the
    scheduler are dashed and faded and end in an "x", errored trials are red
    with point markers, and the best trial is drawn thick in black. The legend
    only names these categories (plus the best trial), so it stays readable
    with many trials.

    Args:
        trials: One dict per trial with ``trial_id`` (str), ``history`` (list
            of dicts holding ``epoch`` or ``training_iteration`` and
            ``metric``), ``status`` (e.g. ``"TERMINATED"``, ``"ERROR"``) and
            ``stopped_early`` (bool).
        metric: Name of the metric to plot, e.g. ``"val_macro_f1"``.
        path: Output PNG path; parent folders are created.
        mode: ``"max"`` or ``"min"``: which direction is better. The best
            trial is chosen among non-errored trials only (an errored trial's
            numbers may come from a broken run); if all errored, none is
            highlighted.

    Returns:
        The output path.

    Raises:
        ValueError: If ``mode`` is not ``"max"`` or ``"min"``.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    better = max if mode == "max" else min

    parsed = []
    for t in trials:
        xs, ys = _series(t.get("history") or [], metric, x_keys=("epoch", "training_iteration"))
        errored = str(t.get("status", "")).upper() == "ERROR"
        parsed.append({
            "id": str(t.get("trial_id", "?")),
            "xs": xs,
            "ys": ys,
            "error": errored,
            # An errored trial is shown as errored even if the scheduler also
            # flagged it: the failure is the more important fact.
            "early": bool(t.get("stopped_early")) and not errored,
        })

    n_err = sum(d["error"] for d in parsed)
    n_early = sum(d["early"] for d in parsed)
    n_done = len(parsed) - n_err - n_early
    candidates = [d for d in parsed if d["ys"] and not d["error"]]
    best = better(candidates, key=lambda d: better(d["ys"])) if candidates else None

    fig, ax = plt.subplots(figsize=(9.5, 5.2), layout="constrained")
    title = f"{metric} per epoch: {len(parsed)} trials (mode={mode})"
    if not any(d["ys"] for d in parsed):
        _note(ax, f"no trial reported '{metric}'\n"
                  f"({n_done} completed, {n_early} stopped early, {n_err} errored)")
        ax.set_title(title)
        return _save(fig, path)

    # tab10 without its red (reserved for errors) and grey (early stops), so
    # a completed trial can never be mistaken for a failed or stopped one.
    tab10 = plt.get_cmap("tab10")
    palette = [tab10(i) for i in (0, 1, 2, 4, 5, 6, 8, 9)]
    for idx, d in enumerate(parsed):
        if not d["ys"] or d is best:
            continue
        if d["error"]:
            ax.plot(d["xs"], d["ys"], color=_COLOR_WRONG, lw=1.2, marker="o", ms=4, alpha=0.85,
                    zorder=3)
            ax.plot(d["xs"][-1], d["ys"][-1], "X", color=_COLOR_WRONG, ms=9, zorder=4)
        elif d["early"]:
            ax.plot(d["xs"], d["ys"], color="0.45", lw=1.1, ls="--", alpha=0.6, zorder=2)
            ax.plot(d["xs"][-1], d["ys"][-1], "x", color="0.3", ms=8, mew=1.8, zorder=2)
        else:
            ax.plot(d["xs"], d["ys"], color=palette[idx % len(palette)], lw=1.3, alpha=0.75,
                    marker="o" if len(d["xs"]) == 1 else None, ms=4, zorder=2)

    handles = []
    if best is not None:
        # Drawn last so it stays on top of the bundle of other curves.
        ax.plot(best["xs"], best["ys"], color=_COLOR_BEST, lw=3.0, zorder=6,
                marker="o" if len(best["xs"]) == 1 else None)
        if best["early"]:
            # Keep the "stopped early" end marker visible on the best curve too.
            ax.plot(best["xs"][-1], best["ys"][-1], "x", color="0.3", ms=9, mew=2, zorder=7)
        i_best = best["ys"].index(better(best["ys"]))
        ax.plot(best["xs"][i_best], best["ys"][i_best], "*", color="gold", mec="black", ms=16,
                zorder=7)
        handles.append(Line2D([], [], color=_COLOR_BEST, lw=3.0, marker="*", mfc="gold",
                              mec="black", ms=12,
                              label=f"best: {best['id']}\n{best['ys'][i_best]:.4f} "
                                    f"@ epoch {best['xs'][i_best]}"))
    else:
        # Say why nothing is highlighted instead of leaving the reader looking.
        handles.append(Line2D([], [], color="none", label="no best: only errored\ntrials reported data"))
    # Proxy artists describe the line styles once instead of listing every
    # trial, which would be unreadable with 30 entries.
    if n_done - (best is not None and not best["early"]) > 0:
        handles.append(Line2D([], [], color=palette[0], lw=1.3, label=f"completed ({n_done})"))
    if n_early:
        handles.append(Line2D([], [], color="0.45", lw=1.1, ls="--", marker="x", mec="0.3",
                              label=f"stopped early ({n_early})"))
    if n_err:
        handles.append(Line2D([], [], color=_COLOR_WRONG, lw=1.2, marker="o", ms=4,
                              label=f"errored ({n_err})"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9,
              frameon=False, handlelength=2.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    _integer_epoch_axis(ax, [x for d in parsed for x in d["xs"]])
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def _is_categorical(values: list, log: bool) -> bool:
    """Decide whether a hyperparameter should be drawn on a categorical axis.

    Strings/bools are always categorical. Integers with at most 8 distinct
    values (e.g. batch_size 32/64/128) are too, unless the caller asked for a
    log axis, because evenly spaced categories read better than points
    crammed at one end of a linear axis.

    Args:
        values: The parameter's values over all rows.
        log: Whether the caller listed the param in ``log_params``.

    Returns:
        True if the param should be plotted categorically.
    """
    if any(isinstance(v, (str, bool, np.bool_)) or not _finite(v) for v in values):
        return True
    if log:
        return False
    ints = all(float(v).is_integer() and not isinstance(v, (float, np.floating)) for v in values)
    return ints and len(set(values)) <= 8


def plot_param_vs_metric(
    rows: list[dict],
    params: list[str],
    metric: str,
    path,
    log_params: set[str] | frozenset = frozenset(),
) -> Path:
    """Scatter each hyperparameter against the trials' metric.

    One subplot per param, sharing the y axis so effects are comparable.
    Numeric params use a linear (or log, for ``log_params``) x axis;
    strings, bools and integer params with at most 8 distinct values (such as
    batch_size) are placed at evenly spaced category positions with a small
    horizontal jitter. The best trial is marked with a star in every subplot;
    "best" is the minimum if the metric name looks like a loss/error
    (contains "loss", "error", "mse", "mae"), otherwise the maximum.

    Args:
        rows: One dict per trial with the param values and ``metric``; rows
            without a finite metric are skipped.
        params: Param names to plot, one subplot each.
        metric: Key of the metric in each row.
        path: Output PNG path; parent folders are created.
        log_params: Params drawn on a log x axis (non-positive values dropped).

    Returns:
        The output path.
    """
    data = [r for r in rows if _finite(r.get(metric))]
    n = max(len(params), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.6 * nrows), sharey=True,
                             squeeze=False, layout="constrained")
    flat = axes.ravel()
    for ax in flat[len(params):]:
        ax.set_visible(False)
    if not params:
        flat[0].set_visible(True)
        _note(flat[0], "no parameters given")
        return _save(fig, path)

    lower = _lower_is_better(metric)
    best_row = None
    if data:
        pick = min if lower else max
        best_row = pick(data, key=lambda r: float(r[metric]))
    rng = np.random.default_rng(0)  # fixed seed: the same data gives the same picture

    for ax, param in zip(flat, params):
        pts = [(r[param], float(r[metric]), r is best_row) for r in data if param in r
               and r[param] is not None]
        log = param in log_params
        if log:
            pts = [t for t in pts if _finite(t[0]) and float(t[0]) > 0]
        ax.set_title(param + (" (log)" if log else ""), fontsize=10)
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
        if not pts:
            # Not _note(): clearing y ticks here would clear them on every
            # panel, because the y axis is shared.
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                    color="0.35")
            ax.set_xticks([])
            continue
        vals = [t[0] for t in pts]
        ys = np.array([t[1] for t in pts])
        if _is_categorical(vals, log):
            # Sort numerically when possible (32 < 64 < 128), else by text.
            try:
                cats = sorted(set(vals), key=float)
            except (TypeError, ValueError):
                cats = sorted(set(vals), key=str)
            pos = {c: i for i, c in enumerate(cats)}
            xs = np.array([pos[v] for v in vals], dtype=float)
            xs = xs + rng.uniform(-0.15, 0.15, size=len(xs))
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels([str(c) for c in cats])
            ax.set_xlim(-0.6, len(cats) - 0.4)
            # A short bar at each category's median shows the trend behind the
            # jittered cloud.
            for c, i in pos.items():
                med = float(np.median([y for v, y in zip(vals, ys) if v == c]))
                ax.hlines(med, i - 0.3, i + 0.3, color="0.2", lw=2, zorder=4)
        else:
            xs = np.array([float(v) for v in vals])
            if log:
                ax.set_xscale("log")
        ax.scatter(xs, ys, s=28, color=_COLOR_PRED, alpha=0.7, edgecolor="white", lw=0.5,
                   zorder=3)
        for x, y, is_best in zip(xs, ys, [t[2] for t in pts]):
            if is_best:
                ax.scatter([x], [y], s=220, marker="*", color="gold", edgecolor="black",
                           zorder=5)
        # Room above/below the cloud so the big star never sits on the frame.
        ax.margins(y=0.08)
    for r in range(nrows):
        axes[r, 0].set_ylabel(metric)
    # The star is explained once in the title: per-panel legends would cover
    # points, and the star marks the same trial in every panel.
    best_txt = (f"; \u2605 = best trial ({metric} = {float(best_row[metric]):.4f}, "
                f"{'lowest' if lower else 'highest'})" if best_row is not None else "")
    fig.suptitle(f"{metric} vs hyperparameters ({len(data)} trials{best_txt})", fontsize=11)
    return _save(fig, path)


def plot_param_importance(
    importances: dict[str, float],
    path,
    title: str = "Hyperparameter importance (fANOVA)",
) -> Path:
    """Plot hyperparameter importances as horizontal bars, largest on top.

    Args:
        importances: Param name to importance (e.g. from
            ``optuna.importance.get_param_importances``). If empty, the figure
            only carries a note saying there were not enough completed trials.
        path: Output PNG path; parent folders are created.
        title: Figure title.

    Returns:
        The output path.
    """
    items = sorted(((k, float(v)) for k, v in importances.items() if _finite(v)),
                   key=lambda kv: kv[1], reverse=True)
    fig, ax = plt.subplots(figsize=(7, max(2.6, 0.45 * len(items) + 1.4)), layout="constrained")
    ax.set_title(title)
    if not items:
        _note(ax, "not enough completed trials to estimate importance")
        for spine in ax.spines.values():
            spine.set_visible(False)
        return _save(fig, path)

    names = [k for k, _ in items]
    vals = [v for _, v in items]
    y = np.arange(len(items))
    ax.barh(y, vals, color=_COLOR_PRED, height=0.6)
    vmax = max(max(vals), 1e-12)
    for yi, v in zip(y, vals):
        ax.text(v + vmax * 0.015, yi, f"{v:.3f}", va="center", ha="left", fontsize=9)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    # Start at 0 so bar lengths are proportional to importance; leave room
    # for the value labels at the bar ends.
    ax.set_xlim(0, vmax * 1.18)
    ax.set_xlabel("importance (fraction of explained variance)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
