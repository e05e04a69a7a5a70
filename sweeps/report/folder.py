"""The report folder of a finished sweep, written in its steps: the winner's checkpoint and config, the scores,
the model to ship (ONNX, its speed, INT8), the figures, the sweep's plots (the Pareto front of several
objectives), then (the report's own time known) metrics.json, report.md, report.html and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fer_core.apps import explain, viz
from fer_core.checkpoint import load_checkpoint
from fer_core.config import FIELDS
from fer_core.datasets import entries
from fer_core.decode_cache import load_dataset
from fer_core.evaluate import checkpoint_data, evaluate_checkpoint, score, splits
from fer_core.metrics import DATASET_METRIC
from fer_core.runtime import resolve_runtime
from sweeps.config.settings import SweepSettings
from sweeps.config.space import to_optuna
from sweeps.report import pareto, plots
from sweeps.report.calibration import FILE as RELIABILITY
from sweeps.report.calibration import calibrate_winner, plot_reliability
from sweeps.report.ensemble import copy_result_checkpoint, ensemble
from sweeps.report.html import write_html
from sweeps.report.markdown import started_from, write_markdown
from sweeps.report.ship import export_winner, write_card
from sweeps.report.trials import objective_points, status_counts, write_csv
from sweeps.state.storage import write_local
from sweeps.tune.progress import Phases, Steps

# TrainConfig keys the sweep sets for how its trials run under Ray, not for what the model is: reset to their
# defaults in best_config.yaml, which is for rerunning the winner standalone.
TRIAL_ONLY = ("threads", "audit", "progress", "keep_checkpoints")


def _sample_indices(labels: np.ndarray, probs: np.ndarray, n: int = 16, seed: int = 0) -> np.ndarray:
    """A spread of samples: per class a right and a wrong prediction, when there are some."""
    rng, right = np.random.default_rng(seed), probs.argmax(1) == labels
    classes = range(probs.shape[1])
    groups = [np.flatnonzero((labels == c) & (right == r)) for c in classes for r in (True, False)]
    return np.asarray([int(rng.choice(g)) for g in groups if len(g)][:n])


def per_dataset(winner: dict) -> dict:
    """Per dataset of several, per split: the winner's accuracy, balanced accuracy and macro-F1."""
    out: dict = {}
    for sp, m in winner.items():
        for key, value in m.items():
            hit = DATASET_METRIC.match(key.replace(f"/{sp}_", "/val_"))
            if hit and sp in ("val", "test"):
                out.setdefault(hit.group(1), {}).setdefault(sp, {})[hit.group(2)[4:]] = value
    return out


def evaluate_elsewhere(ckpt: Path, eval_data, cache_dir, runtime) -> dict:
    """The winner on each ``eval_data`` dataset (its test, else its val): its folders mapped onto the
    winner's classes as ``fer_core.evaluate`` maps them, with the folders it left out."""
    if not eval_data:
        return {}
    state, out = load_checkpoint(ckpt), {}
    for entry in entries(eval_data, "eval_data"):
        sp = "test" if "test" in splits(state, entry) else "val"
        m = evaluate_checkpoint(ckpt, entry, sp, cache_dir=cache_dir, runtime=runtime)
        name = next(iter(m["folders"]))
        out[name] = {
            "root": entry["root"],
            "split": sp,
            "images": m[f"{sp}_samples"],
            **{k: m[f"{sp}_{k}"] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
            "left_out": m["left_out"],
        }
    return out


def write_report(
    settings: SweepSettings,
    data: str,
    trials: pd.DataFrame,
    members: list[dict],
    finals: list,
    *,
    out: Path,
    phases: Phases,
    audit: dict | None = None,
    budget=None,
) -> Path:
    """Write the report folder ``out``: the sweep, its retrained winner and (if several) their ensemble;
    returns ``out``. ``members`` (``top_trials``, winner first) and ``finals`` (their retrains' Ray Results)
    share one order; ``phases`` gets "report" ended here, so metrics.json and report.md time every phase."""
    step = Steps("report", 6 if len(members) > 1 else 5)
    out.mkdir(parents=True, exist_ok=True)
    # The retrain's final epoch is the winner (no extra selection on val): cosine ends at its lowest lr.
    copy_result_checkpoint(finals[0], out / "best.pt")
    # The config and class names come from the checkpoint itself, so best_config.yaml, metrics.json and the
    # plots describe the model in best.pt, whatever the settings of this run say (a resume, a changed YAML).
    state = load_checkpoint(out / "best.pt")
    config, classes = state["config"], list(state["class_names"])
    step("checkpoint, scores and temperature on " + " and ".join(splits(state, data)))
    standalone = {k: v for k, v in config.items() if k != "out"} | {k: FIELDS[k].default for k in TRIAL_ONLY}
    write_local(out / "best_config.yaml", yaml.safe_dump(standalone, sort_keys=False).encode(), out.parent)
    # Images are decoded where the trials decoded them: the default cache may be read-only or full.
    cache_dir = config.get("cache_dir") or None
    runtime = resolve_runtime()
    raw = score(out / "best.pt", data, cache_dir, runtime)  # at temperature 1: the retrain stores none
    ensembled = {}
    if len(members) > 1:  # first: the members, best.pt's copy included, are pooled as trained (T = 1)
        step("ensemble members' scores")
        seed = settings.retrain.get("seed", settings.train.seed)
        scoring = dict(data=data, cache_dir=cache_dir, runtime=runtime)
        ensembled = ensemble(out, members, finals, raw, classes, seed, **scoring)
    winner, calibration = calibrate_winner(out / "best.pt", raw)
    step("model.onnx and its speed" + (", the INT8 copy against it" if settings.int8 else ""))
    shipped = export_winner(settings, out / "best.pt", out, data=data, cache_dir=cache_dir)
    metrics = {
        "best_trial": members[0]["trial_id"],
        f"best_trial_{settings.metric}": members[0]["best"],
        "params": members[0]["params"],
        "metric": settings.metric,
        "mode": settings.mode,
        "objectives": dict(settings.objectives),
        "pick": settings.pick,
        "choice": members[0].get("reason", ""),
        "retrain_epochs": int(state["epoch"]),  # trained, as best.pt says: a time limit may stop it early
        "retrain_epochs_planned": int(config["epochs"]),
        "started_from": started_from(config),
        "device": runtime.describe(),
        "seed": int(config["seed"]),
        "search_seed": settings.seed,
        "data": data,
        "classes": classes,
        "per_dataset": per_dataset(winner),
        "eval_data": evaluate_elsewhere(out / "best.pt", settings.eval_data, cache_dir, runtime),
        "dedupe": config.get("dedupe", "none"),
        "trials": status_counts(trials),
        "calibration": calibration,
        **{k: v for sp, m in winner.items() for k, v in m.items() if k.startswith(f"{sp}_")},
        **ensembled,
        **shipped,
    }
    step("training curves, confusion matrix, per-class accuracy")
    val, history = winner["val"], finals[0].metrics_dataframe
    curves = [] if history is None else history.to_dict("records")
    viz.plot_training_curves(curves, out / "training_curves.png")
    title = f"Validation confusion matrix (accuracy {val['val_accuracy']:.3f})"
    viz.plot_confusion_matrix(val["val_confusion_matrix"], classes, out / "confusion_matrix.png", title=title)
    per_class, support = val["val_per_class_recall"], val["val_support"]
    viz.plot_per_class_accuracy(per_class, out / "per_class_accuracy.png", support=support)
    plot_reliability(raw, calibration["temperature"], out / RELIABILITY)
    step("hyperparameter plots")
    points, objectives = objective_points(trials, settings), settings.objectives
    space = to_optuna(settings.search_space)
    study, plot_notes = plots.build_study(trials, space, settings.mode, points, objectives)
    plot_notes += plots.write_plots(study, settings.metric, out)
    plots.save_study(study, settings.name, settings.metric, out / plots.STUDY_FILE)
    front = []
    if len(objectives) > 1:
        choice = pareto.Choice(members[0]["trial_id"], members[0]["reason"])
        pareto.plot_front(study, choice.trial_id, out / pareto.PARETO_FILE, objectives, settings.pick)
        front = [
            f"![Pareto front]({pareto.PARETO_FILE})",
            "",
            *pareto.front_lines(points, objectives, choice),
        ]
        front += pareto.other_rules(points, objectives, settings.pick)
    step("sample predictions, saliency maps, trials.csv, report.md and report.html")
    size, gray = config["img_size"], config["grayscale"]
    images = np.asarray(
        load_dataset(checkpoint_data(state, data)[0], "val", size, gray, cache_dir=cache_dir).images
    )
    labels, probs = val["labels"], val["probs"]
    pick = _sample_indices(labels, probs)
    samples = out / "sample_predictions.png"
    viz.plot_sample_predictions(images[pick], labels[pick], probs[pick], classes, samples)
    cm = val["val_confusion_matrix"]
    explain.write_saliency_figures(out / "best.pt", images, labels, probs, cm, classes, out, runtime)
    write_csv(trials, settings, out / "trials.csv")
    if audit is not None:
        write_local(out / "audit.json", json.dumps(audit, indent=1).encode(), out.parent)

    phases.end("report")
    timing = {"phases": phases.to_dict()}
    if budget is not None:
        timing |= {"plan": budget.lines(), "budget": budget.to_dict()}
    metrics |= {"wall_seconds": timing["phases"]["total"], "timing": timing}
    write_local(out / "metrics.json", json.dumps(metrics, indent=1).encode(), out.parent)
    write_markdown(settings, trials, metrics, out / "report.md", audit, plot_notes, front)
    write_card(out / "best.pt", out, metrics=metrics, audit=audit, choice=metrics["choice"])
    write_html(out / "report.md")  # last: it inlines every image report.md links
    return out
