"""Per-image pixel statistics and the split-mismatch test the dataset audit reports.

``image_stats`` measures brightness, contrast and sharpness of every image (vectorised, ``CHUNK`` images at a
time); contrast below ``BLANK_STD`` marks a blank image, which duplicate finding leaves out too.
``split_mismatch`` compares the medians of a val/test split against train and words a warning when they
differ, beyond chance, more than augmentation can bridge. Split from ``audit`` (which assembles the findings
and runs the CLI) and ``duplicates`` (which only needs ``to_gray``, ``CHUNK`` and the blank rule) because
these are numbers about images, with their tolerances measured once and kept beside them.
"""

from __future__ import annotations

import numpy as np

# Constant images: FER2013 train has 12 with std < 2 (11 all-zero, one 0.65), and the next lowest is 9.2.
BLANK_STD = 2.0
# Split mismatch tolerances on the per-split medians. Two random halves of FER2013 train agree within 0.4 %
# (and train vs val within 5 %); a Gaussian blur of sigma 0.5 px makes a split 1.4x less sharp (sigma 1: 3x,
# sigma 3: 10x), and sigma 2 lowers its contrast 1.24x. A larger gap is a processing difference between
# the splits (blur, resizing, compression, levels) that augmentation does not undo.
SHARPNESS_RATIO_TOL = 1.5
CONTRAST_RATIO_TOL = 1.25
BRIGHTNESS_DIFF_TOL = 20.0
# A median of n values wanders by about 1.25 sd / sqrt(n), so two small splits drawn alike can differ past a
# tolerance by chance (the 12/4-per-class demo set: val medians 35 grey levels darker than train, 3 standard
# errors). A difference is reported only when it exceeds its tolerance by more than this many standard
# errors of the two medians' difference (on log values for the ratios): confidently beyond it, not by chance.
MISMATCH_SE = 2.0
CHUNK = 4096  # images per vectorised batch: bounds the float memory of the per-image work


def to_gray(images: np.ndarray) -> np.ndarray:
    """uint8 images as gray: N×H×W as they are, N×H×W×3 as the rounded mean of their channels."""
    return images if images.ndim == 3 else images.mean(axis=3).round().astype(np.uint8)


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image brightness (mean grey), contrast (std) and sharpness (mean |4-neighbour Laplacian| /
    max(std, 1): fine detail relative to contrast, so a darker or flatter split does not read as blurrier).

    Args:
        images: uint8 N×H×W (gray) or N×H×W×3 decoded images.
    """
    out: dict[str, list[np.ndarray]] = {"brightness": [], "contrast": [], "sharpness": []}
    for s in range(0, len(images), CHUNK):
        x = to_gray(np.asarray(images[s : s + CHUNK])).astype(
            np.int16
        )  # exact integer sums, 2x leaner than float
        lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
        flat = x.reshape(len(x), -1).astype(np.int32)
        mean = flat.sum(axis=1, dtype=np.int64) / flat.shape[1]
        std = np.sqrt(np.maximum((flat * flat).sum(axis=1, dtype=np.int64) / flat.shape[1] - mean**2, 0))
        out["brightness"].append(mean)
        out["contrast"].append(std)
        out["sharpness"].append(np.abs(lap).reshape(len(x), -1).mean(axis=1) / np.maximum(std, 1.0))
    return {k: np.concatenate(v).astype(np.float32) if v else np.zeros(0, np.float32) for k, v in out.items()}


def _percentiles(v: np.ndarray) -> dict:
    p10, p50, p90 = np.percentile(v, [10, 50, 90]) if len(v) else (float("nan"),) * 3
    return {"p10": round(float(p10), 3), "median": round(float(p50), 3), "p90": round(float(p90), 3)}


def _median_se(x: np.ndarray, y: np.ndarray, log: bool) -> float:
    """Standard error of median(y) - median(x) (of their logs when ``log``), from the normal approximation."""
    if log:
        x, y = np.log(np.maximum(x, 1e-6)), np.log(np.maximum(y, 1e-6))
    return float(1.2533 * np.sqrt(x.var() / max(len(x), 1) + y.var() / max(len(y), 1)))


def _beyond(value: float, tol: float, se: float) -> bool:
    """|value| exceeds ``tol`` by more than MISMATCH_SE standard errors."""
    return abs(value) - MISMATCH_SE * se > tol


def split_mismatch(name: str, ref: dict, other: dict) -> tuple[dict, list[str]]:
    """Medians and 10/90th percentiles of ``other`` (split ``name``) against train, and the warnings."""
    figs = {
        k: {"train": _percentiles(ref[k]), name: _percentiles(other[k])}
        for k in ("sharpness", "contrast", "brightness")
    }
    med = {k: (figs[k]["train"]["median"], figs[k][name]["median"]) for k in figs}
    se = {k: _median_se(ref[k], other[k], log=k != "brightness") for k in figs}
    for k in figs:
        figs[k]["standard_error" + ("_log" if k != "brightness" else "")] = round(se[k], 4)
    warns = []
    a, b = med["sharpness"]
    figs["sharpness"]["ratio"] = r = round(b / max(a, 1e-6), 3)
    if _beyond(np.log(max(r, 1e-6)), np.log(SHARPNESS_RATIO_TOL), se["sharpness"]):
        word, k = ("sharper", r) if r > 1 else ("blurrier", 1 / r)
        warns.append(
            f"{name} is {k:.1f}x {word} than train (median Laplacian/std {b:.2f} vs {a:.2f}): the splits were "
            f"made differently (blur, resizing, compression), so {name} figures will not show the fit"
        )
    a, b = med["contrast"]
    figs["contrast"]["ratio"] = r = round(b / max(a, 1e-6), 3)
    if _beyond(np.log(max(r, 1e-6)), np.log(CONTRAST_RATIO_TOL), se["contrast"]):
        warns.append(
            f"{name} has {r:.2f}x the contrast of train (median std {b:.1f} vs {a:.1f} grey levels): "
            "the splits were processed differently (levels, gamma, blur)"
        )
    a, b = med["brightness"]
    figs["brightness"]["difference"] = d = round(b - a, 3)
    if _beyond(d, BRIGHTNESS_DIFF_TOL, se["brightness"]):
        warns.append(
            f"{name} is {abs(d):.1f} grey levels {'brighter' if d > 0 else 'darker'} than train (median mean "
            f"grey {b:.1f} vs {a:.1f}): the splits were processed differently (levels, gamma)"
        )
    return figs, warns
