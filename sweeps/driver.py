"""The driver's phases, in order: check the experiment and data, start Ray, plan, search, retrain, report."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from fer_core.apps.demo import ensure_demo_dataset
from fer_core.datasets import Dataset, entries, resolve
from fer_core.errors import ConfigError, DataError, FerError
from fer_core.metrics import DATASET_METRIC
from fer_core.train import run_audit
from sweeps.config.settings import SweepSettings, source_of
from sweeps.plan.budget import budget_verdict, expected_epochs
from sweeps.plan.decisions import choose_winner, plan_sweep
from sweeps.plan.dry_run import print_dry_run
from sweeps.plan.resources import announce
from sweeps.report.folder import write_report
from sweeps.report.markdown import print_summary
from sweeps.report.trials import collect_trials
from sweeps.state.lock import Lease
from sweeps.state.record import (
    check_data,
    check_location,
    read_phases,
    read_winner,
    resume_settings,
    write_phases,
    write_record,
)
from sweeps.state.signing import restore_signed_state, verify_experiment
from sweeps.state.storage import (
    check_cache,
    check_contained,
    check_writable,
    experiment_uri,
    report_folder,
    upload_report,
)
from sweeps.tune.progress import EpochProgress, Phases
from sweeps.tune.runs import restorable, run_retrain, run_search
from sweeps.tune.tracking import check_tracking, log_report, tracking_callbacks, tracking_uri


def prepare_data(settings: SweepSettings) -> tuple[Any, Dataset]:
    """The data to sweep (the YAML/--data value, or the cached demo set) and what it resolves to, printed:
    the classes and each dataset's folders and splits (every layout and mapping error now, not in a trial)."""
    data = settings.data
    if not data:
        data = str(
            ensure_demo_dataset(**dataclasses.asdict(settings.demo))
        )  # the demo: section is its arguments
        print(
            f"[sweeps] Using the built-in DEMO data (procedurally drawn faces) at {data}.\n"
            "[sweeps] For real data: python sweeps/run.py --config sweeps/configs/fer2013.yaml --data /path/to/fer2013 "
            "(a folder with train/ and val/ holding a folder per class, or the class folders alone)",
            flush=True,
        )
    dataset = resolve(dataclasses.replace(settings.train, data=data))
    for entry in entries(settings.eval_data, "eval_data") if settings.eval_data else ():
        if not Path(entry["root"]).is_dir():  # found now, not after the sweep, when the report reads it
            raise DataError(
                f"{entry['root']}: eval_data folder not found; fix the path or drop it from eval_data"
            )
    for line in dataset.describe():
        print(f"[sweeps] data: {line}", flush=True)
    m = DATASET_METRIC.match(settings.metric)
    names = [s.name for s in dataset.sources]
    if m and (len(names) < 2 or m.group(1) not in names):
        raise ConfigError(
            f"{source_of(settings, 'metric')} = {settings.metric}: there is no dataset '{m.group(1)}' among several "
            f"(datasets: {', '.join(names)}); use val_accuracy, or NAME/val_accuracy for one of those"
        )
    return data, dataset


def check_experiment(exp: str, resume: bool, dry_run: bool = False) -> None:
    """Refuse to resume nothing, or to start over an existing experiment; on ``--resume``, put back state a
    full disk cut short (not on a dry run, which writes nothing) and refuse state the sweep did not write
    (``sweeps.state.signing``) before Ray unpickles any of it."""
    exists = tune.Tuner.can_restore(exp)
    if resume and not exists:
        raise FerError(
            f"{exp}: no experiment to resume; run without --resume to start it (check --storage/--name)"
        )
    if not resume and exists:
        raise FerError(
            f"{exp}: an experiment already exists there; pass --resume to continue it or --name NEW to start another"
        )
    if resume:
        for folder in (exp, f"{exp}/retrain"):
            if folder == exp or restorable(folder):
                if not dry_run:
                    restore_signed_state(folder)
                verify_experiment(folder)
        check_location(exp)


def settings_for_resume(settings: SweepSettings, exp: str, args, bare: bool) -> SweepSettings:
    """On ``--resume``: the recorded settings, or these with only the changes a resume can honour
    (``sweeps.state.record.resume_settings``), recorded unless a dry run; said in the log. Once the winner is
    recorded, the retrain runs the length recorded with it."""
    winner = read_winner(exp)
    started = restorable(f"{exp}/retrain") or winner is not None
    settings, applied = resume_settings(settings, exp, bare, started, from_file=args.config is not None)
    if applied and not args.dry_run:
        write_record(exp, settings)  # a later bare resume and the report see what this run applies
    if winner is not None:
        settings = dataclasses.replace(
            settings, retrain_epochs=winner.get("retrain_epochs", settings.retrain_epochs)
        )
    if settings.time_budget:
        print(
            f"[sweeps] the experiment was sized for a time budget of {settings.time_budget} when it started; "
            f"the resume continues that plan ({settings.num_samples} trials, at most "
            f"{settings.scheduler.max_epochs} epochs, retrain {settings.retrain_epochs} epochs) without a new deadline",
            flush=True,
        )
    if bare:
        print(f"[sweeps] resuming {exp} with the settings it was started with", flush=True)
    for change in applied:
        print(f"[sweeps] resume applies a retrain setting changed since the start: {change}", flush=True)
    return settings


def init_ray(address: str | None) -> None:
    """Join the cluster at ``address``, or start a Ray of our own on 127.0.0.1 (``address="local"``: a bare
    ``ray.init()`` would join whatever cluster this machine last started, or ``RAY_ADDRESS``)."""
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=False, configure_logging=False)


def drive(args, settings: SweepSettings, t0: float, bare: bool) -> int:
    """Run the sweep the command line (``args``, resolved to ``settings``) asked for, from ``t0``
    (``time.monotonic()``); ``bare``: a ``--resume`` that set nothing but where the experiment is.
    Returns the exit status (2: refused in one line)."""
    exp = experiment_uri(settings)
    try:
        check_writable(settings.storage, "--storage")
        check_contained(exp)
        # One driver at a time, before anything looks at or writes the experiment; a dry run writes nothing
        # into it, not even a lease, and reads only files written whole (the one writer's renames).
        with contextlib.nullcontext() if args.dry_run else Lease(exp):
            return _drive(args, settings, t0, bare, exp)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C while Ray shuts down stops at once
        print(f"\n{interrupted(settings, exp)}", file=sys.stderr, flush=True)
        return 130


def _drive(args, settings: SweepSettings, t0: float, bare: bool, exp: str) -> int:
    check_experiment(exp, args.resume, args.dry_run)
    if args.resume:
        settings = settings_for_resume(settings, exp, args, bare)
    if "://" in settings.storage:
        check_writable(str(report_folder(settings).parent), "the report's local copy")
    check_tracking(settings)
    data, dataset = prepare_data(settings)
    check_cache(settings, dataset)
    if args.resume:
        check_data(exp, dataset, record=not args.dry_run)
    findings = run_audit(dataclasses.replace(settings.train, data=data), prefix="[sweeps]", dataset=dataset)
    save = None if args.dry_run else lambda seconds: write_phases(exp, seconds)
    phases = Phases(t0, earlier=read_phases(exp) if args.resume else None, save=save)
    init_ray(args.address)
    try:
        return sweep(settings, data, dataset, findings, args, exp, phases)
    finally:
        ray.shutdown()


def interrupted(settings: SweepSettings, exp: str) -> str:
    """The line a Ctrl-C ends the sweep with: what was kept, and the command that continues it."""
    command = f"python sweeps/run.py --resume --name {shlex.quote(settings.name)}"
    if settings.storage != "runs":
        command += f" --storage {shlex.quote(settings.storage)}"
    if not tune.Tuner.can_restore(exp):
        return "interrupted before the search started; nothing to continue: run the same command again"
    return f"interrupted: the experiment is kept in {exp}; continue it with: {command}"


def work_left(exp: str, settings: SweepSettings) -> str:
    """What a resume of ``exp`` has left to do, for ``--resume --dry-run``."""
    states = [t.status for t in tune.ExperimentAnalysis(exp).trials]
    done, failed = states.count("TERMINATED"), states.count("ERROR")
    left = settings.num_samples - done - failed
    lines = [f"Resume: {done} of {settings.num_samples} trials finished, {failed} failed, {left} left to run"]
    winner = read_winner(exp)
    if winner is None:
        lines.append("  the winner is not chosen yet: the retrain and the report are still to run")
    elif restorable(f"{exp}/retrain"):
        finished = [
            t.last_result.get("training_iteration", 0)
            for t in tune.ExperimentAnalysis(f"{exp}/retrain").trials
        ]
        lines.append(
            f"  winner {winner['members'][0]['trial_id']}: the retrain has run {sum(finished)} of "
            f"{len(winner['members']) * settings.retrain_epochs} epochs; then the report"
        )
    else:
        lines.append(
            f"  winner {winner['members'][0]['trial_id']}: the retrain is still to run, then the report"
        )
    return "\n".join(lines)


def sweep(
    settings: SweepSettings, data, dataset: Dataset, findings: dict, args, exp: str, phases: Phases
) -> int:
    """Plan, search, retrain and report, on a running Ray; returns the exit status. The decisions are
    ``sweeps.plan.decisions``'s: recorded when taken, read back by a resume."""
    plan = plan_sweep(settings, data=data, num_classes=len(dataset.classes), args=args, exp=exp, t0=phases.t0)
    settings, placement, budget = plan.settings, plan.placement, plan.budget
    if args.dry_run:
        if args.resume:
            print(work_left(exp, settings), flush=True)
        where = dict(data=data, findings=findings, placement=placement, exp=exp, t0=phases.t0)
        print_dry_run(settings, est=plan.est, budget=budget, **where)
        return 0
    if not args.resume:  # signed, so that --resume alone continues these settings, on this data
        write_record(exp, settings)
        check_data(exp, dataset, record=True)
    announce(placement, args.address, plan.cluster_config)
    phases.end("start-up" + (" and probe" if plan.est else ""))
    deadline = time.time() + plan.search_s if plan.search_s else None
    progress = EpochProgress("search", expected_epochs(settings), deadline)
    with phases.ticking("search"):
        results, stopped_by_time = run_search(
            settings,
            data,
            placement,
            args.resume,
            plan.search_s,
            [progress, *tracking_callbacks(settings, "sweep")],
            measured=plan.measured,
        )
    sweep_s = phases.end("search")
    recorded = read_winner(exp) if args.resume else None
    if recorded is not None:  # the first run's deadline is not restored: its verdict is in the record
        stopped_by_time = frozenset(recorded.get("stopped_by_time", ()))
    trials = collect_trials(results, settings, stopped_by_time)
    # The budget counts from the experiment's start: a resumed run's earlier runs' phases included.
    started = time.monotonic() - phases.total
    measured = dict(results=results, sweep_s=sweep_s, t0=started, stopped_by_time=stopped_by_time)
    members, settings, budget, retrain_limit_s = choose_winner(
        settings, trials=trials, recorded=recorded, plan=plan, data=data, exp=exp, **measured
    )
    if not members:
        print(
            "error: every trial failed; see the errors listed above and in the trial folders", file=sys.stderr
        )
        print_summary(trials, settings, None, phases.line())
        return 1
    best = members[0]
    others = len(members) - 1
    ensemble = f", with the next {others} configuration(s) for the ensemble" if others else ""
    chosen = (
        f"by the pick rule {settings.pick!r}, {best['reason'].rstrip('.')}"
        if len(settings.objectives) > 1
        else ""
    )
    print(
        f"[sweeps] {'chosen' if chosen else 'best'} trial {best['trial_id']}: {settings.metric} {best['best']:.4f} "
        f"with {best['params']}; {chosen + '; ' if chosen else ''}retraining it anew (not continued from its "
        f"trial) for {settings.retrain_epochs} epochs{ensemble}",
        flush=True,
    )
    callbacks = [EpochProgress("retrain", len(members) * settings.retrain_epochs)]
    callbacks += tracking_callbacks(settings, "retrain")
    params = [t["params"] for t in members]
    with phases.ticking("retrain"):
        finals = run_retrain(settings, data, params, placement, retrain_limit_s, callbacks)
    phases.end("retrain")
    if finals[0].error:
        print(f"error: the retrain of the winner failed: {finals[0].error}", file=sys.stderr)
        return 1
    out = report_folder(settings)
    with phases.ticking("report"):
        write_report(
            settings, data, trials, members, finals, out=out, phases=phases, audit=findings, budget=budget
        )
    run_id = log_report(settings, out, best, finals[0].metrics.get("trial_id", ""))
    if run_id:
        print(
            f"[sweeps] MLflow: experiment {settings.name!r} at {tracking_uri(settings)}; the winner's report is "
            f"attached to run {run_id}",
            flush=True,
        )
    print_summary(trials, settings, out, phases.line() + budget_verdict(budget, phases.total))
    upload_report(settings.storage, settings.name, out)  # a URI storage keeps the report after the cluster
    failed = int((trials["status"] == "failed").sum())
    if failed:
        print(f"[sweeps] note: {failed} trial(s) failed; they are listed in the report", flush=True)
    return 0
