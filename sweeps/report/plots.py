"""The sweep's plots, drawn by Optuna (``optuna.visualization.matplotlib``) on the sweep rebuilt as a study from
the trials table: each trial's parameters, per-epoch metric (intermediate values), best epoch's metric (its
value, or its first value beside the other objectives' of a multi-objective sweep) and state (``STATES``: a
``status`` user attr says how a PRUNED trial stopped)."""

from __future__ import annotations

import contextlib
import math
import tempfile
import warnings
from pathlib import Path

import matplotlib
import optuna
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from fer_core.apps.figures import save_png
from sweeps.report.escape import code, text
from sweeps.report.trials import STATUSES, best_value
from sweeps.state.storage import write_local

# Every sweep plot and its file in the report folder.
FILES = {
    "history": "sweep_history.png",
    "slice": "param_vs_metric.png",
    "importance": "param_importance.png",
    "parallel": "parallel_coordinate.png",
    "contour": "contour.png",
}
STUDY_FILE = "optuna.db"  # the study itself, for optuna-dashboard and optuna.load_study
MIN_TRIALS = 3  # trials with a value below which importance (and so the contour's choice) says nothing
# The study's state for each trial status (``sweeps.report.trials.STATUSES``).
STATES = {
    "completed": TrialState.COMPLETE,
    "stopped_asha": TrialState.PRUNED,
    "stopped_time": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}
_DIRECTIONS = {"max": "maximize", "min": "minimize"}
# The history plot's line style and end marker for the trials that stopped before their last epoch.
STOPPED_STYLE = {"stopped_asha": ("--", "x"), "stopped_time": (":", "s")}


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


def build_study(
    trials, space: dict, mode: str, points=None, objectives: dict[str, str] | None = None
) -> tuple[optuna.Study, list[str]]:
    """The trials table (``collect_trials``) as an Optuna study of the ``space`` (``to_optuna``), and one line
    for each trial it had to leave out (a value outside its distribution). With more than one of
    ``objectives`` (name -> "max"/"min", the metric first) the study has a direction and a name per objective,
    and each trial's values are its row of ``points`` (``sweeps.report.pareto``'s table): a stopped trial keeps
    them as PRUNED, a failed one has none, and one without a finite value of every objective has none either:
    Optuna keeps a COMPLETE trial only with every value, so a completed one is kept as PRUNED, off the front."""
    names = list(objectives) if objectives and len(objectives) > 1 else []
    directions = [_DIRECTIONS[d] for d in objectives.values()] if names else [_DIRECTIONS[mode]]
    with _quiet():
        study = optuna.create_study(directions=directions)
        if names:
            study.set_metric_names(names)
    rows = points.set_index("trial_id")[names] if names else None
    notes = []
    for t in trials.to_dict("records"):
        curve = {int(k): float(v) for k, v in (t["intermediate"] or {}).items() if math.isfinite(v)}
        state = STATES[t["status"]]
        values = [best_value(curve, mode)] if curve and state != TrialState.FAIL else None
        if names and state != TrialState.FAIL:
            found = rows.loc[t["trial_id"]] if t["trial_id"] in rows.index else pd.Series(math.nan, names)
            values = [float(v) for v in found]
            missing = [k for k, v in zip(names, values) if not math.isfinite(v)]
            if missing:
                values = None
                if state == TrialState.COMPLETE:
                    state = TrialState.PRUNED
                    notes.append(
                        f"trial {code(t['trial_id'])} completed without a value of {text(', '.join(missing))}: "
                        "the study keeps it as pruned, off the Pareto front."
                    )
        params = {k: v for k, v in (t["params"] or {}).items() if k in space and v is not None}
        try:
            study.add_trial(
                create_trial(
                    state=state,
                    values=values,
                    params=params,
                    distributions={k: space[k] for k in params},
                    intermediate_values=curve,
                    user_attrs={"trial_id": t["trial_id"], "status": t["status"]},
                )
            )
        except ValueError as e:
            notes.append(f"trial {code(t['trial_id'])} is left out of the sweep plots: {text(e)}")
    return study, notes


def save_study(study: optuna.Study, name: str, metric: str, path: Path) -> Path:
    """Save ``study`` (``build_study``'s) as the Optuna study ``name`` in a new SQLite file at ``path``, which
    ``optuna-dashboard sqlite:///PATH`` opens and ``optuna.load_study`` reads: every trial with its state,
    parameters, per-epoch values and value(s), each objective named (``build_study``'s names, else ``metric``).
    A file an earlier report of the sweep left is replaced.
    SQLite writes a file of its own in a temporary folder (an address that ``%XX`` in ``path`` cannot
    change), then the one writer copies it into the report."""
    with tempfile.TemporaryDirectory() as tmp:
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}/{STUDY_FILE}")
        with _quiet():
            saved = optuna.create_study(storage=storage, study_name=name, directions=study.directions)
            saved.set_metric_names(study.metric_names or [metric])
            saved.add_trials(study.trials)
        storage.remove_session()
        storage.engine.dispose()  # close the file before it is copied
        write_local(path, (Path(tmp) / STUDY_FILE).read_bytes())
    return path


def _finish(axes, title: str, path: Path) -> Path:
    """Give an Optuna figure the report's title and save it."""
    fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    for ax in fig.axes:
        for loc in ("left", "center", "right"):
            ax.set_title("", loc=loc)
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def _draw(path: Path, title: str, figsize: tuple, plot, *args, **kwargs) -> Path:
    """Draw one Optuna plot (``plot(*args, **kwargs)``) at ``figsize`` and save it with ``title``."""
    with _quiet(figsize):
        return _finish(plot(*args, **kwargs), title, path)


def plot_history(study: optuna.Study, metric: str, path: Path) -> Axes:
    """Draw every trial's metric per epoch to ``path``, stopped ones in ``STOPPED_STYLE``, failed ones (which
    Optuna leaves out) in red; returns the axes, saved and closed."""
    trials = study.trials
    with _quiet((9.5, 5.2)):
        ax = optuna.visualization.matplotlib.plot_intermediate_values(study)
        for line in ax.get_lines():
            t = trials[int(line.get_label().removeprefix("Trial"))]
            status = t.user_attrs["status"]
            ended = "" if status == "completed" else f" ({STATUSES[status]})"
            line.set_label(t.user_attrs["trial_id"] + ended)
            if status in STOPPED_STYLE:
                style, marker = STOPPED_STYLE[status]
                line.set_linestyle(style)
                ax.plot(*[[c[-1]] for c in line.get_data()], marker, color=line.get_color(), ms=8, mew=1.8)
        for t in trials:
            if t.state == TrialState.FAIL and t.intermediate_values:
                steps = sorted(t.intermediate_values)
                values = [t.intermediate_values[s] for s in steps]
                label = f"{t.user_attrs['trial_id']} (failed)"
                ax.plot(steps, values, color="#c62828", marker="o", label=label)
                ax.plot(steps[-1], values[-1], "X", color="#c62828", ms=9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        counts = [sum(t.user_attrs["status"] == s for t in trials) for s in STATUSES]
        ended = ", ".join(f"{n} {words}" for n, words in zip(counts, STATUSES.values()))
        _finish(ax, f"{metric} per epoch: {len(trials)} trials ({ended})", path)
        return ax


def write_plots(study: optuna.Study, metric: str, out: Path) -> list[str]:
    """Draw every sweep plot into ``out``, skipping any this sweep cannot give; returns lines for report.md:
    each plot skipped and why, and what Optuna warned of while drawing them."""
    viz = optuna.visualization.matplotlib
    # Every trial with a value of the metric as complete: Optuna's parameter plots read only complete trials, and
    # in an ASHA sweep most trials are stopped early (each counts with its best epoch). A study of one objective,
    # the metric, whatever the study's other objectives.
    direction = study.directions[0]
    with _quiet():
        scored = optuna.create_study(direction=direction)
    mode = "max" if direction == optuna.study.StudyDirection.MAXIMIZE else "min"
    for t in study.trials:
        value = best_value(t.intermediate_values, mode)
        if t.state != TrialState.FAIL and math.isfinite(value):
            scored.add_trial(create_trial(value=value, params=t.params, distributions=t.distributions))
    n = len(scored.trials)
    params = sorted({k for t in scored.trials for k in t.params})
    kinds = {p: type(d) for t in scored.trials for p, d in t.distributions.items()}
    categorical = [p for p in params if kinds[p] is CategoricalDistribution]
    numeric = [p for p in params if p not in categorical]
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
    title = f"{metric} vs hyperparameters ({n} trials, stopped ones with their best epoch)"
    size = (2 * panel, 3.8) if len(params) > 1 else (5.5, 4.0)
    _draw(out / FILES["slice"], title, size, viz.plot_slice, scored, target_name=metric)
    title = f"Parallel coordinates: {metric} and hyperparameters ({n} trials)"
    size = (max(7.0, 2.2 * len(params) + 3), 4.8)  # room for the last axis' tick labels beside the colorbar
    _draw(out / FILES["parallel"], title, size, viz.plot_parallel_coordinate, scored, target_name=metric)
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
        title = f"Hyperparameter importance for {metric} (PED-ANOVA, {n} trials)"
        _finish(ax, title, out / FILES["importance"])
    said = {
        f"`{FILES['importance']}`: Optuna says: {text(w.message)}" for w in caught if "optuna" in w.filename
    }
    notes += sorted(said)
    if len(numeric) < 2:
        beside = f" beside categorical {', '.join(categorical)}" if categorical else ""
        searched = f"{len(numeric)} ({', '.join(numeric) or 'none'}){beside}"
        skip("contour", f"it needs two numeric parameters, this sweep searches {searched}")
    elif len({t.value for t in scored.trials}) == 1:
        same = f"every trial reached the same {metric} ({scored.trials[0].value:.4f})"
        skip("contour", f"{same}: there is no surface to draw")
    else:
        top = sorted(numeric, key=lambda p: -importances.get(p, 0.0))[:2]
        title = f"{metric} over the two most important numeric parameters ({n} trials)"
        _draw(out / FILES["contour"], title, (6.5, 5.2), viz.plot_contour, scored, top, target_name=metric)
    return notes
