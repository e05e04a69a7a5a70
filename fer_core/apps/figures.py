"""What every PNG fer_core draws shares: the headless backend, the palette, the save rule, the pieces.

``viz`` (training and evaluation plots), ``predict_plots`` (prediction PNGs) and the sweep's Optuna plots
(``sweeps/report/plots.py``) all draw through this module: it selects matplotlib's non-interactive Agg backend
(the code runs on headless machines, CI and Ray workers, where no display exists), and holds the one save
rule (dpi, tight box, white background, figure closed), the one palette, the note drawn on an empty panel
and the probability bars that both the evaluation sample grid and the prediction PNGs show.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

# Select Agg before pyplot is imported: pyplot picks its backend on import and
# an interactive one would fail (or try to open windows) on headless workers.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import write_atomic  # noqa: E402

DPI = 120

# One palette so that "right", "wrong", "predicted" and
# "best" mean the same colour in every figure a user looks at.
COLOR_TRAIN = "tab:blue"
COLOR_VAL = "tab:orange"
COLOR_F1 = "tab:green"
COLOR_RIGHT = "#1a7f37"
COLOR_WRONG = "#c62828"
COLOR_PRED = "#2b6cb0"
COLOR_OTHER = "#c9d3de"


def save_png(fig, path) -> Path:
    """Save ``fig`` as PNG at ``path`` (creating parent folders) through ``write_atomic`` (a symbolic link at
    ``path`` is replaced, never followed), close it and return the path."""
    out = Path(path)
    # bbox_inches="tight" is a safety net for legends placed outside the axes;
    # without it they would be clipped at the figure border.
    try:
        write_atomic(
            out, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
        )
    finally:  # long sweeps draw hundreds of figures, and pyplot keeps every open one alive
        plt.close(fig)
    return out


def note(ax, text: str) -> None:
    """Write a centered grey note on an otherwise empty axes."""
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35", wrap=True
    )
    ax.set_xticks([])
    ax.set_yticks([])


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

    colors = [COLOR_PRED if i == pred else COLOR_OTHER for i in y]
    edges = ["black" if true_label is not None and i == true_label else "none" for i in y]
    ax.barh(y, np.clip(p, 0.0, 1.0), color=colors, edgecolor=edges, linewidth=1.4, height=0.72)

    for i, v in enumerate(p):
        # Long bars get their value inside (white) so the text never runs past
        # x=1, short bars get it just after the bar end.
        if v > 0.72:
            ax.text(
                v - 0.02, i, f"{v:.2f}", va="center", ha="right", fontsize=7, color="white", fontweight="bold"
            )
        else:
            ax.text(max(v, 0.0) + 0.02, i, f"{v:.2f}", va="center", ha="left", fontsize=7, color="0.15")

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
        label.set_color(COLOR_RIGHT if true_label == pred else COLOR_WRONG)
