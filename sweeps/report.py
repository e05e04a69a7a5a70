"""Turn a finished sweep into STORAGE/NAME/report/: winner checkpoint, metrics, plots and report.md."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fer_core.apps import viz
from fer_core.checkpoint import load_checkpoint
from fer_core.config import FIELDS
from fer_core.decode_cache import load_split
from fer_core.evaluate import ensemble_metrics, evaluate_checkpoint
from fer_core.runtime import resolve_runtime

from . import plots
from .progress import Steps
from .settings import SweepSettings
from .space import to_optuna
from .summary import write_markdown, write_trials_csv

# TrainConfig keys the sweep sets for its trials (sweeps/run.py, sweeps/trainable.py): reset to their defaults
# in best_config.yaml, which is for rerunning the winner standalone.
TRIAL_ONLY = ("threads", "audit", "progress", "keep_checkpoints")


def _copy_final_checkpoint(result, dst: Path) -> None:
    """Copy a retrain's last reported checkpoint (``last.pt`` in Ray's checkpoint folder) to ``dst``."""
    with tempfile.TemporaryDirectory() as tmp:
        result.checkpoint.to_directory(tmp)
        shutil.copy2(Path(tmp) / "last.pt", dst)


def _split_scores(ckpt: Path, data: str, split: str, runtime) -> dict:
    """A checkpoint's metrics on a split, plain and with flip TTA, with both probability arrays."""
    return evaluate_checkpoint(ckpt, data, split, runtime=runtime, return_probs=True, tta_flip=True)


def _sample_indices(labels: np.ndarray, probs: np.ndarray, n: int = 16, seed: int = 0) -> np.ndarray:
    """A spread of samples: a few per class, right and wrong ones both shown when they exist."""
    rng = np.random.default_rng(seed)
    pred = probs.argmax(1)
    picked = []
    for c in range(probs.shape[1]):
        for right in (True, False):
            idx = np.flatnonzero((labels == c) & ((pred == labels) == right))
            if len(idx):
                picked.append(int(rng.choice(idx)))
    return np.asarray(picked[:n])


def write_report(
    settings: SweepSettings,
    data: str,
    trials: pd.DataFrame,
    members: list[dict],
    finals: list,
    wall_s: float,
    audit: dict | None = None,
    timing: dict | None = None,
) -> Path:
    """Write report/ for the sweep, the retrained winner and (with several members) their ensemble.

    Args:
        settings: sweep settings.
        data: dataset root used.
        trials: the trials table (``collect_trials``).
        members: the retrained trials, the winner first (``top_trials``).
        finals: Ray Results of their retrains, in the same order.
        wall_s: seconds since the sweep started (the report states it).
        audit: the dataset audit's findings (``fer_core.audit.audit_dataset``): written to ``audit.json``,
            summarised in ``report.md``.
        timing: the phases' seconds so far and the time budget's plan, if any (``metrics.json``'s
            ``timing``; ``report.md``'s "Time" section).
    """
    step = Steps("report", 5 if len(members) > 1 else 4)
    step("checkpoint and scores on " + ("val and test" if (Path(data) / "test").is_dir() else "val"))
    best, final = members[0], finals[0]
    storage = settings.storage
    root = (
        Path(storage).expanduser().resolve() / settings.name
        if "://" not in storage
        else Path("runs") / settings.name
    )
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)

    # The retrain's final epoch is the winner (no extra selection on val): cosine ends at its lowest lr.
    _copy_final_checkpoint(final, out / "best.pt")
    # The config and class names come from the checkpoint itself, so best_config.yaml, metrics.json and the
    # plots describe the model in best.pt, whatever the settings of this run say (a resume, a changed YAML).
    state = load_checkpoint(out / "best.pt")
    cfg_dict = {k: v for k, v in state["config"].items() if k != "out"}
    for key in (
        TRIAL_ONLY
    ):  # how a trial ran under Ray, not what the model is: a standalone rerun wants the defaults
        cfg_dict[key] = FIELDS[key].default
    (out / "best_config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    classes = list(state["class_names"])

    runtime = resolve_runtime()
    metrics = {
        "best_trial": best["trial_id"],
        "best_trial_" + settings.metric: best["best"],
        "params": best["params"],
        "metric": settings.metric,
        "mode": settings.mode,
        "retrain_epochs": int(state["config"]["epochs"]),
        "device": runtime.describe(),
        "wall_seconds": round(wall_s, 1),
        "seed": int(state["config"]["seed"]),
        "search_seed": settings.seed,
        "data": data,
        "dedupe": state["config"].get("dedupe", "none"),
        **({"timing": timing} if timing else {}),
        "trials": {
            "total": len(trials),
            "failed": int((trials["status"] == "ERROR").sum()),
            "stopped_early": int(trials["stopped_early"].sum()),
        },
    }
    splits = ["val"] + (["test"] if (Path(data) / "test").is_dir() else [])
    scores = {sp: [_split_scores(out / "best.pt", data, sp, runtime)] for sp in splits}
    val = scores["val"][0]
    probs, labels = val["probs"], val["labels"]
    for sp in splits:
        metrics.update({k: v for k, v in scores[sp][0].items() if k.startswith(f"{sp}_")})

    # The ensemble: the other members' final checkpoints beside the winner's, probabilities averaged.
    ok = [(t, r) for t, r in zip(members, finals) if not r.error]
    if len(members) > 1 and len(ok) < 2:
        metrics["ensemble_skipped"] = (
            f"{len(members) - len(ok)} of {len(members)} member retrains failed; an ensemble needs two"
        )
    if len(members) > 1:
        step("ensemble members' scores")
    if len(ok) > 1:
        ens_dir = out / "ensemble"
        ens_dir.mkdir(exist_ok=True)
        shutil.copy2(out / "best.pt", ens_dir / "member0.pt")
        for i, (_, r) in enumerate(ok[1:], start=1):
            _copy_final_checkpoint(r, ens_dir / f"member{i}.pt")
            for sp in splits:
                scores[sp].append(_split_scores(ens_dir / f"member{i}.pt", data, sp, runtime))
        metrics["ensemble"] = {
            "members": [
                {
                    "trial_id": t["trial_id"],
                    "params": t["params"],
                    "checkpoint": f"ensemble/member{i}.pt",
                    "seed": int(t["params"].get("seed", settings.retrain.get("seed", settings.train.seed))),
                    "val_accuracy": scores["val"][i]["val_accuracy"],
                }
                for i, (t, r) in enumerate(ok)
            ],
            "failed_members": [
                {"trial_id": t["trial_id"], "error": str(r.error)[:300]}
                for t, r in zip(members, finals)
                if r.error
            ],
        }
        for sp in splits:
            metrics["ensemble"].update(ensemble_metrics(scores[sp], sp, classes))
    for sp in splits:
        for key in ("probs", "probs_tta", "labels"):
            scores[sp][0].pop(key, None)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    step("training curves, confusion matrix, per-class accuracy")
    history = final.metrics_dataframe
    viz.plot_training_curves(
        [] if history is None else history.to_dict("records"), out / "training_curves.png"
    )
    viz.plot_confusion_matrix(
        val["val_confusion_matrix"],
        classes,
        out / "confusion_matrix.png",
        title=f"Validation confusion matrix (accuracy {val['val_accuracy']:.3f})",
    )
    viz.plot_per_class_accuracy(
        val["val_per_class_recall"], out / "per_class_accuracy.png", support=val["val_support"]
    )
    step("hyperparameter plots")
    study, plot_notes = plots.build_study(
        trials, to_optuna(settings.search_space), settings.mode, settings.scheduler.max_epochs
    )
    plot_notes += plots.write_plots(study, settings.metric, out)
    step("sample predictions, trials.csv, report.md")
    split = load_split(data, "val", state["config"]["img_size"], state["config"]["grayscale"])
    pick = _sample_indices(labels, probs)
    viz.plot_sample_predictions(
        np.asarray(split.images)[pick], labels[pick], probs[pick], classes, out / "sample_predictions.png"
    )

    write_trials_csv(trials, settings, out / "trials.csv")
    if audit is not None:
        (out / "audit.json").write_text(json.dumps(audit, indent=1))
    write_markdown(settings, trials, best, metrics, out / "report.md", audit, plot_notes)
    return out
