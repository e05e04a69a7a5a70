"""The Pareto front of a multi-objective sweep and the pick rules that choose its winner from it.

``points`` is a table with ``trial_id``, ``status`` (``sweeps.report.trials.STATUSES``) and one float column per
objective; ``objectives`` is the sweep's ordered ``{name: "max" | "min"}``, the metric first. The candidates
are the completed trials with a finite value of every objective: ASHA stops a trial on the first objective
alone, so a stopped trial's values come from fewer epochs and do not compare with a completed one's (Optuna's
front, too, counts COMPLETE trials only).

The pick rules (``parse_pick``):

- ``best``: the best first objective.
- ``knee``: for two objectives, on the front normalised to [0, 1] per objective (1 = best), the trial farthest
  from the straight line joining the front's two extremes, on the side of the ideal corner (1, 1): the trial
  that gives up least of one objective for the most of the other. A front of fewer than 3 distinct trials has
  no knee: the best first objective then.
- ``fastest within N points``: the lowest ``latency_ms`` among the trials whose first objective (a max metric
  on a 0..1 scale) is at least the best minus N/100.
- ``NAME OP NUMBER`` joined by `` and `` (OP one of <=, <, >=, >): the best first objective among the trials
  that satisfy all.

A tie goes by the objectives in their order, then the trial id.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState, create_trial

from fer_core.errors import ConfigError, FerError
from sweeps.report.escape import code, text
from sweeps.report.plots import _finish, _quiet

PARETO_FILE = "pareto_front.png"  # the front's plot in the report folder
FORMS = (
    "'best', 'knee', 'fastest within N points', or 'NAME OP NUMBER' joined by ' and ' "
    "(OP one of <=, <, >=, >; e.g. 'latency_ms <= 4 and val_macro_f1 >= 0.5')"
)
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_FASTEST = re.compile(r"fastest within (\S+) points?")
_CONSTRAINT = re.compile(r"(\S+?)\s*(<=|>=|<|>)\s*(\S+)")
_EPS = 1e-9  # "within N points" of a best that floating point left a hair off


@dataclass(frozen=True)
class Pick:
    """A parsed pick rule: ``kind`` ("best", "knee", "fastest" or "constraints"), ``text`` as written (spaces
    collapsed), ``where`` it was written, ``points`` of "fastest within N points", the ``constraints``."""

    kind: str
    text: str
    where: str
    points: float = 0.0
    constraints: tuple[tuple[str, str, float], ...] = ()


@dataclass(frozen=True)
class Choice:
    """The chosen trial and ``reason``: one sentence for report.md saying why, with the numbers."""

    trial_id: str
    reason: str


def parse_pick(text: str, objectives: dict[str, str], where: str) -> Pick:
    """The pick rule ``text`` (written at ``where``, e.g. "sweep.yaml: 'pick'" or "--pick") for a sweep of
    ``objectives``; a ``ConfigError`` of one line for anything else."""
    rule = " ".join(str(text).split())
    first = next(iter(objectives))

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{where}: {why}; write {FORMS}")

    if not rule:
        raise refuse("the pick rule is empty")
    if rule.lower() == "best":
        return Pick("best", rule, where)
    if rule.lower() == "knee":
        if len(objectives) > 2:
            raise refuse(
                f"'knee' is defined for two objectives, this sweep has {len(objectives)} "
                f"({', '.join(objectives)}); choose by constraints instead"
            )
        return Pick("knee", rule, where)
    fastest = _FASTEST.fullmatch(rule.lower())
    if fastest:
        n = _number(fastest.group(1))
        if n is None or n < 0:
            raise refuse(f"{rule!r}: N must be a number of percentage points >= 0, not {fastest.group(1)!r}")
        if "latency_ms" not in objectives:
            raise refuse(
                f"{rule!r} needs latency_ms among the objectives, this sweep has {', '.join(objectives)}"
            )
        if objectives[first] != "max":
            raise refuse(f"{rule!r} needs a max first objective on a 0..1 scale, {first} is min")
        return Pick("fastest", rule, where, points=n)
    constraints = []
    for part in rule.split(" and "):
        match = _CONSTRAINT.fullmatch(part.strip())
        value = _number(match.group(3)) if match else None
        if value is None:
            raise refuse(f"{rule!r} is not a pick rule ({part.strip()!r} is not NAME OP NUMBER)")
        name = match.group(1)
        if name not in objectives:
            close = difflib.get_close_matches(name, list(objectives), n=1)
            hint = f"did you mean {close[0]}?" if close else f"the objectives are {', '.join(objectives)}"
            raise refuse(f"{rule!r} names {name!r}, not an objective of this sweep ({hint})")
        constraints.append((name, match.group(2), value))
    return Pick("constraints", rule, where, constraints=tuple(constraints))


def _number(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def candidates(points: pd.DataFrame, objectives: dict[str, str]) -> pd.DataFrame:
    """The completed trials with a finite value of every objective, best first (``_ordered``)."""
    names = list(objectives)
    values = points[names].apply(pd.to_numeric, errors="coerce").astype(float)
    keep = (points["status"] == "completed") & np.isfinite(values).all(axis=1)
    return _ordered(points[keep], objectives).reset_index(drop=True)


def _ordered(df: pd.DataFrame, objectives: dict[str, str]) -> pd.DataFrame:
    """``df`` best first: by each objective in turn, then by trial id."""
    keys = [*objectives, "trial_id"]
    ascending = [d == "min" for d in objectives.values()] + [True]
    return df.sort_values(keys, ascending=ascending, kind="stable")


def front(points: pd.DataFrame, objectives: dict[str, str]) -> pd.DataFrame:
    """The candidates no other candidate dominates (as good in every objective and better in one), best first
    objective first."""
    c = candidates(points, objectives)
    # Optuna's own front (``Study.best_trials``, the one ``plot_pareto_front`` draws), on the candidates alone.
    with _quiet():
        study = optuna.create_study(
            directions=[{"max": "maximize", "min": "minimize"}[d] for d in objectives.values()]
        )
    study.add_trials(
        [
            create_trial(
                state=TrialState.COMPLETE, values=[float(row[k]) for k in objectives], user_attrs={"i": i}
            )
            for i, row in enumerate(c.to_dict("records"))
        ]
    )
    on_front = sorted(t.user_attrs["i"] for t in study.best_trials)
    return c.iloc[on_front]


def _value(name: str, v: float) -> str:
    if name == "latency_ms":
        return f"{v:.2f} ms"
    if name == "throughput":
        return f"{v:.0f} images/s"
    return f"{name} {v:.4f}" if abs(v) < 100 else f"{name} {v:.0f}"


def _describe(row, objectives: dict[str, str]) -> str:
    """A trial's values in words: "val_accuracy 0.5512 at 2.31 ms"."""
    first, *rest = objectives
    described = _value(first, row[first])
    return described + (" at " + ", ".join(_value(k, row[k]) for k in rest) if rest else "")


def _best_words(objectives: dict[str, str]) -> str:
    first, direction = next(iter(objectives.items()))
    return f"the {'highest' if direction == 'max' else 'lowest'} {first}"


def choose(points: pd.DataFrame, objectives: dict[str, str], pick: Pick) -> Choice:
    """The trial ``pick`` chooses among the candidates, and why; a ``FerError`` of one line when no
    completed trial can be chosen or none satisfies the rule."""
    c = candidates(points, objectives)
    first = next(iter(objectives))
    rule = f"{pick.where} {pick.text!r}"
    if c.empty:
        stopped = int(points["status"].isin(["stopped_asha", "stopped_time"]).sum())
        raise FerError(
            f"{rule}: no completed trial with a value of every objective ({', '.join(objectives)}) to choose "
            f"from ({len(points)} trials, {stopped} stopped early: ASHA stops on {first} alone, so a stopped "
            "trial's values come from fewer epochs and are not comparable); run the sweep with more time or "
            "trials so that some complete"
        )
    best = c.iloc[0]
    of_n = f"{len(c)} completed trial{'s' if len(c) != 1 else ''}"
    if pick.kind == "best":
        return Choice(
            best["trial_id"],
            f"trial {best['trial_id']}: {_best_words(objectives)} of the {of_n} "
            f"({_describe(best, objectives)}).",
        )
    if pick.kind == "knee":
        return _knee(c, objectives, of_n)
    if pick.kind == "fastest":
        floor = best[first] - pick.points / 100
        within = c[c[first] >= floor - _EPS].sort_values("latency_ms", kind="stable")
        chosen = within.iloc[0]
        n = f"{pick.points:g} point{'s' if pick.points != 1 else ''}"
        return Choice(
            chosen["trial_id"],
            f"trial {chosen['trial_id']}: the fastest of the {len(within)} (of {of_n}) within {n} of the best "
            f"{first} ({best[first]:.4f}, trial {best['trial_id']}): {_describe(chosen, objectives)}.",
        )
    ok = np.logical_and.reduce([_OPS[op](c[k], v) for k, op, v in pick.constraints])
    if not ok.any():
        raise FerError(
            f"{rule}: no completed trial satisfies it; {_closest(c, objectives, pick)}; relax the rule "
            "or pick 'best' (--pick best)"
        )
    chosen = c[ok].iloc[0]
    n_ok = int(ok.sum())
    with_rule = f"{n_ok} completed trial{'s' if n_ok != 1 else ''} with {pick.text}"
    overall = (
        "it is also the best overall"
        if chosen["trial_id"] == best["trial_id"]
        else f"the best overall, {best['trial_id']}, has {_describe(best, objectives)}"
    )
    return Choice(
        chosen["trial_id"],
        f"trial {chosen['trial_id']}: {_best_words(objectives)} of the {with_rule} "
        f"({_describe(chosen, objectives)}; {overall}).",
    )


def _closest(c: pd.DataFrame, objectives: dict[str, str], pick: Pick) -> str:
    """The candidate that misses ``pick``'s constraints by least: each miss over that objective's range among
    the candidates (so that misses in ms and in accuracy add up), summed."""
    total = pd.Series(0.0, index=c.index)
    for k, _op, v in pick.constraints:
        span = float(c[k].max() - c[k].min()) or 1.0
        total += _miss(c[k], _op, v) / span
    row = c.iloc[int(np.argmin(total.to_numpy()))]
    missed = [
        f"{k} {op} {v:g} " + (f"by {m:.4g}" if (m := _miss(row[k], op, v)) > 0 else "(it is on the bound)")
        for k, op, v in pick.constraints
        if not _OPS[op](row[k], v)
    ]
    return (
        f"the closest, trial {row['trial_id']} ({_describe(row, objectives)}), misses {' and '.join(missed)}"
    )


def _miss(value, op: str, bound: float):
    """How far ``value`` is from satisfying ``value OP bound``: 0 when it does (a strict bound it sits on
    misses by 0 too)."""
    gap = value - bound if op in ("<=", "<") else bound - value
    return np.maximum(gap, 0.0)


def _knee(c: pd.DataFrame, objectives: dict[str, str], of_n: str) -> Choice:
    f = front(c, objectives)
    names = list(objectives)
    distinct = f.drop_duplicates(names)
    best = f.iloc[0]
    if len(objectives) < 2 or len(distinct) < 3:
        return Choice(
            best["trial_id"],
            f"trial {best['trial_id']}: {_best_words(objectives)} of the {of_n}, as their Pareto front has "
            f"{len(distinct)} distinct trial{'s' if len(distinct) != 1 else ''} and a knee needs 3 "
            f"({_describe(best, objectives)}).",
        )
    norm = pd.DataFrame(index=f.index)
    for k, d in objectives.items():
        lo, hi = f[k].min(), f[k].max()
        norm[k] = (f[k] - lo) / (hi - lo) if d == "max" else (hi - f[k]) / (hi - lo)
    # On a front of two objectives the extremes normalise to (1, 0) and (0, 1): the line x + y = 1.
    distance = (norm.sum(axis=1) - 1) / math.sqrt(2)
    chosen = f.iloc[
        int(np.argmax(distance.to_numpy()))
    ]  # the first of a tie, in the front's best-first order
    ends = f"{f.iloc[0]['trial_id']} and {f.iloc[-1]['trial_id']}"
    return Choice(
        chosen["trial_id"],
        f"trial {chosen['trial_id']}: the knee of the Pareto front of the {of_n} ({len(f)} trials on it), "
        f"the farthest from the line joining its extremes {ends} ({_describe(chosen, objectives)}; "
        f"{_best_words(objectives)}, {best['trial_id']}, has {_describe(best, objectives)}).",
    )


def front_lines(points: pd.DataFrame, objectives: dict[str, str], choice: Choice) -> list[str]:
    """report.md's lines on the front: its trials as a table (trial, each objective, whether chosen), the chosen
    one appended if the rule chose a trial off the front, then ``choice.reason``."""
    from sweeps.report.markdown import _table  # markdown.py imports the report's modules; imported on use

    f = front(points, objectives)
    c = candidates(points, objectives)
    rows = [
        (t["trial_id"], *(t[k] for k in objectives), "yes" if t["trial_id"] == choice.trial_id else "")
        for t in f.to_dict("records")
    ]
    if choice.trial_id not in set(f["trial_id"]):
        t = c[c["trial_id"] == choice.trial_id].iloc[0]
        rows.append((t["trial_id"], *(t[k] for k in objectives), "yes (off the front)"))
    heading = text(f"Pareto front of {', '.join(objectives)}: {len(f)} of {len(c)} completed trials.")
    return [heading, "", *_table(["trial", *objectives, "chosen"], rows), "", text(choice.reason)]


def plot_front(
    study: optuna.Study, chosen_trial_id: str, path: Path, objectives: dict[str, str], rule: str
) -> Path:
    """Draw Optuna's Pareto-front plot of ``study`` (``plots.build_study``'s, of these ``objectives``) to
    ``path``, the chosen trial starred and named, titled with the ``rule`` that chose it. More than two
    objectives are drawn on the first two (the front is still the front of all)."""
    names = list(objectives)
    two = names[:2]
    chosen = next(t for t in study.trials if t.user_attrs.get("trial_id") == chosen_trial_id)
    with _quiet((7.0, 5.0)):
        ax = optuna.visualization.matplotlib.plot_pareto_front(
            study,
            target_names=two,
            targets=(lambda t: t.values[:2]) if len(names) > 2 else None,
        )
        x, y = chosen.values[:2]
        ax.scatter(
            [x],
            [y],
            marker="*",
            s=320,
            facecolor="gold",
            edgecolor="black",
            zorder=5,
            label=f"chosen: {chosen_trial_id}",
        )
        ax.annotate(chosen_trial_id, (x, y), xytext=(8, 8), textcoords="offset points", fontsize=9)
        words = {"Trial": "completed, dominated", "Best Trial": "on the Pareto front"}
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [words.get(label, label) for label in labels], fontsize=8)
        complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
        drawn = f" (drawn on {two[0]} and {two[1]})" if len(names) > 2 else ""
        title = (
            f"Pareto front of {' and '.join(names)}{drawn}\n{complete} completed trials (stopped ones are not "
            f"candidates); {chosen_trial_id} chosen by '{rule}'"
        )
        return _finish(ax, title, path)


def other_rules(points: pd.DataFrame, objectives: dict[str, str], rule: str) -> list[str]:
    """report.md's lines on what the other standard rules would have chosen from the same trials (a rule is
    not retaken: the retrain ran the one the sweep was given)."""
    rules = ["best", "knee"] + (["fastest within 1 point"] if "latency_ms" in objectives else [])
    lines = []
    for other in (r for r in rules if r != " ".join(rule.split()).lower()):
        try:
            choice = choose(points, objectives, parse_pick(other, objectives, "pick"))
        except (ConfigError, FerError) as e:
            lines.append(f"- {code(other)}: {text(str(e))}")
        else:
            lines.append(f"- {code(other)}: {text(choice.reason)}")
    return ["", "What the other rules would have chosen from these trials:", "", *lines] if lines else []
