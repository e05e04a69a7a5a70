"""Calibrated probabilities: temperature scaling fitted on held-out logits, and the figures that judge it
(negative log-likelihood, expected calibration error and the reliability diagram's bins).

Temperature scaling (Guo et al., 2017) divides a model's logits by one scalar T before the softmax: T > 1
softens over-confident probabilities, T < 1 sharpens under-confident ones, and the argmax, so every
accuracy figure, never changes. A checkpoint stores its T (``fer_core.checkpoint.store_temperature``);
evaluation, the ``Predictor`` and the ONNX graph divide the logits by it before the softmax, all through
``tempered_softmax`` (flip TTA tempers the mean of its two views' probabilities: ``fer_core.engine.view_probs``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

BINS = 15  # equal-width confidence bins of the expected calibration error, as in Guo et al.
# The temperatures searched: far beyond what a trained network needs on either side, and bounded, so that
# perfectly separated held-out data (whose NLL falls forever as T -> 0) still gives a usable value.
T_RANGE = (0.05, 20.0)


def tempered_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) along the class axis (dim 1), in torch ops so that the ONNX graph traces it too."""
    return (logits / temperature).softmax(1)


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``tempered_softmax`` of N×C numpy logits, in float64."""
    return tempered_softmax(torch.from_numpy(np.asarray(logits, np.float64)), temperature).numpy()


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (probabilities floored at 1e-12, as evaluation does)."""
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in ``T_RANGE`` minimising the NLL of softmax(logits / T) on ``labels``.

    Args:
        logits: N×C held-out logits (log-probabilities do as well: a softmax ignores a per-row shift).
        labels: N true labels.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(labels)
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())

    # The NLL is convex in 1/T, so it has one minimum along log T: a bounded 1-D search finds it.
    bounds = (float(np.log(T_RANGE[0])), float(np.log(T_RANGE[1])))
    found = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """The reliability diagram's bins: the top probability of each sample in ``bins`` equal-width bins
    (k/bins, (k+1)/bins]; per bin its sample count, mean top probability and accuracy (NaN when empty)."""
    p = np.asarray(probs, np.float64)
    conf, right = p.max(1), p.argmax(1) == np.asarray(labels)
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=conf, minlength=bins) / count
        accuracy = np.bincount(index, weights=right, minlength=bins) / count
    return {"count": count, "confidence": confidence, "accuracy": accuracy}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: over ``bins`` equal-width bins of the top probability, the sample-weighted
    mean of |accuracy - mean top probability|."""
    r = reliability(probs, labels, bins)
    filled = r["count"] > 0
    gaps = np.abs(r["accuracy"][filled] - r["confidence"][filled])
    return float((r["count"][filled] * gaps).sum() / r["count"].sum())
