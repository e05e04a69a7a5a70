"""The driver's phases, in order: check the experiment and data, start Ray, plan, search, retrain, report."""

from __future__ import annotations

import dataclasses
import sys
import time

import ray
from ray import tune

from fer_core.apps.demo import ensure_demo_dataset
from fer_core.data import scan_split
from fer_core.errors import FerError
from fer_core.train import run_audit
from sweeps.config.settings import SweepSettings
from sweeps.plan.budget import budget_verdict, expected_epochs
from sweeps.plan.dry_run import print_dry_run
from sweeps.plan.probe import fit_budget, resize_retrain
from sweeps.plan.resources import announce, cluster_config_path, cluster_nodes, place_trials
from sweeps.report.folder import write_report
from sweeps.report.markdown import print_summary
from sweeps.report.trials import collect_trials, top_trials
from sweeps.state.record import resume_settings, write_record
from sweeps.state.signing import verify_experiment
from sweeps.state.storage import (
    check_cache,
    check_writable,
    experiment_uri,
    report_folder,
    upload_report,
)
from sweeps.tune.progress import EpochProgress, Phases
from sweeps.tune.runs import run_retrain, run_search
from sweeps.tune.tracking import check_tracking, log_report, tracking_callbacks, tracking_uri


def prepare_data(settings: SweepSettings) -> str:
    """The dataset to sweep: the YAML/--data path (its layout checked now), or the cached demo set."""
    if settings.data:
        for split in ("train", "val"):
            scan_split(settings.data, split)  # layout errors now, not inside a trial
        return settings.data
    d = settings.demo
    path = ensure_demo_dataset(
        train_per_class=d.train_per_class,
        val_per_class=d.val_per_class,
        test_per_class=d.test_per_class,
        img_size=d.img_size,
        seed=d.seed,
    )
    print(
        f"[sweeps] Using the built-in DEMO data (procedurally drawn faces) at {path}.\n"
        "[sweeps] For real data: python sweeps/run.py --config sweeps/configs/fer2013.yaml --data /path/to/fer2013 "
        "(an ImageFolder root with train/ and val/, each holding angry disgust fear happy neutral sad surprise)",
        flush=True,
    )
    return str(path)


def check_experiment(exp: str, resume: bool) -> None:
    """Refuse to resume nothing, or to start over an existing experiment; on ``--resume``, refuse state
    the sweep did not write (``sweeps.state.signing``) before Ray unpickles any of it."""
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
        verify_experiment(exp)
        if tune.Tuner.can_restore(f"{exp}/retrain"):
            verify_experiment(f"{exp}/retrain")


def settings_for_resume(settings: SweepSettings, exp: str, bare: bool) -> SweepSettings:
    """On ``--resume``: the recorded settings, or these with only the changes a resume can honour
    (``sweeps.state.record.resume_settings``); said in the log."""
    settings, applied = resume_settings(settings, exp, bare, tune.Tuner.can_restore(f"{exp}/retrain"))
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
    """Join the cluster at ``address``, or start a Ray of our own on 127.0.0.1.

    ``address="local"`` always starts a new Ray: a bare ``ray.init()`` joins whatever cluster this machine
    last started with ``ray start`` (or ``RAY_ADDRESS``), so a local sweep would silently run there.
    """
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=False, configure_logging=False)


def drive(args, settings: SweepSettings, t0: float, bare: bool) -> int:
    """Run the sweep the command line asked for; returns the exit status (2: refused in one line).

    Args:
        args: the parsed command line (``sweeps.run``).
        settings: the settings it resolved to.
        t0: ``time.monotonic()`` when the command started (a time budget counts from there).
        bare: on ``--resume``, the command line set nothing but where the experiment is.
    """
    try:
        exp = experiment_uri(settings)
        check_writable(settings.storage, "--storage")
        check_experiment(exp, args.resume)
        if args.resume:
            settings = settings_for_resume(settings, exp, bare)
        if "://" in settings.storage:
            check_writable(str(report_folder(settings).parent), "the report's local copy")
        check_tracking(settings)
        data = prepare_data(settings)
        check_cache(settings, data)
        findings = run_audit(dataclasses.replace(settings.train, data=data), prefix="[sweeps]")
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_ray(args.address)
    try:
        return sweep(settings, data, findings, args, exp, Phases(t0))
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()


def sweep(settings: SweepSettings, data: str, findings: dict, args, exp: str, phases: Phases) -> int:
    """Plan, search, retrain and report, on a running Ray; returns the exit status."""
    # Planned once, before anything is submitted: a request no node can ever hold fails here in one line.
    cluster_config = cluster_config_path(args.address, args.cluster_config)
    nodes = cluster_nodes(cluster_config)
    placement = place_trials(settings, nodes)
    budget = None
    if args.dry_run or (settings.time_budget and not args.resume):
        source = "--time-budget" if args.time_budget else f"{settings.source}: 'time_budget'"
        budget, settings, placement, est = fit_budget(
            settings, data=data, placement=placement, nodes=nodes, t0=phases.t0, source=source
        )
    if args.dry_run:
        print_dry_run(
            settings,
            data=data,
            findings=findings,
            placement=placement,
            est=est,
            budget=budget,
            exp=exp,
            t0=phases.t0,
        )
        return 0
    if not args.resume:  # signed, so that --resume alone continues these settings
        write_record(exp, settings)
    announce(placement, args.address, cluster_config)
    phases.end("start-up" + (" and probe" if budget else ""))
    results, stopped_by_time = run_search(
        settings,
        data,
        placement,
        args.resume,
        time_limit_s=budget.sweep_s if budget else None,
        callbacks=[
            EpochProgress(
                "search", expected_epochs(settings), time.time() + budget.sweep_s if budget else None
            ),
            *tracking_callbacks(settings, "sweep"),
        ],
    )
    sweep_s = phases.end("search")
    trials = collect_trials(results, settings, stopped_by_time)
    members = top_trials(trials, settings, max(1, settings.ensemble_top_k))
    if not members:
        print(
            "error: every trial failed; see the errors listed above and in the trial folders", file=sys.stderr
        )
        print_summary(trials, settings, None, phases.line())
        return 1
    retrain_limit_s = None
    if budget:
        resized, budget, retrain_limit_s = resize_retrain(
            settings,
            data=data,
            budget=budget,
            results=results,
            members=members,
            placement=placement,
            sweep_s=sweep_s,
            t0=phases.t0,
        )
        if resized != settings:
            settings = resized
            write_record(exp, settings)  # the retrain has not started: a resume may still change it
    best = members[0]
    print(
        f"[sweeps] best trial {best['trial_id']}: {settings.metric} {best['best']:.4f} with {best['params']}; "
        f"retraining it from scratch for {settings.retrain_epochs} epochs"
        + (
            f", with the next {len(members) - 1} configuration(s) for the ensemble"
            if len(members) > 1
            else ""
        ),
        flush=True,
    )
    finals = run_retrain(
        settings,
        data,
        [t["params"] for t in members],
        placement,
        time_limit_s=retrain_limit_s,
        callbacks=[
            EpochProgress("retrain", len(members) * settings.retrain_epochs),
            *tracking_callbacks(settings, "retrain"),
        ],
    )
    phases.end("retrain")
    if finals[0].error:
        print(f"error: the retrain of the winner failed: {finals[0].error}", file=sys.stderr)
        return 1
    out = write_report(
        settings,
        data,
        trials,
        members,
        finals,
        out=report_folder(settings),
        phases=phases,
        audit=findings,
        budget=budget,
    )
    run_id = log_report(settings, out, best, finals[0].metrics.get("trial_id", ""))
    if run_id:
        print(
            f"[sweeps] MLflow: experiment {settings.name!r} at {tracking_uri(settings)}; the winner's report is "
            f"attached to run {run_id}",
            flush=True,
        )
    print_summary(trials, settings, out, phases.line() + budget_verdict(budget, phases.total))
    upload_report(
        settings.storage, settings.name, out
    )  # a URI storage keeps the report: it outlives the cluster
    failed = int((trials["status"] == "failed").sum())
    if failed:
        print(f"[sweeps] note: {failed} trial(s) failed; they are listed in the report", flush=True)
    return 0
