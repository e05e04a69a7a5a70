"""The sweep's decisions, each taken once and recorded so that a resume reads rather than retakes them: the
plan before the search (placement, the time budget, the measured objectives) and what the search ends with
(the winner, by the pick rule on a front of several objectives, and the ensemble's members, the retrain's
length, the trials the time limit stopped)."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

import pandas as pd

from fer_core.errors import FerError
from sweeps.config.settings import MEASURED, SweepSettings, source_of
from sweeps.plan.budget import Estimate, TimeBudget
from sweeps.plan.latency import measure_objectives
from sweeps.plan.probe import fit_budget, resize_retrain
from sweeps.plan.resources import Placement, cluster_config_path, cluster_nodes, place_trials
from sweeps.report.pareto import choose, parse_pick
from sweeps.report.trials import objective_points, top_trials
from sweeps.state.record import read_plan, write_plan, write_winner


@dataclass(frozen=True)
class Plan:
    """The settings as planned, their placement, and the time budget (None without one)."""

    settings: SweepSettings
    placement: Placement
    cluster_config: str | None
    budget: TimeBudget | None
    est: Estimate | None  # the probe's estimates: a dry run's or a budget's, None when no probe ran
    measured: dict  # the measured objectives per architecture (sweeps.plan.latency), empty without them
    resumed: bool = False

    @property
    def search_s(self) -> float | None:
        """The search's time limit: a new budget's; a resume continues without a deadline."""
        return self.budget.sweep_s if self.budget and not self.resumed else None


def plan_sweep(settings: SweepSettings, *, data: str, num_classes: int, args, exp: str, t0: float) -> Plan:
    """Place the trials on the cluster (a request no node can ever hold fails here in one line), time each
    architecture for the measured objectives and, for a new budgeted run or a dry run, probe this machine
    and size the sweep to its budget; a new plan is recorded (not on a dry run), a resume reads the one its
    experiment recorded."""
    cluster_config = cluster_config_path(args.address, args.cluster_config)
    nodes = cluster_nodes(cluster_config)
    placement = place_trials(settings, nodes)
    recorded = read_plan(exp) if args.resume else {"budget": None, "measured": {}}
    budget = TimeBudget.from_record(recorded["budget"]) if recorded["budget"] else None
    measured = recorded["measured"]
    if not args.resume and not args.dry_run and any(o in MEASURED for o in settings.objectives):
        measured = measure_objectives(settings, num_classes, placement.resources)
    est = None
    if args.dry_run or (settings.time_budget and not args.resume):
        source = source_of(settings, "time_budget")
        # A resume continues the plan its experiment recorded: it is timed, not sized again.
        sized = dataclasses.replace(settings, time_budget="") if args.resume else settings
        fitted, sized, placement, est = fit_budget(
            sized, data=data, placement=placement, nodes=nodes, t0=t0, source=source
        )
        if not args.resume:
            settings, budget = sized, fitted
    if not args.resume and not args.dry_run:
        write_plan(exp, budget.to_record() if budget else None, measured)
    return Plan(settings, placement, cluster_config, budget, est, measured, resumed=args.resume)


def pick_member(trials: pd.DataFrame, settings: SweepSettings) -> dict:
    """The trial the pick rule chooses on the front, as a retrain member with the reason in words; a rule
    no trial satisfies is a one-line FerError that says how to pick again (the trials are kept)."""
    rule = parse_pick(settings.pick, settings.objectives, source_of(settings, "pick"))
    try:
        choice = choose(objective_points(trials, settings), settings.objectives, rule)
    except FerError as e:
        again = f"python sweeps/run.py --resume --name {shlex.quote(settings.name)}"
        again += f" --storage {shlex.quote(settings.storage)}" if settings.storage != "runs" else ""
        again += " --pick RULE"
        raise FerError(f"{e}; the trials are kept, pick again with: {again}") from None
    member = top_trials(trials[trials["trial_id"] == choice.trial_id], settings, 1)[0]
    return member | {"reason": choice.reason}


def choose_winner(
    settings: SweepSettings,
    *,
    trials: pd.DataFrame,
    recorded: dict | None,
    plan: Plan,
    data: str,
    exp: str,
    results,
    sweep_s: float,
    t0: float,
    stopped_by_time: frozenset[str],
) -> tuple[list[dict], SweepSettings, TimeBudget | None, float | None]:
    """The retrain's members (the winner first; empty when every trial failed), the settings with the
    retrain's length, the budget as resized and the retrain's time limit. Taken from ``recorded``
    (``read_winner``) when a run before chose them; else chosen now, the retrain resized to the time left
    (a budget), and all of it recorded in one file before the retrain starts."""
    if recorded is not None:
        budget = TimeBudget.from_record(recorded["budget"]) if recorded.get("budget") else plan.budget
        return recorded["members"], settings, budget, None
    members = top_trials(trials, settings, max(1, settings.ensemble_top_k))
    if members and len(settings.objectives) > 1:
        members = [pick_member(trials, settings)]
    elif members:
        n = int(trials[f"best_{settings.metric}"].notna().sum())
        members[0]["reason"] = f"trial {members[0]['trial_id']}: the best {settings.metric} of the {n} trials"
    budget, limit_s = plan.budget, None
    if not members:
        return members, settings, budget, None
    if budget:
        measured = dict(results=results, members=members, placement=plan.placement, sweep_s=sweep_s)
        settings, budget, limit_s = resize_retrain(settings, data=data, budget=budget, t0=t0, **measured)
        if plan.resumed:  # no new deadline: the resize is recorded, the limit is not enforced
            limit_s = None
    write_winner(
        exp,
        members,
        retrain_epochs=settings.retrain_epochs,
        stopped_by_time=stopped_by_time,
        budget=budget.to_record() if budget else None,
    )
    return members, settings, budget, limit_s
