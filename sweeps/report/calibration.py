"""The report's calibration: the winner's temperature fitted on val and stored in ``best.pt``, the ensemble's own
temperature, ECE and NLL before and after on the reported split (test when the data has one), and
``reliability.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_core.apps.figures import COLOR_PRED, COLOR_WRONG, save_png  # first: selects the Agg backend

# isort: split
import matplotlib.pyplot as plt

from fer_core.calibration import BINS, ece, fit_temperature, nll, probabilities, reliability
from fer_core.checkpoint import store_temperature
from fer_core.evaluate import at_temperature

FILE = "reliability.png"


def reported_split(scores: dict) -> str:
    """The split calibration is reported on: test when the data has one (val is where T was fitted)."""
    return "test" if "test" in scores else "val"


def _figures(probs: np.ndarray, labels: np.ndarray) -> dict:
    return {"ece": ece(probs, labels), "nll": nll(probs, labels)}


def _entry(t: float, logits: np.ndarray, labels: np.ndarray, split: str) -> dict:
    before, after = probabilities(logits), probabilities(logits, t)
    return {"temperature": t, "fitted_on": "val", "split": split, "bins": BINS} | {
        "before": _figures(before, labels),
        "after": _figures(after, labels),
    }


def calibrate_winner(best: Path, raw: dict[str, dict]) -> tuple[dict, dict]:
    """Fit the winner's temperature on its val logits and store it in ``best``; ``raw``: ``score``'s splits
    at temperature 1. Returns the splits' scores as ``best`` now gives them, and metrics.json's
    ``calibration``. Fitted on the plain logits: the Predictor and the ONNX graph apply no flip TTA (with
    TTA, evaluation tempers the mean of both views' probabilities by the same T)."""
    t = fit_temperature(raw["val"]["logits"], raw["val"]["labels"])
    store_temperature(best, t)
    sp = reported_split(raw)
    scores = {s: at_temperature(v, t) for s, v in raw.items()}
    return scores, _entry(t, raw[sp]["logits"], raw[sp]["labels"], sp)


def calibrate_ensemble(members: list[dict[str, dict]]) -> dict:
    """The ensemble's own temperature and figures (the ``ensemble``'s ``calibration``); ``members``: each
    member's ``score`` at temperature 1, the winner first.

    The ensemble's output is the mean of its members' softmaxes, the softmax of no logits: its temperature
    scales the log of that mean (p^(1/T), renormalised), which keeps its argmax, so every accuracy figure,
    and calibrates what the ensemble outputs. Averaging members calibrated one by one would not: the average
    softens their probabilities again, and a pool of calibrated members comes out under-confident.
    """

    def log_pool(split: str) -> np.ndarray:
        return np.log(np.clip(np.mean([m[split]["probs"] for m in members], axis=0), 1e-12, None))

    labels = members[0]["val"]["labels"]
    t = fit_temperature(log_pool("val"), labels)
    sp = reported_split(members[0])
    return _entry(t, log_pool(sp), members[0][sp]["labels"], sp)


def plot_reliability(raw: dict, t: float, path: Path) -> Path:
    """The reliability diagram of the winner on the reported split, before (T = 1) and after its temperature:
    accuracy against mean top probability per bin, each point sized by its share of the samples."""
    sp = reported_split(raw)
    logits, labels = raw[sp]["logits"], raw[sp]["labels"]
    fig, ax = plt.subplots(figsize=(5.6, 5.0), layout="constrained")
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfect calibration")
    for name, temp, color in (("before", 1.0, COLOR_WRONG), ("after", t, COLOR_PRED)):
        probs = probabilities(logits, temp)
        r = reliability(probs, labels)
        filled = r["count"] > 0
        share = r["count"][filled] / len(labels)
        label = f"{name}: T = {temp:.3g}, ECE {ece(probs, labels):.3f}, NLL {nll(probs, labels):.3f}"
        ax.plot(r["confidence"][filled], r["accuracy"][filled], "-", color=color, lw=1.4, label=label)
        ax.scatter(r["confidence"][filled], r["accuracy"][filled], s=20 + 600 * share, color=color, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"top probability (mean per bin, {BINS} equal-width bins)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(f"Reliability of the winner on {sp} ({len(labels)} images; point size: share of them)")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return save_png(fig, path)


def markdown_lines(m: dict) -> list[str]:
    """report.md's calibration section from metrics.json's ``calibration`` (and the ensemble's)."""
    c = m["calibration"]
    models = [("winner", c)]
    if "ensemble" in m:
        models.append((f"ensemble of {len(m['ensemble']['members'])}", m["ensemble"]["calibration"]))
    rows = [
        f"| {name} | {e['temperature']:.3f} | {e['before']['ece']:.4f} | {e['after']['ece']:.4f} | "
        f"{e['before']['nll']:.4f} | {e['after']['nll']:.4f} |"
        for name, e in models
    ]
    sp = c["split"]
    where = (
        f"on {sp}"
        if sp == "test"
        else "on val: the data has no test split, so these figures are on the split the temperature was "
        "fitted on, and flatter it"
    )
    lines = [
        "\n## Calibration\n",
        f"Temperature scaling: the winner's logits are divided by T = {c['temperature']:.3f} before the softmax, "
        "fitted on val to minimise the negative log-likelihood (NLL) and stored in `best.pt`, so prediction, "
        "`fer_core.evaluate` and the ONNX export all apply it; accuracy does not change. The ensemble has its own "
        "T, applied to the log of its members' mean probability. Expected calibration error (ECE, "
        f"{c['bins']} equal-width bins of the top probability) and NLL before (T = 1) and after, {where}, "
        "without TTA:",
        "",
        "| model | T | ECE before | ECE after | NLL before | NLL after |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    for name, e in models:
        worse = [k.upper() for k in ("ece", "nll") if e["after"][k] > e["before"][k]]
        if worse:
            why = (
                f"T = {e['temperature']:.3f}, fitted on val, does not carry over to test here"
                if sp == "test"
                else "T minimises the NLL on val, not the ECE"
            )
            lines.append(
                f"\nThe {name}'s {' and '.join(worse)} on {sp} are worse after the temperature than before: {why}."
            )
    return [*lines, "", f"![reliability diagram]({FILE})"]
