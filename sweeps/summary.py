"""A finished sweep in words: ``report.md``, ``trials.csv`` and the summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .budget import fmt_duration
from .settings import SweepSettings
from .trials import device_lines, ranked


def _with_params(trials: pd.DataFrame, settings: SweepSettings) -> pd.DataFrame:
    """The trials ranked, with one column per searched parameter."""
    names = [p.name for p in settings.search_space]
    r = ranked(trials, settings)
    return r.join(pd.DataFrame(r["params"].tolist(), index=r.index).reindex(columns=names))


def write_trials_csv(trials: pd.DataFrame, settings: SweepSettings, path: Path) -> None:
    m = settings.metric
    cols = [
        "trial_id",
        "status",
        "epochs",
        "stopped_early",
        f"best_{m}",
        f"last_{m}",
        *[p.name for p in settings.search_space],
        "device",
        "ray_gpus",
        "error",
    ]
    _with_params(trials, settings)[cols].to_csv(path, index=False, na_rep="nan")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else (f"{v:.3g}" if abs(v) < 0.01 or abs(v) >= 1000 else f"{v:.4f}")
    return str(v)


def _trial_table(trials: pd.DataFrame, settings: SweepSettings, limit: int | None = None) -> list[str]:
    """The ranked trials as a markdown table (pandas' to_markdown needs the tabulate package)."""
    r = _with_params(trials, settings).iloc[:limit]
    status = np.select(
        # epochs == 0: a time limit stopped it before its first epoch ended
        [r["status"] == "ERROR", r["epochs"] == 0, r["stopped_early"]],
        ["failed", "stopped before an epoch", "stopped early (ASHA)"],
        default="completed",
    )
    shown = pd.concat(
        [
            pd.DataFrame(
                {
                    "trial": r["trial_id"],
                    "status": status,
                    "epochs": r["epochs"],
                    settings.metric: r[f"best_{settings.metric}"],
                },
                index=r.index,
            ),
            r[[p.name for p in settings.search_space]],
        ],
        axis=1,
    )
    return [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "---|" * len(shown.columns),
        *["| " + " | ".join(_fmt(v) for v in row) + " |" for row in shown.itertuples(index=False)],
    ]


def _audit_lines(audit: dict | None, dedupe: str) -> list[str]:
    """report.md's data section: the audit summary, and whether training left out cross-split duplicates."""
    from fer_core.audit import summarize

    used = (
        "`dedupe: cross_split`: train images that duplicate a val or test image were left out of training"
        if dedupe == "cross_split"
        else "`dedupe: none`: every train image was used, duplicates of val/test images included (comparable with "
        "published figures on the official splits; `dedupe: cross_split` gives leak-free ones)"
    )
    lines = ["", "## Data", "", f"- {used}."]
    if audit is not None:
        lines += [f"- {line}" for line in summarize(audit)] + ["", "Full findings: `audit.json`."]
    return lines


def _time_lines(timing: dict | None) -> list[str]:
    """report.md's "Time" section: the time budget's plan (when there was one) and each phase's time."""
    if not timing:
        return []
    lines = ["", "## Time", ""]
    if timing.get("plan"):
        lines += [f"    {line}" for line in timing["plan"]] + [""]
    phases = timing.get("phases", {})
    lines += ["| phase | time |", "|---|---|"]
    lines += [f"| {k} | {fmt_duration(v)} |" for k, v in phases.items() if k != "total"]
    return lines + [_REPORT_ROW]


_REPORT_ROW = "| report | (being written) |"


def write_timing(report_dir: Path, phases: dict) -> None:
    """Add the finished phases' times (the report's and the total included) to ``metrics.json`` and to
    ``report.md``'s time table, once the report is written."""
    path = report_dir / "metrics.json"
    m = json.loads(path.read_text())
    m.setdefault("timing", {})["phases"] = phases
    path.write_text(json.dumps(m, indent=1))
    md = report_dir / "report.md"
    rows = f"| report | {fmt_duration(phases['report'])} |\n| total | {fmt_duration(phases['total'])} |"
    md.write_text(md.read_text().replace(_REPORT_ROW, rows))


def write_markdown(
    settings: SweepSettings,
    trials: pd.DataFrame,
    best: dict,
    m: dict,
    path: Path,
    audit: dict | None = None,
    plot_notes: list[str] = (),
) -> None:
    failed = trials[trials["status"] == "ERROR"].to_dict("records")
    results = []
    ens = m.get("ensemble")
    for sp in ("val", "test"):
        if f"{sp}_accuracy" not in m:
            continue
        for tta in ("", "tta_"):
            results.append(
                f"| winner | {sp} | {'flip' if tta else 'none'} | {m[f'{sp}_{tta}accuracy']:.4f} | "
                f"{m[f'{sp}_{tta}balanced_accuracy']:.4f} | {m[f'{sp}_{tta}macro_f1']:.4f} |"
            )
            if ens:
                results.append(
                    f"| ensemble of {len(ens['members'])} | {sp} | {'flip' if tta else 'none'} | {ens[f'{sp}_{tta}accuracy']:.4f} | "
                    f"{ens[f'{sp}_{tta}balanced_accuracy']:.4f} | {ens[f'{sp}_{tta}macro_f1']:.4f} |"
                )
    ens_lines = []
    if ens:
        ens_lines = [
            "",
            f"Ensemble: the average of the probabilities of the top {len(ens['members'])} distinct trial configurations, "
            f"each retrained like the winner (checkpoints in `ensemble/`):",
            "",
        ]
        ens_lines += [
            f"- `{e['trial_id']}` (seed {e['seed']}): val accuracy {e['val_accuracy']:.4f}, {e['params']}"
            for e in ens["members"]
        ]
        ens_lines += [
            f"- `{e['trial_id']}`: retrain failed ({e['error']}); left out" for e in ens["failed_members"]
        ]
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
        *_time_lines(m.get("timing")),
        "",
        "## Winner, retrained from scratch",
        "",
        f"Trial `{best['trial_id']}` ({settings.metric} {best['best']:.4f} during the sweep), retrained for "
        f"{m['retrain_epochs']} epochs with seed {m['seed']}: `best.pt`, config in `best_config.yaml`.",
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
        f"Optuna's plots of the sweep's study. Per epoch: every trial, those stopped early by ASHA dashed, failed ones "
        f"in red. The parameter plots: every trial that reported `{settings.metric}`, with its best epoch's value "
        f"(also the trials ASHA stopped early).",
        "",
        *[
            f"![{alt}]({plots.FILES[key]})"
            for key, alt in (
                ("history", "sweep history"),
                ("slice", "parameters vs metric"),
                ("importance", "importance"),
                ("parallel", "parallel coordinates"),
                ("contour", "contour of the two most important parameters"),
            )
            if (path.parent / plots.FILES[key]).is_file()
        ],
        *[f"\n{note}" for note in plot_notes],
        "",
        "### Top trials",
        "",
        *_trial_table(trials, settings, limit=10),
        "",
        "All trials: `trials.csv`.",
    ]
    if failed:
        lines += ["", "## Failed trials", ""] + [
            f"- `{t['trial_id']}` with {t['params']}: {t['error']}" for t in failed
        ]
    path.write_text("\n".join(lines) + "\n")


def print_summary(
    trials: pd.DataFrame, settings: SweepSettings, report_dir: Path | None, time_line: str = ""
) -> None:
    """The end-of-run summary on stdout: top trials, failures, where the report is, the time per phase."""
    print("\nTop trials:")
    print("\n".join(_trial_table(trials, settings, limit=5)))
    for t in trials[trials["status"] == "ERROR"].to_dict("records"):
        print(f"FAILED trial {t['trial_id']} {t['params']}: {t['error']}")
    for line in device_lines(trials):
        print(line)
    if report_dir is not None:
        m = json.loads((report_dir / "metrics.json").read_text())
        test = f", test accuracy {m['test_accuracy']:.4f}" if "test_accuracy" in m else ""
        print(
            f"\nRetrained winner: val accuracy {m['val_accuracy']:.4f} (flip TTA {m['val_tta_accuracy']:.4f}), "
            f"macro-F1 {m['val_macro_f1']:.4f}{test}"
        )
        if "ensemble" in m:
            e = m["ensemble"]
            print(
                f"Ensemble of {len(e['members'])}: val accuracy {e['val_accuracy']:.4f} (flip TTA {e['val_tta_accuracy']:.4f}), "
                f"macro-F1 {e['val_macro_f1']:.4f}"
            )
        print(f"Report: {report_dir / 'report.md'}")
    if time_line:
        print(time_line)
