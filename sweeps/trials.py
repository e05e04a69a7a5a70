"""The sweep's trials as one pandas table, read from Ray's ResultGrid (``get_dataframe``), and their ranking:
what the retrain, the plots and the report all start from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .settings import SweepSettings


def collect_trials(results, settings: SweepSettings) -> pd.DataFrame:
    """The trials table: one row per trial with ``trial_id``, ``status`` (TERMINATED or ERROR), ``error``,
    ``params`` (a dict), ``epochs``, ``best_<metric>`` and ``last_<metric>``, ``stopped_early`` (by ASHA),
    ``device`` and ``ray_gpus`` (where it trained), ``intermediate`` ({epoch: metric}) and ``path``.

    Args:
        results: Ray Tune ResultGrid of the sweep.
        settings: the sweep settings (metric, mode, max epochs).
    """
    m, names = settings.metric, [p.name for p in settings.search_space]
    last_cols = {"training_iteration": "epochs", m: f"last_{m}", "device": "device", "ray_gpus": "ray_gpus"}
    # Each trial's last row, and its best row by the metric; a trial that never reported has neither.
    last = (
        results.get_dataframe()
        .reindex(columns=["trial_id", *last_cols])
        .rename(columns=last_cols)
        .astype({"device": object})
    )
    best = results.get_dataframe(filter_metric=m, filter_mode=settings.mode).reindex(columns=["trial_id", m])
    # What the dataframes leave out: status and error, and the trials that failed before their first report.
    rows = pd.DataFrame(
        [
            {
                "trial_id": (r.metrics or {}).get("trial_id") or Path(r.path).name,
                "status": "ERROR" if r.error else "TERMINATED",
                "error": f"{type(r.error).__name__}: {_first_line(r.error)}" if r.error else "",
                "params": _params(r, names),
                "intermediate": _curve(r.metrics_dataframe, m),
                "path": r.path,
            }
            for r in results
        ]
    )
    table = (
        rows.merge(last, on="trial_id", how="left")
        .merge(best.rename(columns={m: f"best_{m}"}), on="trial_id", how="left")
        .fillna({"epochs": 0, "device": "", "ray_gpus": 0})
        .astype({"epochs": int, "ray_gpus": int})
    )
    table["stopped_early"] = (table["status"] != "ERROR") & (table["epochs"] < settings.scheduler.max_epochs)
    return table


def _params(result, names: list[str]) -> dict:
    """A trial's searched parameters: from its results, or, for a trial that failed before reporting,
    from the ``params.json`` Tune wrote into its folder when it started."""
    config = result.config
    if config is None:
        try:
            with result.filesystem.open_input_stream(f"{result.path}/params.json") as f:
                config = json.loads(f.readall())
        except (OSError, ValueError):
            config = {}
    return {k: config.get(k) for k in names}


def _curve(df, metric: str) -> dict:
    """{training_iteration: metric} of a trial's per-epoch results."""
    if df is None or metric not in df or "training_iteration" not in df:
        return {}
    df = df[["training_iteration", metric]].dropna()
    return dict(zip(df["training_iteration"].astype(int).tolist(), df[metric].astype(float).tolist()))


def device_lines(trials) -> list[str]:
    """Where the trials trained, and a WARNING for each one that Ray gave a GPU but that trained on a CPU.

    Args:
        trials: the trials table, or rows with ``trial_id``, ``device`` and ``ray_gpus``.
    """
    df = pd.DataFrame(trials)
    device = df["device"].fillna("")
    counts = device[device != ""].value_counts().sort_index()
    lines = (
        ["Trials trained on: " + ", ".join(f"{d} ({n})" for d, n in counts.items())] if len(counts) else []
    )
    on_cpu = df[(df["ray_gpus"].fillna(0) > 0) & (device != "") & ~device.str.startswith("cuda")]
    lines += [
        f"WARNING: trial {t['trial_id']} was given {t['ray_gpus']} GPU(s) by Ray but trained on {t['device']}: "
        "that node's GPU is not visible to PyTorch (driver, CUDA build of torch, CUDA_VISIBLE_DEVICES)"
        for t in on_cpu.to_dict("records")
    ]
    return lines


def _first_line(error) -> str:
    # Ray wraps trial exceptions; the root cause's own message is the useful line.
    cause = error
    while getattr(cause, "__cause__", None) is not None:
        cause = cause.__cause__
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(cause).__name__


def ranked(trials: pd.DataFrame, settings: SweepSettings) -> pd.DataFrame:
    """The trials best first by their best epoch's metric; failed trials, and any without a value, last."""
    best = f"best_{settings.metric}"
    usable = (trials["status"] != "ERROR") & trials[best].notna()
    return (
        trials.assign(_usable=usable)
        .sort_values(["_usable", best], ascending=[False, settings.mode == "min"], na_position="last")
        .drop(columns="_usable")
    )


def top_trials(trials: pd.DataFrame, settings: SweepSettings, k: int) -> list[dict]:
    """The best ``k`` finished trials with distinct parameters, best first (the ensemble's members), each
    as ``{"trial_id", "best", "params"}``.

    Args:
        trials: from ``collect_trials``.
        settings: metric and mode.
        k: how many.
    """
    best = f"best_{settings.metric}"
    r = ranked(trials, settings)
    r = r[(r["status"] != "ERROR") & r[best].notna()]
    r = r[~r["params"].map(lambda p: json.dumps(p, sort_keys=True, default=str)).duplicated()].head(k)
    return [
        {"trial_id": t["trial_id"], "best": float(t[best]), "params": t["params"]}
        for t in r.to_dict("records")
    ]
