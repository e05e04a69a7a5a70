"""The printout of ``--dry-run``: what a run with these settings would do and how long it would take."""

from __future__ import annotations

import math
import time

from sweeps.config.settings import SweepSettings, fmt_duration
from sweeps.config.space import Param, architectures
from sweeps.plan.budget import Estimate, TimeBudget, asha_epochs, asha_rungs, trial_s, waves
from sweeps.plan.latency import what_is_timed
from sweeps.plan.resources import Placement


def _space_line(p: Param) -> str:
    if p.kind == "choice":
        return f"{p.name}: choice of {list(p.values)}"
    q = f", step {p.q:g}" if p.q else ""
    return f"{p.name}: {p.kind} {p.low:g} .. {p.high:g}{q}"


def print_dry_run(
    settings: SweepSettings,
    *,
    data: str,
    findings: dict,
    placement: Placement,
    est: Estimate,
    budget: TimeBudget | None,
    exp: str,
    t0: float,
) -> None:
    """Print the plan of a run and its estimated time, without training; ``settings`` as a budget sized them,
    ``exp`` where the experiment would be written, ``t0`` ``time.monotonic()`` at the command's start."""
    counts, sch = est.counts, settings.scheduler
    members, concurrent = max(1, settings.ensemble_top_k), placement.concurrent
    search_s = math.ceil(settings.num_samples / max(1, concurrent)) * trial_s(est, sch)
    if budget:
        search_s = min(search_s, budget.sweep_s)
    retrain_s = waves(members, concurrent) * (est.start_s + settings.retrain_epochs * est.retrain_epoch_s)
    so_far = time.monotonic() - t0
    total = so_far + search_s + retrain_s + est.report_s
    warnings = findings.get("warnings", []) if findings else []
    rungs = asha_rungs(sch.max_epochs, sch.grace_period, sch.reduction_factor)
    epochs = asha_epochs(sch.max_epochs, sch.grace_period, sch.reduction_factor)
    lines = [
        "Dry run: the plan a run with these settings would follow; nothing was trained or written.",
        f"Data: {data}",
        f"  train {counts.train} images, val {counts.val}"
        + (f", test {counts.test}" if counts.test else ", no test split"),
        "  audit: " + (f"{len(warnings)} warning(s)" if warnings else "no warnings"),
        *[f"    WARNING: {w}" for w in warnings],
        "Resources:",
        *[f"  {line}" for line in placement.lines()],
        f"Search: {settings.num_samples} trials, Optuna TPE (seed {settings.seed}), metric {settings.metric} "
        f"({settings.mode}), up to {placement.concurrent} at once",
        *[f"  {_space_line(p)}" for p in settings.search_space],
        *_objective_lines(settings),
        f"Scheduler: ASHA, rungs at epochs {rungs} (keeps the best 1/{sch.reduction_factor:g} at each); "
        f"~{epochs:.1f} epochs per trial expected",
        f"Retrain: the best {members} configuration(s) anew (not continued from their trials) for {settings.retrain_epochs} epochs"
        + (f", with {settings.retrain}" if settings.retrain else ""),
        f"Output: {exp} (report in {exp}/report)"
        + (f"; MLflow experiment {settings.name!r}" if settings.tracking == "mlflow" else ""),
        f"Estimated time on this machine: start-up and probe {fmt_duration(so_far)}, search "
        f"~{fmt_duration(search_s)} (a trial epoch ~{est.trial_epoch_s:.1f} s, a trial's start "
        f"~{est.start_s:.0f} s), retrain ~{fmt_duration(retrain_s)} (an epoch ~{est.retrain_epoch_s:.1f} s), "
        f"report ~{fmt_duration(est.report_s)}: total ~{fmt_duration(total)}",
        *[f"  {line}" for line in (budget.lines() if budget else [])],
    ]
    print("\n".join(lines), flush=True)


def _objective_lines(settings: SweepSettings) -> list[str]:
    """With measured objectives: what the run would time before the search, and how it picks the model."""
    if len(settings.objectives) == 1:
        return []
    archs = architectures(settings.search_space, settings.train, settings.source)
    return [
        "Objectives: "
        + ", ".join(f"{o} ({m})" for o, m in settings.objectives.items())
        + f"; ASHA stops trials on {settings.metric}",
        f"  timed once before the search: {what_is_timed(settings, archs)}",
        f"  the model to ship: the pick rule {settings.pick!r} on the Pareto front"
        + ("; an INT8 copy weighed against it" if settings.int8 else ""),
    ]
