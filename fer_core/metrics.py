"""Classification metrics computed from a confusion matrix, so every figure counts samples, not batches."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    return np.bincount(num_classes * np.asarray(labels) + np.asarray(preds), minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def summarize(cm: np.ndarray, class_names: Sequence[str], prefix: str = "") -> dict:
    """Accuracy, balanced accuracy, macro-F1 and per-class precision/recall/F1/support.

    Args:
        cm: confusion matrix (rows true, columns predicted).
        class_names: names in label order.
        prefix: prepended to every key ("val_", "test_").

    Returns:
        A JSON-ready dict. Macro figures average over classes that have support, so a split without any
        sample of a class is not penalised for it.
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    recall = _safe_div(tp, support)
    precision = _safe_div(tp, predicted)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = support > 0
    total = cm.sum()
    out = {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": {c: float(r) for c, r in zip(class_names, recall)},
        "per_class_precision": {c: float(p) for c, p in zip(class_names, precision)},
        "per_class_f1": {c: float(v) for c, v in zip(class_names, f1)},
        "support": {c: int(s) for c, s in zip(class_names, support)},
        "confusion_matrix": cm.tolist(),
        "samples": int(total),
    }
    return {prefix + k: v for k, v in out.items()}
