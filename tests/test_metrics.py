"""fer_core.metrics against values worked out by hand on small label/prediction arrays.

Conventions (fer_core/metrics.py): the confusion matrix has rows = true class, columns = predicted class;
precision, recall and F1 of a class are 0 where their denominator is 0; balanced accuracy and macro-F1
average over the classes that have support (at least one true sample), so a split without any sample of a
class is not penalised for it, while that class's per-class figures are still reported (as 0).
"""

from __future__ import annotations

import numpy as np
import pytest

from fer_core.engine import probs_metrics
from fer_core.metrics import confusion_matrix, summarize

ABC = ["a", "b", "c"]


def metrics(labels, preds, names=ABC, prefix=""):
    cm = confusion_matrix(np.array(labels), np.array(preds), len(names))
    return summarize(cm, names, prefix=prefix)


def test_confusion_matrix_rows_are_true_classes_columns_predictions():
    cm = confusion_matrix(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert confusion_matrix(np.array([0]), np.array([2]), 3).tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    # Every sample is counted once, whatever the order.
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    cm = confusion_matrix(labels, preds, 7)
    assert cm.sum() == 500 and cm.sum(1).tolist() == np.bincount(labels, minlength=7).tolist()
    assert cm.sum(0).tolist() == np.bincount(preds, minlength=7).tolist()
    assert cm[3, 5] == int(((labels == 3) & (preds == 5)).sum())


def test_confusion_matrix_of_no_samples_is_all_zero():
    assert (
        confusion_matrix(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 3).tolist()
        == [[0] * 3] * 3
    )
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]  # plain (empty) lists too


@pytest.mark.parametrize(
    "labels, preds", [([0, 1], [0, 3]), ([0, 1], [0, -1]), ([3, 1], [0, 1]), ([0, 1], [0])]
)
def test_confusion_matrix_refuses_labels_outside_the_classes(labels, preds):
    """A label or prediction outside 0..n-1 is refused, not counted in a neighbouring cell (class 3 of 3
    would land in the next row's first cell) or failed on with a reshape error."""
    with pytest.raises(ValueError):
        confusion_matrix(np.array(labels), np.array(preds), 3)


def test_mixed_case_by_hand():
    # cm = [[2,1,0],[0,1,1],[0,0,1]]: recall 2/3, 1/2, 1; precision 2/2, 1/2, 1/2.
    m = metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 1.0})
    assert m["per_class_precision"] == pytest.approx({"a": 1.0, "b": 1 / 2, "c": 1 / 2})
    # F1 = 2PR/(P+R): a 2*(1)(2/3)/(5/3) = 4/5, b 1/2, c 2*(1/2)(1)/(3/2) = 2/3.
    assert m["per_class_f1"] == pytest.approx({"a": 4 / 5, "b": 1 / 2, "c": 2 / 3})
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # 13/18
    assert m["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)  # 59/90
    assert m["support"] == {"a": 3, "b": 2, "c": 1} and m["samples"] == 6
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_a_class_never_predicted_counts_as_zero():
    # c has 2 true samples, both missed: recall 0, precision 0/0 -> 0, F1 0, and it stays in the averages.
    m = metrics([0, 1, 2, 2], [0, 1, 0, 1])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class_recall"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 0.0})
    assert m["per_class_precision"] == pytest.approx({"a": 1 / 2, "b": 1 / 2, "c": 0.0})
    assert m["per_class_f1"] == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 0.0})
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(4 / 9)


def test_a_class_without_support_is_left_out_of_the_averages():
    # c has no true sample but is predicted once (a false positive): it is reported with zeros and support 0,
    # and balanced accuracy / macro-F1 average over a and b only. (Over all three: 1/2 and 5/9.)
    m = metrics([0, 0, 1, 1], [0, 2, 1, 1])
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["support"] == {"a": 2, "b": 2, "c": 0}
    assert m["per_class_recall"] == pytest.approx({"a": 1 / 2, "b": 1.0, "c": 0.0})
    assert m["per_class_precision"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 0.0})
    assert m["per_class_f1"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.0})
    assert m["balanced_accuracy"] == pytest.approx(3 / 4)
    assert m["macro_f1"] == pytest.approx(5 / 6)
    # The false positive still costs where it belongs: a's recall (1/2) and the accuracy.


def test_perfect_predictions_score_one_even_with_classes_absent_from_the_split():
    m = metrics([0, 1, 2, 2, 1], [0, 1, 2, 2, 1])
    assert (m["accuracy"], m["balanced_accuracy"], m["macro_f1"]) == (1.0, 1.0, 1.0)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 2]]
    # Seven expressions, a split holding only three of them, all right: nothing is lost for the other four.
    names = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    m = metrics([0, 3, 3, 6], [0, 3, 3, 6], names, prefix="val_")
    assert (m["val_accuracy"], m["val_balanced_accuracy"], m["val_macro_f1"]) == (1.0, 1.0, 1.0)
    assert m["val_per_class_recall"]["disgust"] == 0.0 and m["val_support"]["disgust"] == 0


def test_everything_predicted_as_one_class():
    # cm = [[2,0,0],[1,0,0],[1,0,0]]: a recall 1, precision 2/4, F1 2/3; b and c all zero.
    m = metrics([0, 0, 1, 2], [0, 0, 0, 0])
    assert m["accuracy"] == pytest.approx(1 / 2)
    assert m["per_class_precision"] == pytest.approx({"a": 1 / 2, "b": 0.0, "c": 0.0})
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)  # what any constant guess scores: 1 / classes
    assert m["macro_f1"] == pytest.approx(2 / 9)
    # The majority class of an imbalanced split: high accuracy, chance-level balanced accuracy.
    m = metrics([0] * 8 + [1, 2], [0] * 10)
    assert m["accuracy"] == pytest.approx(0.8) and m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["macro_f1"] == pytest.approx((2 * 0.8 / 1.8) / 3)


def test_no_samples_gives_zeros_not_nan():
    m = summarize(np.zeros((3, 3), dtype=int), ABC)
    assert (m["accuracy"], m["balanced_accuracy"], m["macro_f1"], m["samples"]) == (0.0, 0.0, 0.0, 0)
    assert m["per_class_f1"] == {"a": 0.0, "b": 0.0, "c": 0.0}


def test_keys_get_the_prefix_and_are_json_types():
    import json

    m = metrics([0, 1], [1, 1], prefix="test_")
    assert all(k.startswith("test_") for k in m)
    assert json.loads(json.dumps(m)) == m  # plain floats, ints and lists
    assert isinstance(m["test_support"]["a"], int) and isinstance(m["test_accuracy"], float)


def test_probs_metrics_scores_the_argmax():
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # -> a
            [0.1, 0.3, 0.6],  # -> c
            [0.2, 0.5, 0.3],  # -> b
            [0.4, 0.35, 0.25],
        ]
    )  # -> a
    m = probs_metrics(probs, np.array([0, 1, 1, 2]), ABC, "val_")
    assert m["val_confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert m["val_accuracy"] == pytest.approx(2 / 4)
    assert m["val_balanced_accuracy"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    # a: P 1/2 R 1 F1 2/3; b: P 1 R 1/2 F1 2/3; c: 0.
    assert m["val_macro_f1"] == pytest.approx(4 / 9)
