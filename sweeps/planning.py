"""The driver's side of time planning: probe the machine, apply a time budget to the settings, resize the
retrain once the search has measured the winner, and print the plan of a ``--dry-run``.

The arithmetic is in ``sweeps.budget``; this module runs it at the right moments of ``sweeps/run.py``.
"""

from __future__ import annotations

import math
import time

from .budget import (
    Caps,
    asha_epochs,
    asha_rungs,
    count_images,
    estimate,
    fmt_duration,
    measured_retrain_epoch_s,
    measured_start_s,
    parse_duration,
    plan_budget,
    run_probe,
    size_retrain,
    trial_s,
)
from .placement import make_plan
from .record import pin_planned, write_record
from .tuning import base_train_config


def _bases(settings, data: str, plan) -> tuple[dict, dict]:
    """The TrainConfig mappings of a trial and of the retrain."""
    return (
        base_train_config(settings, data, plan.resources, settings.scheduler.max_epochs),
        base_train_config(settings, data, plan.resources, settings.retrain_epochs, retrain=True),
    )


def plan_for_time(settings, data: str, plan, nodes, t0: float, budget_flag: bool):
    """Probe this machine and, with a time budget, size the sweep to it (the settings are changed in place
    and pinned for the record).

    Args:
        settings: sweep settings.
        data: dataset root.
        plan: the per-node plan (``make_plan``).
        nodes: the cluster's nodes, to plan again once the trial count is known.
        t0: ``time.monotonic()`` when the command started (the budget counts from there).
        budget_flag: the budget came from ``--time-budget`` (named in a refusal), not the YAML.

    Returns:
        (budget plan or None, the per-node plan, the probe's estimates).
    """
    base, retrain_base = _bases(settings, data, plan)
    counts = count_images(data)
    print(
        f"[sweeps] probe: timing a trial's training and validation on {plan.resources['cpu']} CPU + "
        f"{plan.resources['gpu']:g} GPU ({min(max(1, plan.concurrent), 4)} at once) ...",
        flush=True,
    )
    probe = run_probe(settings, data, plan, base, retrain_base)
    print(
        f"[sweeps] probe: {probe.train_images_per_s:.0f} img/s training"
        + (
            f" ({probe.retrain_images_per_s:.0f} with the retrain's config)"
            if probe.retrain_images_per_s != probe.train_images_per_s
            else ""
        )
        + f", {probe.eval_images_per_s:.0f} img/s validation at {probe.params or 'the fixed config'}; "
        f"a trial starts in ~{probe.start_s:.0f} s "
        f"({probe.runtime}); took {probe.seconds:.0f} s",
        flush=True,
    )
    est = estimate(settings, probe, counts, base, retrain_base)
    if not settings.time_budget:
        return None, plan, est
    source = "--time-budget" if budget_flag else f"{settings.source}: 'time_budget'"
    budget = plan_budget(
        parse_duration(settings.time_budget, source),
        time.monotonic() - t0,
        est,
        settings,
        plan.concurrent,
        Caps.from_settings(settings),
        source,
    )
    settings.num_samples, settings.retrain_epochs = budget.num_samples, budget.retrain_epochs
    settings.scheduler.max_epochs = budget.max_epochs
    pin_planned(settings)
    for line in budget.lines():
        print(f"[sweeps] {line}", flush=True)
    return budget, make_plan(settings, nodes), est


def expected_epochs(settings) -> float:
    """Epochs the search is expected to train in all (ASHA stops most trials early)."""
    sch = settings.scheduler
    return settings.num_samples * asha_epochs(sch.max_epochs, sch.grace_period, sch.reduction_factor)


def resize_retrain(
    settings, data: str, budget, results, members: list[dict], plan, sweep_s: float, t0: float
):
    """Size the retrain to the time actually left, from the winner trial's own timing; rewrites the record
    (the retrain has not started, so a resume may still change it). Returns the retrain's time limit
    (its start, its epochs, and half the margin): a safety net that stops it at an epoch's end.

    Args:
        settings: sweep settings (``retrain_epochs`` is changed in place).
        data: dataset root.
        budget: the budget's plan.
        results: the search's ResultGrid.
        members: the trials to retrain, the winner first.
        plan: the per-node plan.
        sweep_s: the search's wall time.
        t0: ``time.monotonic()`` when the command started.
    """
    from .paths import experiment_uri

    base, retrain_base = _bases(settings, data, plan)
    winner = next((r for r in results if (r.metrics or {}).get("trial_id") == members[0]["trial_id"]), None)
    epoch_s = (
        measured_retrain_epoch_s(
            winner.metrics,
            members[0]["params"],
            budget.est.counts,
            base,
            retrain_base,
            budget.est.retrain_speed,
        )
        if winner is not None
        else None
    ) or budget.est.retrain_epoch_s
    start_s = measured_start_s(results, sweep_s, plan.concurrent) or budget.est.start_s
    epochs, left = size_retrain(budget, t0 + budget.budget_s, epoch_s, start_s, len(members), plan.concurrent)
    note = (
        f"retrain resized after the search: {epochs} epochs (planned {budget.retrain_epochs}); "
        f"{fmt_duration(left)} left for it, an epoch measured ~{epoch_s:.1f} s, a trial's start ~{start_s:.0f} s"
    )
    budget.notes.append(note)
    print(f"[sweeps] time budget: {note}", flush=True)
    if epochs != settings.retrain_epochs:
        settings.retrain_epochs = epochs
        pin_planned(settings)
        write_record(experiment_uri(settings), settings)
    return start_s + max(left, epochs * epoch_s) + budget.margin_s / 2


def budget_verdict(budget, total_s: float) -> str:
    """`` (time budget 6m00s: 1m35s to spare)`` for the summary's time line; empty when no budget was
    planned in this command (none given, or a resume continuing an earlier plan)."""
    if budget is None:
        return ""
    spare = budget.budget_s - total_s
    return f" (time budget {fmt_duration(budget.budget_s)}: " + (
        f"{fmt_duration(spare)} to spare)" if spare >= 0 else f"over by {fmt_duration(-spare)})"
    )


def _space_line(p) -> str:
    if p.kind == "choice":
        return f"{p.name}: choice of {list(p.values)}"
    q = f", step {p.q:g}" if p.q else ""
    return f"{p.name}: {p.kind} {p.low:g} .. {p.high:g}{q}"


def print_dry_run(settings, data: str, findings: dict, plan, est, budget, exp: str, t0: float) -> None:
    """The plan of a run, without training: data, audit warnings, resources, search space, ASHA rungs,
    retrain, output and the estimated time (from the probe).

    Args:
        settings: sweep settings (after a time budget's sizing).
        data: dataset root.
        findings: the audit's findings.
        plan: the per-node plan.
        est: the probe's estimates (``sweeps.budget.estimate``).
        budget: the time budget's plan, or None.
        exp: where the experiment would be written.
        t0: ``time.monotonic()`` when the command started.
    """
    counts = est.counts
    sch = settings.scheduler
    slots = max(1, plan.concurrent)
    search_s = math.ceil(settings.num_samples / slots) * trial_s(est, sch)
    members = max(1, settings.ensemble_top_k)
    waves = math.ceil(members / min(slots, members))
    retrain_s = waves * (est.start_s + settings.retrain_epochs * est.retrain_epoch_s)
    if budget:
        search_s = min(search_s, budget.sweep_s)
    so_far = time.monotonic() - t0
    total = so_far + search_s + retrain_s + est.report_s
    warnings = findings.get("warnings", []) if findings else []
    lines = [
        "Dry run: the plan a run with these settings would follow; nothing was trained or written.",
        f"Data: {data}",
        f"  train {counts.train} images, val {counts.val}"
        + (f", test {counts.test}" if counts.test else ", no test split"),
        "  audit: " + (f"{len(warnings)} warning(s)" if warnings else "no warnings"),
        *[f"    WARNING: {w}" for w in warnings],
        "Resources:",
        *[f"  {line}" for line in plan.lines()],
        f"Search: {settings.num_samples} trials, Optuna TPE (seed {settings.seed}), metric {settings.metric} "
        f"({settings.mode}), up to {plan.concurrent} at once",
        *[f"  {_space_line(p)}" for p in settings.search_space],
        f"Scheduler: ASHA, rungs at epochs {asha_rungs(sch.max_epochs, sch.grace_period, sch.reduction_factor)} "
        f"(keeps the best 1/{sch.reduction_factor:g} at each); ~{asha_epochs(sch.max_epochs, sch.grace_period, sch.reduction_factor):.1f} "
        "epochs per trial expected",
        f"Retrain: the best {members} configuration(s) from scratch for {settings.retrain_epochs} epochs"
        + (f", with {settings.retrain}" if settings.retrain else ""),
        f"Output: {exp} (report in {exp}/report)"
        + (f"; MLflow experiment {settings.name!r}" if settings.tracking == "mlflow" else ""),
        f"Estimated time on this machine: start-up and probe {fmt_duration(so_far)}, search ~{fmt_duration(search_s)} "
        f"(a trial epoch ~{est.trial_epoch_s:.1f} s, a trial's start ~{est.start_s:.0f} s), retrain "
        f"~{fmt_duration(retrain_s)} (an epoch ~{est.retrain_epoch_s:.1f} s), report ~{fmt_duration(est.report_s)}: "
        f"total ~{fmt_duration(total)}",
    ]
    if budget:
        lines += [f"  {line}" for line in budget.lines()]
    print("\n".join(lines), flush=True)
