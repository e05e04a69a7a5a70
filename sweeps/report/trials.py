"""The trials table: one row per trial from Ray's ResultGrid, how each trial ended (``status``), the ranking
and the top-k the retrain starts from, and ``trials.csv``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.config.settings import MEASURED, SweepSettings
from sweeps.state.storage import write_local

# How a trial ended (the table's ``status``), in the words report.md, the plots and the summary use.
STATUSES = {
    "completed": "completed",
    "stopped_asha": "stopped early by ASHA",
    "stopped_time": "stopped by the time limit",
    "failed": "failed",
}


def collect_trials(
    results, settings: SweepSettings, stopped_by_time: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """The trials table of a ResultGrid, a row per trial: ``trial_id``, ``status`` (a ``STATUSES`` key),
    ``error`` ("" unless failed), ``params``, ``epochs``, ``best_<metric>``, ``last_<metric>``, each measured
    objective (``latency_ms``) with ``latency_machine`` (the CPU it was timed on), ``device``, ``ray_gpus``, ``intermediate`` ({epoch: metric}), ``path``. A trial that neither failed nor reached
    ``scheduler.max_epochs`` was stopped by the time limit when in ``stopped_by_time``, else by ASHA."""
    m, names = settings.metric, [p.name for p in settings.search_space]
    last_cols = {"training_iteration": "epochs", m: f"last_{m}", "device": "device", "ray_gpus": "ray_gpus"}
    last_cols |= {c: c for c in _timed(settings)}
    # Each trial's last row; a trial that never reported has none.
    last = results.get_dataframe().reindex(columns=["trial_id", *last_cols]).rename(columns=last_cols)
    # What the dataframes leave out: the errors, and the trials that ended before their first report.
    rows = pd.DataFrame(
        [
            {
                "trial_id": (r.metrics or {}).get("trial_id") or Path(r.path).name,
                "error": f"{type(r.error).__name__}: {_first_line(r.error)}" if r.error else "",
                "params": _params(r, names),
                "intermediate": _curve(r.metrics_dataframe, m),
                "path": r.path,
            }
            for r in results
        ]
    )
    table = (
        rows.merge(last.astype({"device": object}), on="trial_id", how="left")
        .fillna({"epochs": 0, "device": "", "ray_gpus": 0})
        .astype({"epochs": int, "ray_gpus": int})
    )
    table[f"best_{m}"] = [best_value(c, settings.mode) for c in table["intermediate"]]
    short = table["epochs"] < settings.scheduler.max_epochs
    timed = short & table["trial_id"].isin(stopped_by_time)
    ended = [table["error"] != "", timed, short]
    table.insert(1, "status", np.select(ended, ["failed", "stopped_time", "stopped_asha"], "completed"))
    return table


def measured(settings: SweepSettings) -> list[str]:
    """The objectives after the metric, which trials report from their architecture's measurement."""
    return [o for o in settings.objectives if o in MEASURED]


def _timed(settings: SweepSettings) -> list[str]:
    """The measured objectives' columns, with the CPU they were timed on."""
    return measured(settings) + ["latency_machine"] if measured(settings) else []


def objective_points(trials: pd.DataFrame, settings: SweepSettings) -> pd.DataFrame:
    """``trial_id``, ``status`` and a column per objective: the values the front compares (the metric's is
    the trial's best epoch)."""
    values = trials.rename(columns={f"best_{settings.metric}": settings.metric})
    return values[["trial_id", "status", *settings.objectives]].reset_index(drop=True)


def _params(result, names: list[str]) -> dict:
    """A trial's searched parameters; for one that failed before reporting, from Tune's ``params.json``."""
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


def best_value(curve: dict, mode: str) -> float:
    """A trial's best value: its best finite epoch of ``curve`` ({epoch: metric}) by ``mode``, NaN when it has
    none (the table's ``best_<metric>``, the ranking's key and the plotted study's value)."""
    finite = [v for v in curve.values() if math.isfinite(v)]
    return (max if mode == "max" else min)(finite) if finite else float("nan")


def _first_line(error) -> str:
    # Ray wraps trial exceptions; the root cause's own message is the useful line.
    cause = error
    while getattr(cause, "__cause__", None) is not None:
        cause = cause.__cause__
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(cause).__name__


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """``{"total", "completed", "stopped_asha", "stopped_time", "failed"}``: metrics.json's ``trials``."""
    counts = trials["status"].value_counts().reindex(list(STATUSES), fill_value=0)
    return {"total": len(trials), **{k: int(v) for k, v in counts.items()}}


def device_lines(trials) -> list[str]:
    """Where the trials trained, and a WARNING for each one that Ray gave a GPU but that trained on a CPU
    (``trials``: the table, or rows with ``trial_id``, ``device`` and ``ray_gpus``)."""
    df = pd.DataFrame(trials)
    device = df["device"].fillna("")
    counts = device[device != ""].value_counts().sort_index()
    trained_on = ", ".join(f"{d} ({n})" for d, n in counts.items())
    lines = [f"Trials trained on: {trained_on}"] if len(counts) else []
    on_cpu = df[(df["ray_gpus"].fillna(0) > 0) & (device != "") & ~device.str.startswith("cuda")]
    lines += [
        f"WARNING: trial {t['trial_id']} was given {t['ray_gpus']} GPU(s) by Ray but trained on {t['device']}: "
        "that node's GPU is not visible to PyTorch (driver, CUDA build of torch, CUDA_VISIBLE_DEVICES)"
        for t in on_cpu.to_dict("records")
    ]
    return lines


def _usable(trials: pd.DataFrame, settings: SweepSettings) -> pd.Series:
    """The trials a ranking can use: not failed, with a value of the metric."""
    return (trials["status"] != "failed") & trials[f"best_{settings.metric}"].notna()


def ranked(trials: pd.DataFrame, settings: SweepSettings) -> pd.DataFrame:
    """The trials best first by their best epoch's metric (unusable ones last), one column per parameter. A
    tie goes by the parameters (as sorted JSON), then the trial id: Ray names trials at random, and a sweep
    run again with the same seeds, or resumed after a kill, then still ranks its tied trials alike."""
    keys, ascending = (
        ["_usable", f"best_{settings.metric}", "_params", "trial_id"],
        [False, settings.mode == "min", True, True],
    )
    r = trials.assign(_usable=_usable(trials, settings), _params=trials["params"].map(_params_key))
    r = r.sort_values(keys, ascending=ascending, na_position="last").drop(columns=["_usable", "_params"])
    # object: a trial that never got its parameters (None) must not turn an int column into floats
    params = pd.DataFrame(r["params"].tolist(), index=r.index, dtype=object)
    return r.join(params.reindex(columns=[p.name for p in settings.search_space]))


def _params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def top_trials(trials: pd.DataFrame, settings: SweepSettings, k: int) -> list[dict]:
    """The best ``k`` usable trials with distinct parameters, best first (the retrain's and the ensemble's
    members), each as ``{"trial_id", "best", "params"}``; ``trials`` is the table of ``collect_trials``."""
    r = ranked(trials, settings)
    r = r[_usable(r, settings)]
    r = r[~r["params"].map(_params_key).duplicated()].head(k)
    best, rows = f"best_{settings.metric}", r.to_dict("records")
    return [{"trial_id": t["trial_id"], "best": float(t[best]), "params": t["params"]} for t in rows]


def write_csv(trials: pd.DataFrame, settings: SweepSettings, path: Path) -> None:
    """``trials.csv``: every trial, ranked, with one column per searched parameter."""
    m, names = settings.metric, [p.name for p in settings.search_space]
    timed = measured(settings) + (["latency_machine"] if measured(settings) else [])
    cols = [
        "trial_id",
        "status",
        "epochs",
        f"best_{m}",
        f"last_{m}",
        *timed,
        *names,
        "device",
        "ray_gpus",
        "error",
    ]
    write_local(path, ranked(trials, settings)[cols].to_csv(index=False, na_rep="nan").encode())
