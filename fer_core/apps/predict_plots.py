"""The prediction PNGs: one photo with its face boxes (and maps) beside its probability bars, and a folder's overview.

Drawing only: they take the ``ImageResult`` objects ``Predictor.predict_files`` yields and write PNGs
with the project's save rule (``figures.save_png``). Kept out of ``predict`` so the inference API stays
free of matplotlib; matplotlib and the shared figure pieces are imported only when a plot is drawn, for
servers that never plot.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .predict import ImageResult

_BOX = "#ffd400"
SALIENCY_CMAP, SALIENCY_ALPHA = "jet", 0.45  # translucent: the face stays visible under its map


def _draw_saliency(ax, result: ImageResult, shape: tuple[int, ...]) -> None:
    """Each face's class activation map over the region the model saw (its margin crop, or the whole image)."""
    if not result.size:
        return
    k = shape[1] / result.size[0]
    limits = ax.get_xlim(), ax.get_ylim()
    for f in result.faces:
        if f.saliency is None:
            continue
        x, y, w, h = (v * k for v in f.region) if f.region else (0, 0, shape[1], shape[0])
        extent = (x - 0.5, x + w - 0.5, y + h - 0.5, y - 0.5)
        ax.imshow(f.saliency, cmap=SALIENCY_CMAP, alpha=SALIENCY_ALPHA, vmin=0, vmax=1, extent=extent)
    ax.set_xlim(limits[0])  # the photo's frame, not the maps' extents
    ax.set_ylim(limits[1])


def _draw_boxes(
    ax,
    result: ImageResult,
    shape: tuple[int, ...],
    class_names: Sequence[str],
    labels: bool = True,
    fontsize: float = 8.0,
) -> None:
    """Face boxes (scaled from original pixels to the shown copy) with their number and top expression."""
    from matplotlib import patches, patheffects

    if not result.size:
        return
    k = shape[1] / result.size[0]
    outline = [patheffects.withStroke(linewidth=3.2, foreground="black")]
    for i, f in enumerate(result.faces, 1):
        if f.box is None:
            continue
        x, y, w, h = (v * k for v in f.box)
        rect = patches.Rectangle((x, y), w, h, fill=False, edgecolor=_BOX, linewidth=2.0)
        rect.set_path_effects(outline)
        ax.add_patch(rect)
        if labels:
            ax.text(
                x,
                max(y - 3, 0),
                f"{i}: {f.label(class_names)} {f.score:.2f}",
                color=_BOX,
                fontsize=fontsize,
                fontweight="bold",
                va="bottom",
                ha="left",
                path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")],
            )


def plot_prediction(
    result: ImageResult, path: str | os.PathLike, class_names: Sequence[str], max_faces: int = 6
) -> Path:
    """The image with its face boxes beside one probability bar chart per face.

    Args:
        result: a successful ``ImageResult`` (with ``image``).
        path: PNG to write (folders are created).
        class_names: names in probability order.
        max_faces: charts drawn at most (every face is boxed; the rest are in the table/CSV).

    Returns:
        The PNG path.
    """
    import matplotlib.pyplot as plt

    from .figures import draw_probability_bars, save_png  # matplotlib only when plotting

    faces = result.faces[:max_faces]
    n = max(1, len(faces))
    img = result.image
    aspect = img.shape[1] / img.shape[0]
    img_w = min(6.0, max(3.0, 3.6 * aspect))
    row_h = max(1.75, 0.2 * len(class_names) + 0.35)  # one bar chart: room for every class's bar
    fig = plt.figure(figsize=(img_w + 3.4, max(3.2, row_h * n + 0.6)), layout="constrained")
    gs = fig.add_gridspec(n, 2, width_ratios=[img_w, 3.4])
    ax_img = fig.add_subplot(gs[:, 0])
    ax_img.imshow(img)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    _draw_saliency(ax_img, result, img.shape)
    _draw_boxes(ax_img, result, img.shape, class_names)
    for i, f in enumerate(faces):
        ax = fig.add_subplot(gs[i, 1])
        draw_probability_bars(ax, f.probs, list(class_names))
        who = f"face {i + 1}" if f.box is not None else "whole image"
        ax.set_title(
            f"{who}: {f.label(class_names)} ({f.score:.0%})", fontsize=9, loc="left", fontweight="bold"
        )
    more = (
        f"; {len(result.faces) - len(faces)} more face(s) in the table"
        if len(result.faces) > len(faces)
        else ""
    )
    explained = any(f.saliency is not None for f in faces)
    maps = "\nmaps: where the model found its top expression (red: most)" if explained else ""
    fig.suptitle(f"{Path(result.path).name}: {result.note}{more}{maps}", fontsize=10)
    return save_png(fig, path)  # the one save rule (tight box, white background, figure closed)


def plot_contact_sheet(
    results: Sequence[ImageResult],
    path: str | os.PathLike,
    class_names: Sequence[str],
    max_items: int = 60,
    cols: int = 6,
) -> Path:
    """One overview of many predictions: each image with its boxes and top expression; failures greyed.

    Args:
        results: ``ImageResult`` objects (with ``thumbnail`` when successful).
        path: PNG to write.
        class_names: names in probability order.
        max_items: images shown at most (the first ones).
        cols: images per row.

    Returns:
        The PNG path.
    """
    import matplotlib.pyplot as plt

    from .figures import save_png

    items = list(results)[:max_items]
    cols = max(1, min(cols, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.3 * cols, 2.55 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, items):
        name = Path(r.path).name
        name = name if len(name) <= 28 else name[:12] + "…" + name[-15:]
        if not r.ok or r.thumbnail is None:
            # The reason without the path (it is the title) and without the fix (the summary has it).
            why = (r.error or "").removeprefix(f"{r.path}: ").split(";")[0].split(" (")[0]
            ax.text(
                0.5,
                0.5,
                "failed\n" + textwrap.fill(why, 24),
                ha="center",
                va="center",
                color="#c62828",
                fontsize=8,
                transform=ax.transAxes,
            )
            ax.set_title(name, fontsize=7.5, color="0.4")
            continue
        ax.imshow(r.thumbnail)
        _draw_boxes(ax, r, r.thumbnail.shape, class_names, labels=len(r.faces) > 1, fontsize=6)
        top = r.faces[0]
        extra = f" +{len(r.faces) - 1} face(s)" if len(r.faces) > 1 else ("" if r.face_found else " (whole)")
        ax.set_title(f"{name}\n{top.label(class_names)} {top.score:.2f}{extra}", fontsize=7.5)
    total = len(list(results))
    fig.suptitle(
        f"{total} image(s)" + (f", first {len(items)} shown" if total > len(items) else ""), fontsize=10
    )
    return save_png(fig, path)


def plot_track_timeline(
    times: np.ndarray,
    smoothed: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str,
    gap: float,
    span: tuple[float, float],
) -> Path:
    """One track's smoothed class probabilities over time, a line per class in the classes' colours; the
    lines break where the track was off screen for more than ``gap`` seconds; the x axis spans the video."""
    from .figures import plt, save_png
    from .stream import class_colors

    t = np.asarray(times, float)
    p = np.asarray(smoothed, float)
    breaks = np.flatnonzero(np.diff(t) > gap) + 1
    t = np.insert(t, breaks, np.nan)
    p = np.insert(p, breaks, np.nan, axis=0)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for i, (name, color) in enumerate(zip(class_names, class_colors(len(class_names)))):
        ax.plot(t, p[:, i], color=np.array(color) / 255, lw=1.6, label=name)
    ax.set_xlim(span[0], max(span[1], span[0] + 1e-3))
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("smoothed probability")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return save_png(fig, path)


def plot_no_face_timeline(path: str | os.PathLike, text: str) -> Path:
    """The timeline of a video in which no face was found: the sentence, not an empty chart."""
    from .figures import note, plt, save_png

    fig, ax = plt.subplots(figsize=(10, 2))
    note(ax, text)
    return save_png(fig, path)
