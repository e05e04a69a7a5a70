"""Turn a finished sweep into STORAGE/NAME/report/: winner checkpoint, metrics, plots and report.md."""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from fer_core import viz
from fer_core.config import config_to_dict, make_config
from fer_core.data import load_split
from fer_core.engine import probs_metrics
from fer_core.evaluate import evaluate_checkpoint
from fer_core.runtime import resolve_runtime

from .settings import SweepSettings

# Columns of Ray's per-epoch rows that the plots and tables use.
_ROW_KEYS = ("training_iteration", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
             "val_balanced_accuracy", "val_macro_f1", "epoch_seconds", "images_per_s", "device", "ray_gpus")


def _rows(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or df.empty:
        return []
    cols = [c for c in _ROW_KEYS if c in df.columns]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in df[cols].to_dict("records")]


def collect_trials(results, settings: SweepSettings) -> list[dict]:
    """One dict per trial: id, params, status, per-epoch history, best/last metric, early stop, error.

    Args:
        results: Ray Tune ResultGrid of the sweep.
        settings: the sweep settings (metric, mode, max epochs).
    """
    searched = [p.name for p in settings.search_space]
    sign = 1 if settings.mode == "max" else -1
    trials = []
    for res in results:
        hist = _rows(res)
        values = [r[settings.metric] for r in hist if settings.metric in r and not _nan(r[settings.metric])]
        error = res.error
        trials.append({
            "trial_id": (res.metrics or {}).get("trial_id") or Path(res.path).name,
            "params": {k: (res.config or {}).get(k) for k in searched},  # no config: it failed before starting
            "status": "ERROR" if error else "TERMINATED",
            "error": f"{type(error).__name__}: {_first_line(error)}" if error else "",
            "history": hist,
            "epochs": len(hist),
            "best": max(values, key=lambda v: sign * v) if values else math.nan,
            "last": values[-1] if values else math.nan,
            "stopped_early": not error and len(hist) < settings.scheduler.max_epochs,
            "path": res.path,
            "device": hist[-1].get("device", "") if hist else "",
            "ray_gpus": hist[-1].get("ray_gpus", 0) if hist else 0,
        })
    return trials


def device_lines(trials: list[dict]) -> list[str]:
    """Where the trials trained, and a WARNING for each one that Ray gave a GPU but that trained on a CPU."""
    counts: dict[str, int] = {}
    for t in trials:
        if t["device"]:
            counts[t["device"]] = counts.get(t["device"], 0) + 1
    lines = ["Trials trained on: " + ", ".join(f"{d} ({n})" for d, n in sorted(counts.items()))] if counts else []
    lines += [f"WARNING: trial {t['trial_id']} was given {t['ray_gpus']} GPU(s) by Ray but trained on {t['device']}: "
              "that node's GPU is not visible to PyTorch (driver, CUDA build of torch, CUDA_VISIBLE_DEVICES)"
              for t in trials if t["ray_gpus"] and t["device"] and not t["device"].startswith("cuda")]
    return lines


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _first_line(error) -> str:
    # Ray wraps trial exceptions; the root cause's own message is the useful line.
    cause = error
    while getattr(cause, "__cause__", None) is not None:
        cause = cause.__cause__
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(cause).__name__


def ranked(trials: list[dict], settings: SweepSettings) -> list[dict]:
    sign = 1 if settings.mode == "max" else -1
    return sorted(trials, key=lambda t: (t["status"] == "ERROR" or _nan(t["best"]), -sign * (0 if _nan(t["best"]) else t["best"])))


def top_trials(trials: list[dict], settings: SweepSettings, k: int) -> list[dict]:
    """The best ``k`` finished trials with distinct parameters, best first (the ensemble's members).

    Args:
        trials: from ``collect_trials``.
        settings: metric and mode.
        k: how many.
    """
    out, seen = [], set()
    for t in ranked(trials, settings):
        if t["status"] == "ERROR" or _nan(t["best"]):
            continue
        key = json.dumps(t["params"], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(t)
        if len(out) == k:
            break
    return out


def _copy_final_checkpoint(result, dst: Path) -> None:
    """Copy a retrain's last reported checkpoint (``last.pt`` in Ray's checkpoint folder) to ``dst``."""
    with tempfile.TemporaryDirectory() as tmp:
        result.checkpoint.to_directory(tmp)
        shutil.copy2(Path(tmp) / "last.pt", dst)


def _split_scores(ckpt: Path, data: str, split: str, runtime) -> dict:
    """A checkpoint's metrics on a split, plain and with flip TTA, with both probability arrays."""
    return evaluate_checkpoint(ckpt, data, split, runtime=runtime, return_probs=True, tta_flip=True)


def ensemble_metrics(scores: list[dict], split: str, classes: list[str]) -> dict:
    """Metrics of the average of the members' probabilities, plain and with flip TTA.

    Args:
        scores: per member, the output of ``evaluate_checkpoint(..., return_probs=True, tta_flip=True)``.
        split: split name (the key prefix).
        classes: class names in label order.
    """
    labels = scores[0]["labels"]
    out = {}
    for key, prefix in (("probs", f"{split}_"), ("probs_tta", f"{split}_tta_")):
        avg = np.mean([s[key] for s in scores], axis=0)
        m = probs_metrics(avg, labels, classes, prefix)
        out.update({k: m[k] for k in (prefix + "accuracy", prefix + "balanced_accuracy", prefix + "macro_f1")})
    return out


def _importances(trials: list[dict], settings: SweepSettings) -> dict:
    """fANOVA importance of each searched parameter over the finished trials (empty if too few)."""
    import optuna

    from .space import to_optuna

    dists = to_optuna(settings.search_space)
    done = [t for t in trials if t["status"] != "ERROR" and not _nan(t["best"])]
    if len(done) < 3:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if settings.mode == "max" else "minimize")
    for t in done:
        params = {k: v for k, v in t["params"].items() if k in dists}
        try:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t["best"]))
        except ValueError:  # a value outside its distribution (e.g. an initial point): leave that trial out
            continue
    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        return {}


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


def write_report(settings: SweepSettings, data: str, trials: list[dict], members: list[dict], finals: list,
                 wall_s: float, audit: dict | None = None) -> Path:
    """Write report/ for the sweep, the retrained winner and (with several members) their ensemble.

    Args:
        settings: sweep settings.
        data: dataset root used.
        trials: from ``collect_trials``.
        members: the retrained trials, the winner first (``top_trials``).
        finals: Ray Results of their retrains, in the same order.
        wall_s: seconds since the sweep started (the report states it).
        audit: the dataset audit's findings (``fer_core.audit.audit_dataset``): written to ``audit.json``,
            summarised in ``report.md``.
    """
    best, final = members[0], finals[0]
    storage = settings.storage
    root = Path(storage).expanduser().resolve() / settings.name if "://" not in storage else Path("runs") / settings.name
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)

    # The retrain's final epoch is the winner (no extra selection on val): cosine ends at its lowest lr.
    _copy_final_checkpoint(final, out / "best.pt")
    winner_cfg = make_config({**config_to_dict(settings.train), **settings.retrain, **best["params"], "data": data,
                              "epochs": settings.retrain_epochs})
    cfg_dict = config_to_dict(winner_cfg)
    cfg_dict.pop("out")
    (out / "best_config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))

    runtime = resolve_runtime()
    metrics = {"best_trial": best["trial_id"], "best_trial_" + settings.metric: best["best"], "params": best["params"],
               "metric": settings.metric, "mode": settings.mode, "retrain_epochs": settings.retrain_epochs,
               "device": runtime.describe(), "wall_seconds": round(wall_s, 1), "seed": winner_cfg.seed,
               "search_seed": settings.seed, "data": data, "dedupe": winner_cfg.dedupe,
               "trials": {"total": len(trials), "failed": sum(t["status"] == "ERROR" for t in trials),
                          "stopped_early": sum(t["stopped_early"] for t in trials)}}
    splits = ["val"] + (["test"] if (Path(data) / "test").is_dir() else [])
    scores = {sp: [_split_scores(out / "best.pt", data, sp, runtime)] for sp in splits}
    val = scores["val"][0]
    probs, labels = val["probs"], val["labels"]
    for sp in splits:
        metrics.update({k: v for k, v in scores[sp][0].items() if k.startswith(f"{sp}_")})

    # The ensemble: the other members' final checkpoints beside the winner's, probabilities averaged.
    ok = [(t, r) for t, r in zip(members, finals) if not r.error]
    if len(members) > 1 and len(ok) < 2:
        metrics["ensemble_skipped"] = f"{len(members) - len(ok)} of {len(members)} member retrains failed; an ensemble needs two"
    if len(ok) > 1:
        ens_dir = out / "ensemble"
        ens_dir.mkdir(exist_ok=True)
        shutil.copy2(out / "best.pt", ens_dir / "member0.pt")
        for i, (t, r) in enumerate(ok[1:], start=1):
            _copy_final_checkpoint(r, ens_dir / f"member{i}.pt")
            for sp in splits:
                scores[sp].append(_split_scores(ens_dir / f"member{i}.pt", data, sp, runtime))
        classes_ = list(val["val_support"])
        metrics["ensemble"] = {
            "members": [{"trial_id": t["trial_id"], "params": t["params"], "checkpoint": f"ensemble/member{i}.pt",
                         "seed": int(t["params"].get("seed", settings.retrain.get("seed", settings.train.seed))),
                         "val_accuracy": scores["val"][i]["val_accuracy"]}
                        for i, (t, r) in enumerate(ok)],
            "failed_members": [{"trial_id": t["trial_id"], "error": str(r.error)[:300]} for t, r in zip(members, finals) if r.error],
        }
        for sp in splits:
            metrics["ensemble"].update(ensemble_metrics(scores[sp], sp, classes_))
    for sp in splits:
        for key in ("probs", "probs_tta", "labels"):
            scores[sp][0].pop(key, None)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    classes = list(val["val_support"])
    history = _rows(final)
    viz.plot_training_curves(history, out / "training_curves.png")
    viz.plot_confusion_matrix(val["val_confusion_matrix"], classes, out / "confusion_matrix.png",
                              title=f"Validation confusion matrix (accuracy {val['val_accuracy']:.3f})")
    viz.plot_per_class_accuracy(val["val_per_class_recall"], out / "per_class_accuracy.png", support=val["val_support"])
    viz.plot_sweep_history(trials, settings.metric, out / "sweep_history.png", mode=settings.mode)
    names = [p.name for p in settings.search_space]
    rows = [{**t["params"], settings.metric: t["best"]} for t in trials if t["status"] != "ERROR" and not _nan(t["best"])]
    viz.plot_param_vs_metric(rows, names, settings.metric, out / "param_vs_metric.png",
                             log_params={p.name for p in settings.search_space if p.is_log})
    viz.plot_param_importance(_importances(trials, settings), out / "param_importance.png")
    pre = yaml.safe_load((out / "best_config.yaml").read_text())
    split = load_split(data, "val", pre["img_size"], pre["grayscale"])
    pick = _sample_indices(labels, probs)
    viz.plot_sample_predictions(np.asarray(split.images)[pick], labels[pick], probs[pick], classes, out / "sample_predictions.png")

    _write_trials_csv(trials, settings, out / "trials.csv")
    if audit is not None:
        (out / "audit.json").write_text(json.dumps(audit, indent=1))
    _write_markdown(settings, trials, best, metrics, out / "report.md", audit)
    return out


def _write_trials_csv(trials: list[dict], settings: SweepSettings, path: Path) -> None:
    names = [p.name for p in settings.search_space]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "status", "epochs", "stopped_early", f"best_{settings.metric}", f"last_{settings.metric}", *names, "device", "ray_gpus", "error"])
        for t in ranked(trials, settings):
            w.writerow([t["trial_id"], t["status"], t["epochs"], t["stopped_early"], t["best"], t["last"],
                        *[t["params"].get(n) for n in names], t["device"], t["ray_gpus"], t["error"]])


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 0.01 or abs(v) >= 1000 else f"{v:.4f}")
    return str(v)


def _trial_table(trials: list[dict], settings: SweepSettings, limit: int | None = None) -> list[str]:
    names = [p.name for p in settings.search_space]
    head = ["trial", "status", "epochs", settings.metric, *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in ranked(trials, settings)[:limit]:
        status = "failed" if t["status"] == "ERROR" else ("stopped early (ASHA)" if t["stopped_early"] else "completed")
        lines.append("| " + " | ".join([t["trial_id"], status, str(t["epochs"]), _fmt(t["best"]), *[_fmt(t["params"].get(n)) for n in names]]) + " |")
    return lines


def _audit_lines(audit: dict | None, dedupe: str) -> list[str]:
    """report.md's data section: the audit summary, and whether training left out cross-split duplicates."""
    from fer_core.audit import summarize

    used = ("`dedupe: cross_split`: train images that duplicate a val or test image were left out of training"
            if dedupe == "cross_split" else
            "`dedupe: none`: every train image was used, duplicates of val/test images included (comparable with "
            "published figures on the official splits; `dedupe: cross_split` gives leak-free ones)")
    lines = ["", "## Data", "", f"- {used}."]
    if audit is not None:
        lines += [f"- {line}" for line in summarize(audit)] + ["", "Full findings: `audit.json`."]
    return lines


def _write_markdown(settings: SweepSettings, trials: list[dict], best: dict, m: dict, path: Path,
                    audit: dict | None = None) -> None:
    failed = [t for t in trials if t["status"] == "ERROR"]
    results = []
    ens = m.get("ensemble")
    for sp in ("val", "test"):
        if f"{sp}_accuracy" not in m:
            continue
        for tta in ("", "tta_"):
            results.append(f"| winner | {sp} | {'flip' if tta else 'none'} | {m[f'{sp}_{tta}accuracy']:.4f} | "
                           f"{m[f'{sp}_{tta}balanced_accuracy']:.4f} | {m[f'{sp}_{tta}macro_f1']:.4f} |")
            if ens:
                results.append(f"| ensemble of {len(ens['members'])} | {sp} | {'flip' if tta else 'none'} | {ens[f'{sp}_{tta}accuracy']:.4f} | "
                               f"{ens[f'{sp}_{tta}balanced_accuracy']:.4f} | {ens[f'{sp}_{tta}macro_f1']:.4f} |")
    ens_lines = []
    if ens:
        ens_lines = ["", f"Ensemble: the average of the probabilities of the top {len(ens['members'])} distinct trial configurations, "
                     f"each retrained like the winner (checkpoints in `ensemble/`):", ""]
        ens_lines += [f"- `{e['trial_id']}` (seed {e['seed']}): val accuracy {e['val_accuracy']:.4f}, {e['params']}" for e in ens["members"]]
        ens_lines += [f"- `{e['trial_id']}`: retrain failed ({e['error']}); left out" for e in ens["failed_members"]]
    elif "ensemble_skipped" in m:
        ens_lines = ["", f"No ensemble: {m['ensemble_skipped']}."]
    lines = [
        f"# Sweep report: {settings.name}",
        "",
        f"Data: `{m['data']}`. Device: {m['device']}. Wall time (sweep + retrain + report): {m['wall_seconds']:.0f} s. "
        f"Search: Optuna TPE (seed {settings.seed}), ASHA (grace {settings.scheduler.grace_period}, max {settings.scheduler.max_epochs} epochs, "
        f"reduction {settings.scheduler.reduction_factor:g}); metric `{settings.metric}` ({settings.mode}).",
        "",
        f"{m['trials']['total']} trials: {m['trials']['total'] - m['trials']['failed'] - m['trials']['stopped_early']} ran to the end, "
        f"{m['trials']['stopped_early']} stopped early by ASHA, {m['trials']['failed']} failed.",
        *[f"\n{line}" for line in device_lines(trials)],
        "",
        "## Winner, retrained from scratch",
        "",
        f"Trial `{best['trial_id']}` ({settings.metric} {best['best']:.4f} during the sweep), retrained for "
        f"{settings.retrain_epochs} epochs with seed {m['seed']}: `best.pt`, config in `best_config.yaml`.",
        "",
        f"Seeds: training {m['seed']}, search (TPE) {settings.seed}. "
        f"TTA \"flip\" averages each image's and its mirror image's probabilities.",
        "",
        "| model | split | TTA | accuracy | balanced accuracy | macro-F1 |",
        "|---|---|---|---|---|---|",
        *results,
        *ens_lines,
        *_audit_lines(audit, m["dedupe"]),
        "",
        "## Training",
        "",
        "![training curves](training_curves.png)",
        "![confusion matrix](confusion_matrix.png)",
        "![per-class accuracy](per_class_accuracy.png)",
        "![sample predictions](sample_predictions.png)",
        "",
        "## The search",
        "",
        "![sweep history](sweep_history.png)",
        "![parameters vs metric](param_vs_metric.png)",
        "![importance](param_importance.png)",
        "",
        "### Top trials",
        "",
        *_trial_table(trials, settings, limit=10),
        "",
        f"All trials: `trials.csv`.",
    ]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- `{t['trial_id']}` with {t['params']}: {t['error']}" for t in failed]
    path.write_text("\n".join(lines) + "\n")


def print_summary(trials: list[dict], settings: SweepSettings, report_dir: Path | None) -> None:
    """The end-of-run summary on stdout: top trials, failures, where the report is."""
    print("\nTop trials:")
    print("\n".join(_trial_table(trials, settings, limit=5)))
    for t in trials:
        if t["status"] == "ERROR":
            print(f"FAILED trial {t['trial_id']} {t['params']}: {t['error']}")
    for line in device_lines(trials):
        print(line)
    if report_dir is not None:
        m = json.loads((report_dir / "metrics.json").read_text())
        test = f", test accuracy {m['test_accuracy']:.4f}" if "test_accuracy" in m else ""
        print(f"\nRetrained winner: val accuracy {m['val_accuracy']:.4f} (flip TTA {m['val_tta_accuracy']:.4f}), "
              f"macro-F1 {m['val_macro_f1']:.4f}{test}")
        if "ensemble" in m:
            e = m["ensemble"]
            print(f"Ensemble of {len(e['members'])}: val accuracy {e['val_accuracy']:.4f} (flip TTA {e['val_tta_accuracy']:.4f}), "
                  f"macro-F1 {e['val_macro_f1']:.4f}")
        print(f"Report: {report_dir / 'report.md'}")
