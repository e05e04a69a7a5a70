"""A finished sweep in words: ``report.md`` and the summary printed at the end of the run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fer_core.audit import summarize
from fer_core.datasets import data_roots
from sweeps.config.settings import SweepSettings, fmt_duration
from sweeps.report import plots
from sweeps.report.calibration import markdown_lines as calibration_lines
from sweeps.report.escape import code, text
from sweeps.report.ship import CARD, INT8, ONNX
from sweeps.report.trials import STATUSES, device_lines, measured, ranked, status_counts
from sweeps.state.storage import write_local


def _fmt(v, cell) -> str:
    if v is None:  # a parameter of a trial stopped before it was given any
        return "nan"
    if isinstance(v, float):
        return "nan" if v != v else (f"{v:.3g}" if abs(v) < 0.01 or abs(v) >= 1000 else f"{v:.4f}")
    return cell(v)


def _table(columns, rows, cell=text) -> list[str]:
    """A markdown table (pandas' to_markdown needs the tabulate package), each cell as ``cell`` writes it:
    literal markdown text in report.md, ``str`` on stdout."""
    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_fmt(v, cell) for v in row) + " |" for row in rows]


def started_from(config: dict) -> str:
    """What a training config starts its weights from, in words (the report's "retrained from ...")."""
    if config.get("weights"):
        return f"the weights file {code(Path(config['weights']).name)}"
    return "ImageNet weights from timm's hub" if config.get("pretrained") else "random initialisation"


def trials_line(counts: dict) -> str:
    """How many trials ended each way (``status_counts``), as a sentence."""
    return f"{counts['total']} trials: " + ", ".join(f"{counts[s]} {w}" for s, w in STATUSES.items()) + "."


def _trial_table(trials: pd.DataFrame, settings: SweepSettings, limit: int, cell=text) -> list[str]:
    r = ranked(trials, settings).iloc[:limit]
    names, timed = [p.name for p in settings.search_space], measured(settings)
    shown = r[["trial_id", "status", "epochs", f"best_{settings.metric}", *timed, *names]]
    shown = shown.assign(status=shown["status"].map(STATUSES))
    columns = ["trial", "status", "epochs", settings.metric, *timed, *names]
    return _table(columns, shown.itertuples(index=False), cell)


def _score_table(m: dict, cell=text) -> list[str]:
    """The winner's scores (and the ensemble's) per split, without and with flip TTA."""
    models = [("winner", m)]
    if "ensemble" in m:
        models.append((f"ensemble of {len(m['ensemble']['members'])}", m["ensemble"]))
    keys = ("accuracy", "balanced_accuracy", "macro_f1")
    rows = [
        [name, sp, "flip" if tta else "none", *[f"{src[f'{sp}_{tta}{k}']:.4f}" for k in keys]]
        for sp in ("val", "test")
        if f"{sp}_accuracy" in m
        for tta in ("", "tta_")
        for name, src in models
    ]
    return _table(["model", "split", "TTA", "accuracy", "balanced accuracy", "macro-F1"], rows, cell)


def _dataset_lines(m: dict, cell=text) -> list[str]:
    """The winner per training dataset (several), and on the other datasets ``eval_data`` names."""
    keys = ("accuracy", "balanced_accuracy", "macro_f1")
    lines = []
    if m.get("per_dataset"):
        rows = [
            [name, sp, *[f"{v[k]:.4f}" for k in keys]]
            for name, by in m["per_dataset"].items()
            for sp, v in by.items()
        ]
        lines += [
            "\n### Per dataset\n",
            *_table(["dataset", "split", "accuracy", "balanced accuracy", "macro-F1"], rows, cell),
        ]
    if m.get("eval_data"):
        rows = [
            [
                name,
                v["split"],
                v["images"],
                *[f"{v[k]:.4f}" for k in keys],
                ", ".join(f"{f} ({n})" for f, n in v["left_out"].items()) or "none",
            ]
            for name, v in m["eval_data"].items()
        ]
        lines += [
            "\n### Other datasets (eval_data)\n",
            "The winner on datasets it was not trained on, their folders mapped onto its classes by name.\n",
            *_table(
                [
                    "dataset",
                    "split",
                    "images",
                    "accuracy",
                    "balanced accuracy",
                    "macro-F1",
                    "left out (images)",
                ],
                rows,
                cell,
            ),
        ]
    return lines


def _ensemble_lines(m: dict) -> list[str]:
    if "ensemble" not in m:
        return ["", f"No ensemble: {m['ensemble_skipped']}."] if "ensemble_skipped" in m else []
    ens = m["ensemble"]
    return [
        f"\nEnsemble: the average of the probabilities of the top {len(ens['members'])} distinct trial "
        "configurations, each retrained like the winner (checkpoints in `ensemble/`):\n",
        *[
            f"- {code(e['trial_id'])} (seed {e['seed']}): val accuracy {e['val_accuracy']:.4f}, {text(e['params'])}"
            for e in ens["members"]
        ],
        *[
            f"- {code(e['trial_id'])}: retrain failed ({text(e['error'])}); left out"
            for e in ens["failed_members"]
        ],
    ]


def _audit_lines(audit: dict | None, dedupe: str) -> list[str]:
    """The data section: the audit summary, and whether training left out cross-split duplicates."""
    used = (
        "`dedupe: cross_split`: train images that duplicate a val or test image were left out of training"
        if dedupe == "cross_split"
        else "`dedupe: none`: every train image was used, duplicates of val/test images included (comparable "
        "with published figures on the official splits; `dedupe: cross_split` gives leak-free ones)"
    )
    lines = ["", "## Data", "", f"- {used}."]
    if audit is not None:
        lines += [f"- {text(line)}" for line in summarize(audit)] + ["", "Full findings: `audit.json`."]
    return lines


def _planned(m: dict) -> str:
    """`` (of 8 planned: stopped by the time limit)`` when the retrain trained fewer epochs than planned."""
    planned = m.get("retrain_epochs_planned", m["retrain_epochs"])
    return f" (of {planned} planned: stopped by the time limit)" if planned != m["retrain_epochs"] else ""


def _time_lines(timing: dict) -> list[str]:
    """The time section: the time budget's plan (when there was one), each phase's time and the total."""
    plan = [f"    {line}" for line in timing["plan"]] + [""] if "plan" in timing else []
    phases = [[k, fmt_duration(v)] for k, v in timing["phases"].items()]
    return ["", "## Time", "", *plan, *_table(["phase", "time"], phases)]


def _saliency_lines(folder: Path) -> list[str]:
    """What the model looks at: the two saliency figures, when the report has them."""
    figures = {
        "saliency_by_class.png": "Where the winner looks for each expression: its mean class activation map "
        "(Grad-CAM) over the val images of that class, drawn over their mean face.",
        "confusions.png": "The class pairs it confuses most on val, with the faces it got most confidently wrong "
        "and, beside each, where it found the class it wrongly chose.",
    }
    shown = [(name, words) for name, words in figures.items() if (folder / name).is_file()]
    lines = ["\n## What the model looks at\n"] if shown else []
    for name, words in shown:
        lines += [words, "", f"![{name[:-4].replace('_', ' ')}]({name})", ""]
    return lines[:-1]


def _ship_lines(m: dict) -> list[str]:
    """The model to ship: ``model.onnx``'s speed, INT8 against FP32 (``int8: true``) and the model card."""
    lat = m["latency"]
    sizes = sorted(lat["batches"], key=int)
    lo, hi = lat["latency_iqr_ms"]
    lines = [
        "\n## The model to ship\n",
        f"`{ONNX}` (preprocessing and temperature inside, {lat['size_bytes'] / 1e6:.1f} MB): batch {sizes[0]} in "
        f"{lat['latency_ms']:.2f} ms (median, IQR {lo:.2f}-{hi:.2f}), batch {sizes[-1]} at "
        f"{lat['images_per_s']:.0f} images/s; onnxruntime, {lat['threads']} thread(s) on {text(lat['machine'])}.",
    ]
    int8 = m.get("int8")
    if int8 and "error" in int8:
        lines += ["", f"No INT8 model: {text(int8['error'])}"]
    elif int8:
        q = int8["quantization"] or {}
        rows = [
            [f"{split} {key}", r["fp32"][key], r["int8"][key]]
            for split, r in int8["splits"].items()
            for key in ("accuracy", "ece")
        ]
        rows += [
            [
                f"batch-1 latency (ms, {lat['threads']} thread(s))",
                *(int8["latency"][k]["latency_ms"] for k in ("fp32", "int8")),
            ]
        ]
        rows += [["images/s", *(round(int8["latency"][k]["images_per_s"]) for k in ("fp32", "int8"))]]
        rows += [["file (MB)", *(f"{int8['size_bytes'][k] / 1e6:.2f}" for k in ("fp32", "int8"))]]
        lines += [
            "",
            f"`{INT8}`: onnxruntime's {text(q.get('method', 'INT8'))} quantization.",
            "",
            *_table(["", "FP32", "INT8"], rows),
        ]
        if int8["warning"]:
            lines += ["", f"WARNING: {text(int8['warning'])}"]
    return lines + [
        "",
        f"Model card: `{CARD}` (the Hugging Face Hub's README format). `python -m fer_core.apps.export best.pt "
        "--hub DIR` writes the folder a Hub upload takes (model.onnx, model.safetensors, config.json, the card); "
        "nothing is uploaded.",
    ]


def _search_words(settings: SweepSettings) -> str:
    s, metric = settings.scheduler, settings.metric
    asha = f"ASHA (grace {s.grace_period}, max {s.max_epochs} epochs, reduction {s.reduction_factor:g})"
    if len(settings.objectives) == 1:
        return f"Search: Optuna TPE (seed {settings.seed}), {asha}; metric `{metric}` ({settings.mode})."
    both = ", ".join(f"`{k}` ({v})" for k, v in settings.objectives.items())
    return (
        f"Search: Optuna TPE (seed {settings.seed}) on the objectives {both}, {asha} on `{metric}` alone; "
        f"the trial retrained is chosen by the rule {code(settings.pick)}."
    )


def write_markdown(
    settings: SweepSettings,
    trials: pd.DataFrame,
    m: dict,
    path: Path,
    audit=None,
    plot_notes=(),
    front=(),
) -> None:
    """``report.md`` beside the figures: ``m`` is what metrics.json holds (its ``timing`` included), ``audit``
    the dataset audit's findings if any, ``plot_notes`` what ``plots.write_plots`` returned, ``front`` the
    Pareto front's section (``sweeps.report.pareto.front_lines``) of a sweep of several objectives."""
    metric = settings.metric
    failed = trials[trials["status"] == "failed"].to_dict("records")
    lines = [
        f"# Sweep report: {text(settings.name)}",
        "",
        f"Data: {code(', '.join(data_roots(m['data'])))}; classes {code(', '.join(m['classes']))}. Device: {text(m['device'])}. Wall time: {fmt_duration(m['wall_seconds'])} (every "
        f"phase, listed under Time). {_search_words(settings)}",
        "",
        trials_line(m["trials"]),
        *[f"\n{text(line)}" for line in device_lines(trials)],
        *_time_lines(m["timing"]),
        f"\n## Winner, retrained from {m['started_from']}\n",
        f"Trial {code(m['best_trial'])} ({metric} {m[f'best_trial_{metric}']:.4f} during the sweep), retrained for "
        f"{m['retrain_epochs']} epochs{_planned(m)} from {m['started_from']} (not from its trial's checkpoint) "
        "with seed "
        f"{m['seed']}: `best.pt`, config in `best_config.yaml`.",
        "",
        *([f"Why this trial: {text(m['choice'])}", ""] if len(settings.objectives) > 1 else []),
        f"Seeds: training {m['seed']}, search (TPE) {settings.seed}. "
        "TTA \"flip\" averages each image's and its mirror image's probabilities.",
        "",
        *_score_table(m),
        *_dataset_lines(m),
        *_ensemble_lines(m),
        *calibration_lines(m),
        *_ship_lines(m),
        *_audit_lines(audit, m["dedupe"]),
        "\n## Training\n",
        "![training curves](training_curves.png)",
        "![confusion matrix](confusion_matrix.png)",
        "![per-class accuracy](per_class_accuracy.png)",
        "![sample predictions](sample_predictions.png)",
        *_saliency_lines(path.parent),
        *(["\n## Accuracy against speed\n", *front] if front else []),
        "\n## The search\n",
        "Optuna's plots of the sweep's study. Per epoch: every trial, those stopped early by ASHA dashed, those "
        "stopped by the time limit dotted, failed ones in red. The parameter plots: every trial that reported "
        f"`{metric}`, with its best epoch's value (also the trials stopped before their last epoch).",
        "",
        *[f"![{key}]({name})" for key, name in plots.FILES.items() if (path.parent / name).is_file()],
        *[f"\n{note}" for note in plot_notes],
        "\n### Top trials\n",
        *_trial_table(trials, settings, limit=10),
        "\nAll trials: `trials.csv`.",
        *(["", "## Failed trials", ""] if failed else []),
        *[f"- {code(t['trial_id'])} with {code(t['params'])}: {code(t['error'])}" for t in failed],
    ]
    write_local(path, ("\n".join(lines) + "\n").encode())


def print_summary(
    trials: pd.DataFrame, settings: SweepSettings, out: Path | None = None, time_line: str = ""
) -> None:
    """The end-of-run summary on stdout: how the trials ended, the top ones, failures, where they trained,
    the retrained models' scores and report (given ``out``, a written report folder) and ``time_line``."""
    lines = [
        trials_line(status_counts(trials)),
        "Top trials:",
        *_trial_table(trials, settings, limit=5, cell=str),
    ]
    failed = trials[trials["status"] == "failed"].to_dict("records")
    lines += [f"FAILED trial {t['trial_id']} {t['params']}: {t['error']}" for t in failed]
    lines += device_lines(trials)
    if out is not None:
        m = json.loads((out / "metrics.json").read_text())
        lines += ["", "Retrained:", *_score_table(m, cell=str), f"Report: {out / 'report.md'}"]
    if time_line:
        lines.append(time_line)
    print("\n" + "\n".join(lines), flush=True)
