"""The sweep's plots, drawn by Optuna (``optuna.visualization.matplotlib``) on the sweep's study.

The study is rebuilt from the trials table (``sweeps.trials.collect_trials``, itself read from Ray's
ResultGrid), so it is the same after a resume: each trial with its parameters and their distributions, its
per-epoch metric as intermediate values, and its state: COMPLETE (ran every epoch), PRUNED (stopped early
by ASHA) or FAIL (errored). A trial's value is the best epoch's metric, the value the report ranks by.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import matplotlib
import optuna
from matplotlib.ticker import MaxNLocator
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from fer_core.apps.figures import (
    save_png as _save,  # the report's one save rule (dpi, tight box, white background, figure closed)
)

# Every sweep plot and its file in report/ (the first three kept the names the report had before).
FILES = {
    "history": "sweep_history.png",
    "slice": "param_vs_metric.png",
    "importance": "param_importance.png",
    "parallel": "parallel_coordinate.png",
    "contour": "contour.png",
}
MIN_TRIALS = 3  # trials with a value below which importance (and so the contour's choice) says nothing


@contextlib.contextmanager
def _quiet(figsize=None):
    """Optuna's plotting functions, with its ExperimentalWarning and info logs silenced, and its
    ``plt.style.use("ggplot")`` (and ``figsize``) kept to the figures drawn inside."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings(), matplotlib.rc_context({"figure.figsize": figsize} if figsize else {}):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def build_study(trials, space: dict, mode: str, max_epochs: int) -> tuple[optuna.Study, list[str]]:
    """The sweep as an Optuna study.

    Args:
        trials: the trials table, one row per trial with ``trial_id``, ``status`` (``ERROR`` for a failed
            trial), ``epochs``, ``params`` (a dict) and ``intermediate`` ({epoch: metric value}).
        space: the Optuna distributions of the searched parameters (``sweeps.space.to_optuna``).
        mode: ``max`` or ``min``.
        max_epochs: the epochs a trial runs unless ASHA stops it.

    Returns:
        The study, and one line for each trial it had to leave out (a value outside its distribution).
    """
    with _quiet():
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    notes = []
    pick = max if mode == "max" else min
    for t in trials.to_dict("records"):
        curve = {int(k): float(v) for k, v in (t["intermediate"] or {}).items() if math.isfinite(v)}
        if t["status"] == "ERROR" or not curve:
            state, value = TrialState.FAIL, None
        else:
            state = TrialState.PRUNED if t["epochs"] < max_epochs else TrialState.COMPLETE
            value = pick(curve.values())
        params = {k: v for k, v in (t["params"] or {}).items() if k in space and v is not None}
        try:
            study.add_trial(
                optuna.trial.create_trial(
                    state=state,
                    value=value,
                    params=params,
                    distributions={k: space[k] for k in params},
                    intermediate_values=curve,
                    user_attrs={"trial_id": t["trial_id"]},
                )
            )
        except ValueError as e:
            notes.append(f"trial `{t['trial_id']}` is left out of the sweep plots: {e}")
    return study, notes


def _scored(study: optuna.Study) -> optuna.Study:
    """The study with its ASHA-stopped trials as complete: Optuna's parameter plots read only complete
    trials, and in an ASHA sweep most trials are stopped early (each counts with its best epoch)."""
    with _quiet():
        scored = optuna.create_study(directions=study.directions)
    scored.add_trials(
        [
            optuna.trial.create_trial(
                value=t.value, params=t.params, distributions=t.distributions, user_attrs=t.user_attrs
            )
            for t in study.trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        ]
    )
    return scored


def _finish(axes, title: str, path: Path) -> Path:
    """Give an Optuna figure the report's title and save it with the report's rule."""
    fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    for ax in fig.axes:
        for loc in ("left", "center", "right"):
            ax.set_title("", loc=loc)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_history(study: optuna.Study, metric: str, path: Path) -> Path:
    """Every trial's metric per epoch (Optuna's intermediate values), ASHA-stopped trials dashed and ended
    with an x, failed ones (which Optuna leaves out) added in red and ended with an X."""
    trials = study.trials
    with _quiet((9.5, 5.2)):
        ax = optuna.visualization.matplotlib.plot_intermediate_values(study)
        for line in ax.get_lines():
            t = trials[int(line.get_label().removeprefix("Trial"))]
            line.set_label(
                t.user_attrs["trial_id"] + (" (stopped early)" if t.state == TrialState.PRUNED else "")
            )
            if t.state == TrialState.PRUNED:
                line.set_linestyle("--")
                ax.plot(*[[c[-1]] for c in line.get_data()], "x", color=line.get_color(), ms=8, mew=1.8)
        for t in trials:
            if t.state == TrialState.FAIL and t.intermediate_values:
                steps = sorted(t.intermediate_values)
                ax.plot(
                    steps,
                    [t.intermediate_values[s] for s in steps],
                    color="#c62828",
                    marker="o",
                    label=f"{t.user_attrs['trial_id']} (failed)",
                )
                ax.plot(steps[-1], t.intermediate_values[steps[-1]], "X", color="#c62828", ms=9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        n = {
            s: sum(t.state == s for t in trials)
            for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        }
        return _finish(
            ax,
            f"{metric} per epoch: {len(trials)} trials ({n[TrialState.COMPLETE]} completed, "
            f"{n[TrialState.PRUNED]} stopped early by ASHA, {n[TrialState.FAIL]} failed)",
            path,
        )


def write_plots(study: optuna.Study, metric: str, out: Path) -> list[str]:
    """Draw every sweep plot into ``out``; a plot this sweep cannot give is skipped.

    Returns:
        Lines for report.md: each plot skipped and why, and what Optuna warned of while drawing them.
    """
    viz = optuna.visualization.matplotlib
    scored = _scored(study)
    n = len(scored.trials)
    params = sorted({k for t in scored.trials for k in t.params})
    numeric = [
        p
        for p in params
        if not any(isinstance(t.distributions.get(p), CategoricalDistribution) for t in scored.trials)
    ]
    notes = []

    def skip(name: str, why: str) -> None:
        (out / FILES[name]).unlink(missing_ok=True)  # no stale figure from an earlier report of this sweep
        notes.append(f"`{FILES[name]}` not drawn: {why}.")

    if any(t.intermediate_values for t in study.trials):
        plot_history(study, metric, out / FILES["history"])
    else:
        skip("history", f"no trial reported {metric}")
    if not n:
        for name in ("slice", "parallel", "importance", "contour"):
            skip(name, f"no trial reported {metric}")
        return notes
    panel = 4.3 if len(params) <= 4 else 3.2  # plot_slice makes each panel half the figure width wide
    with _quiet((2 * panel, 3.8) if len(params) > 1 else (5.5, 4.0)):
        _finish(
            viz.plot_slice(scored, target_name=metric),
            f"{metric} vs hyperparameters ({n} trials, ASHA-stopped ones with their best epoch)",
            out / FILES["slice"],
        )
    wide = max(7.0, 2.2 * len(params) + 3)  # room for the last axis' tick labels beside the colorbar
    with _quiet((wide, 4.8)):
        _finish(
            viz.plot_parallel_coordinate(scored, target_name=metric),
            f"Parallel coordinates: {metric} and hyperparameters ({n} trials)",
            out / FILES["parallel"],
        )

    if n < MIN_TRIALS:
        for name in ("importance", "contour"):
            skip(name, f"{n} trial(s) reported {metric}; parameter importance needs at least {MIN_TRIALS}")
        return notes
    with _quiet((7.0, max(2.6, 0.45 * len(params) + 1.4))), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)  # e.g. "importances will be equal": said in report.md
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        importances = optuna.importance.get_param_importances(scored)
        ax = viz.plot_param_importances(scored, target_name=metric)
        if ax.get_legend():  # one objective: the legend would only repeat the axis label
            ax.get_legend().remove()
        _finish(
            ax, f"Hyperparameter importance for {metric} (PED-ANOVA, {n} trials)", out / FILES["importance"]
        )
    notes += sorted(
        {f"`{FILES['importance']}`: Optuna says: {w.message}" for w in caught if "optuna" in w.filename}
    )
    if len(numeric) < 2:
        categorical = [p for p in params if p not in numeric]
        skip(
            "contour",
            f"it needs two numeric parameters, this sweep searches {len(numeric)} ({', '.join(numeric) or 'none'})"
            + (f" beside categorical {', '.join(categorical)}" if categorical else ""),
        )
    elif len({t.value for t in scored.trials}) == 1:
        skip(
            "contour",
            f"every trial reached the same {metric} ({scored.trials[0].value:.4f}): there is no surface to draw",
        )
    else:
        top = sorted(numeric, key=lambda p: -importances.get(p, 0.0))[:2]
        with _quiet((6.5, 5.2)):
            _finish(
                viz.plot_contour(scored, params=top, target_name=metric),
                f"{metric} over the two most important numeric parameters ({n} trials)",
                out / FILES["contour"],
            )
    return notes
