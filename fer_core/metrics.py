"""Classification metrics computed from a confusion matrix, so every figure counts samples, not batches."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# The metric names, defined once. A name is a split prefix ("train_", "val_", "val_tta_", "test_") and a
# key of ``summarize`` (or "loss"). Epoch rows, what a trial reports to Tune, best.pt's choice, the
# sweep's objective, the report and the plots all use these.
SELECTABLE = (
    "val_accuracy",
    "val_macro_f1",
    "val_balanced_accuracy",
    "val_loss",
)  # best_metric / sweep metric
# The val keys of an epoch row (small on purpose: Ray stores every row, so the confusion matrix goes to a file).
ROW_VAL_KEYS = (
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_macro_f1",
    "val_per_class_recall",
    "val_tta_accuracy",
    "val_tta_balanced_accuracy",
    "val_tta_macro_f1",
)


# Per dataset, when a run trains on several: these keys of ``summarize`` under ``NAME/`` + the split prefix
# (fer2013/val_accuracy), beside the pooled ones; a sweep's metric may be one of them.
DATASET_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix")
DATASET_METRIC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)/(val_(?:accuracy|balanced_accuracy|macro_f1))$")


def dataset_metrics(
    labels, preds, source, names: Sequence[str], class_names: Sequence[str], prefix: str
) -> dict:
    """Each dataset's share of an evaluation (``DATASET_KEYS``) under ``NAME/prefix``: ``source[i]`` is the
    index in ``names`` of sample i's dataset."""
    out = {}
    for i, name in enumerate(names):
        mask = np.asarray(source) == i
        if mask.any():
            m = summarize(confusion_matrix(labels[mask], preds[mask], len(class_names)), class_names)
            out |= {f"{name}/{prefix}{k}": m[k] for k in DATASET_KEYS}
    return out


def lower_is_better(metric: str) -> bool:
    """Losses are minimised, every other metric maximised."""
    return metric.endswith("loss")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class.

    Raises:
        ValueError: labels and preds differ in length, or hold a value outside 0..num_classes-1 (which
            would otherwise be counted silently in another cell).
    """
    labels, preds = np.asarray(labels, dtype=np.int64).ravel(), np.asarray(preds, dtype=np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"confusion_matrix: {len(labels)} labels but {len(preds)} predictions")
    bad = (labels < 0) | (labels >= num_classes) | (preds < 0) | (preds >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"confusion_matrix: sample {i} has label {labels[i]} / prediction {preds[i]}, "
            f"outside the {num_classes} classes"
        )
    return np.bincount(num_classes * labels + preds, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


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
