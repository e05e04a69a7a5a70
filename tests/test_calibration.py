"""Temperature scaling, NLL and ECE (fer_core.calibration) on synthetic logits whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from fer_core.calibration import T_RANGE, ece, fit_temperature, nll, probabilities, reliability


def calibrated(n: int = 20000, classes: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits with labels drawn from their own softmax: a perfectly calibrated model (T = 1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, classes))
    p = probabilities(logits)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, labels


@pytest.mark.parametrize("scale", [3.0, 1.0, 0.5])
def test_fitted_temperature_undoes_a_known_over_or_under_confidence(scale):
    logits, labels = calibrated()
    t = fit_temperature(scale * logits, labels)
    # Logits scaled by 3 are over-confident: the fitted T divides the scale back out (T > 1); by 0.5,
    # under-confident (T < 1).
    assert t == pytest.approx(scale, rel=0.05), t
    before, after = probabilities(scale * logits), probabilities(scale * logits, t)
    assert nll(after, labels) <= nll(before, labels) + 1e-9
    assert (after.argmax(1) == before.argmax(1)).all()  # a temperature never changes a prediction
    if scale != 1.0:
        assert ece(after, labels) < 0.5 * ece(before, labels) and ece(after, labels) < 0.02


def test_separable_data_gives_the_bounded_temperature_not_zero():
    logits = np.array([[4.0, 0.0], [0.0, 4.0], [3.0, 1.0]])
    t = fit_temperature(logits, np.array([0, 1, 0]))
    assert T_RANGE[0] <= t < T_RANGE[0] * 1.1  # at the low end of the range searched, and finite


def test_ece_nll_and_the_bins_of_a_hand_checked_example():
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # right, bin (13/15, 14/15]
            [0.05, 0.90, 0.05],  # wrong (label 0)
            [0.60, 0.30, 0.10],  # right, bin (8/15, 9/15]
            [0.30, 0.60, 0.10],  # right (label 1)
            [0.70, 0.20, 0.10],  # wrong (label 2), bin (10/15, 11/15]
        ]
    )
    labels = np.array([0, 0, 0, 1, 2])
    # Bin 13: accuracy 1/2, confidence 0.9, gap 0.4, 2 samples; bin 8: accuracy 1, confidence 0.6, gap 0.4,
    # 2 samples; bin 10: accuracy 0, confidence 0.7, gap 0.7, 1 sample. ECE = (2*0.4 + 2*0.4 + 0.7) / 5.
    assert ece(probs, labels) == pytest.approx(0.46)
    r = reliability(probs, labels)
    assert r["count"].tolist() == [0] * 8 + [2, 0, 1, 0, 0, 2, 0]
    assert r["accuracy"][[8, 10, 13]].tolist() == [1.0, 0.0, 0.5]
    assert r["confidence"][[8, 10, 13]] == pytest.approx([0.6, 0.7, 0.9])
    assert np.isnan(r["accuracy"][0])
    assert nll(probs, labels) == pytest.approx(-np.log([0.9, 0.05, 0.6, 0.6, 0.1]).mean())


def test_one_tempered_softmax_serves_numpy_torch_and_flip_tta():
    import torch

    from fer_core.calibration import tempered_softmax
    from fer_core.engine import view_probs

    z = np.random.default_rng(0).normal(0, 2, (5, 7))
    expected = np.exp(z / 0.7) / np.exp(z / 0.7).sum(1, keepdims=True)
    assert np.allclose(probabilities(z, 0.7), expected)
    assert np.allclose(tempered_softmax(torch.from_numpy(z), 0.7).numpy(), expected)
    probs, tta = view_probs(torch.from_numpy(z), torch.from_numpy(z), 0.7)
    assert np.allclose(probs.numpy(), expected) and np.allclose(tta.numpy(), expected)
