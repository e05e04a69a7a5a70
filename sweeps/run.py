"""Run a hyperparameter sweep with Ray Tune + Optuna, retrain the winner, write the report.

    python sweeps/run.py                                     # demo data, sweeps/configs/default.yaml
    python sweeps/run.py --config sweeps/configs/fer2013.yaml --data /path/to/fer2013
    python sweeps/run.py --time-budget 30m ...               # size trials and retrain to finish in 30 minutes
    python sweeps/run.py --dry-run ...                       # print the plan and its estimated time, train nothing
    python sweeps/run.py --tracking mlflow ...               # also log trials and report to MLflow (./mlruns)
    python sweeps/run.py --resume --name NAME                # continue an interrupted sweep
    python sweeps/run.py --address auto ...                  # on a Ray cluster's head node
    python sweeps/run.py --address HOST:PORT --cluster-config cluster.yaml ...   # plan for its autoscaled workers

Any other ``key=value`` overrides the YAML: TrainConfig keys go to ``train``, dotted keys to their
section (``scheduler.max_epochs=4``), the rest to the top level (``num_samples=12``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fer_core.config import parse_overrides
from fer_core.errors import FerError
from sweeps.paths import check_cache, check_name, check_writable, experiment_uri
from sweeps.placement import announce_plan, cluster_config_path, cluster_nodes, make_plan
from sweeps.planning import budget_verdict, expected_epochs, plan_for_time, print_dry_run, resize_retrain
from sweeps.record import resume_settings, write_record
from sweeps.settings import TRACKERS, SweepSettings, load_settings
from sweeps.storage import upload_report
from sweeps.tracking import check_tracking, log_report, tracking_callbacks, tracking_uri
from sweeps.tuning import retrain, run_sweep


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python sweeps/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    p.add_argument("--config", help="sweep YAML (default: sweeps/configs/default.yaml, the demo)")
    p.add_argument(
        "--data", help="dataset root with train/ and val/ (optional test/); default: generated demo faces"
    )
    p.add_argument(
        "--storage",
        help="results folder or shared URI (s3://..., an NFS path on a cluster); default from YAML ('runs')",
    )
    p.add_argument("--name", help="experiment name; results go to STORAGE/NAME/")
    p.add_argument(
        "--address",
        help="Ray cluster to join: 'auto' on a cluster node, or HOST:PORT; default: start Ray locally on 127.0.0.1",
    )
    p.add_argument(
        "--cluster-config",
        metavar="YAML",
        help="the Ray launcher file of an autoscaling cluster: trials are planned for the worker types it can "
        "launch, not only the nodes up now (default with --address auto: ~/ray_bootstrap_config.yaml, "
        "which `ray up` leaves on the head, when it exists)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted experiment STORAGE/NAME (searcher state and finished trials kept)",
    )
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="finish the whole job (search, retrain, report) within this wall time, e.g. 30m, 2h, 1h30m: "
        "trials, ASHA's max epochs and the retrain are sized from a probe on this machine "
        "(YAML: time_budget; num_samples, scheduler.max_epochs and retrain_epochs, when set, are upper bounds)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (data, resources, search space, ASHA rungs, retrain, output, estimated time from a "
        "short probe) and exit without training",
    )
    p.add_argument(
        "--tracking",
        choices=TRACKERS,
        help="also log each trial's params and epoch metrics, and the report, to MLflow (YAML: tracking)",
    )
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (implies --tracking mlflow); default: a local ./mlruns folder, no server",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override YAML keys, e.g. num_samples=4 lr=1e-3 scheduler.max_epochs=3",
    )
    return p


def resolve_settings(args) -> SweepSettings:
    """YAML + command line -> checked settings (no Ray needed; every error is a one-line FerError)."""
    overrides = parse_overrides(args.overrides)
    for key in ("time_budget", "tracking", "tracking_uri"):  # flags that are also YAML keys
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if getattr(args, "tracking_uri", None):
        overrides.setdefault("tracking", "mlflow")
    settings = load_settings(args.config, overrides)
    for key in ("data", "storage", "name"):
        if getattr(args, key) is not None:  # an empty --name is refused below, not ignored
            setattr(settings, key, getattr(args, key))
    check_name(settings.name, "--name" if args.name is not None else f"{settings.source}: 'name'")
    if settings.data:  # absolute: the experiment records it, and a resume compares it
        settings.data = str(Path(settings.data).expanduser().resolve())
    resolve_weights(settings)
    return settings


def resolve_weights(settings: SweepSettings) -> None:
    """A ``weights`` file named relative to where the sweep was started, made absolute: trials run in
    folders of their own, where a relative path would name nothing. A missing file is reported now, in
    one line, not by every trial."""
    for where, holder in (("train", settings.train), ("retrain", settings.retrain)):
        value = holder.weights if where == "train" else holder.get("weights")
        if not value:
            continue
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise FerError(
                f"{where}.weights: {value}: weights file not found; point it at a local ImageNet weights file "
                "(.safetensors or torch state dict), or pass weights= model=efficientnet_b0 to train from scratch"
            )
        if where == "train":
            holder.weights = str(path)
        else:
            holder["weights"] = str(path)


def prepare_data(settings: SweepSettings) -> str:
    """The dataset to sweep: the YAML/--data path, or the cached demo set (generated on first use)."""
    if settings.data:
        from fer_core.data import scan_split

        for split in ("train", "val"):
            scan_split(settings.data, split)  # layout errors now, not inside a trial
        return str(Path(settings.data).expanduser().resolve())
    from fer_core.apps.demo import ensure_demo_dataset

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
        f"[sweeps] For real data: python sweeps/run.py --config sweeps/configs/fer2013.yaml --data /path/to/fer2013 "
        f"(an ImageFolder root with train/ and val/, each holding angry disgust fear happy neutral sad surprise)",
        flush=True,
    )
    return str(path)


def check_experiment(settings: SweepSettings, resume: bool) -> None:
    """Refuse to resume nothing, or to start over an existing experiment, before Ray starts; and refuse
    to resume state the sweep did not write (``sweeps.manifest``), before Ray unpickles any of it."""
    from ray import tune

    from sweeps.manifest import verify_experiment

    exp = experiment_uri(settings)
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


def settings_for_resume(settings: SweepSettings, args) -> SweepSettings:
    """On ``--resume``: the experiment's recorded settings, or these with only the changes a resume can
    honour (``sweeps.record.resume_settings``); said in the log."""
    from ray import tune

    exp = experiment_uri(settings)
    bare = args.config is None and args.data is None and not args.overrides and args.time_budget is None
    tracking = (settings.tracking, settings.tracking_uri)
    settings, applied = resume_settings(settings, exp, bare, tune.Tuner.can_restore(f"{exp}/retrain"))
    if args.tracking is not None or args.tracking_uri is not None:  # not part of the experiment's identity
        settings.tracking, settings.tracking_uri = tracking
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


def keep_local_ray_on_loopback() -> None:
    """Make a local (no --address) Ray bind every socket to 127.0.0.1. Call before ray is imported.

    On Linux, Ray turns even ``_node_ip_address="127.0.0.1"`` into the machine's routed address and
    listens there and on 0.0.0.0; with this switch off (its default on macOS and Windows) it uses the
    loopback address for everything, which is all a single-machine sweep needs.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray reports usage statistics to its makers by default; a local sweep talks to nothing but itself.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def init_ray(address: str | None) -> None:
    """Join the cluster at ``address``, or start a Ray of our own on 127.0.0.1.

    ``address="local"`` always starts a new Ray: a bare ``ray.init()`` joins whatever cluster this machine
    last started with ``ray start`` (Ray's ``ray_current_cluster`` record, or ``RAY_ADDRESS``), so a local
    sweep would silently run on that cluster, or wait forever for its GCS when it was killed uncleanly.

    Args:
        address: ``--address`` (``auto`` or HOST:PORT), or None for a local run.
    """
    import ray

    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=False, configure_logging=False)


def run_audit(settings: SweepSettings, data: str) -> dict:
    """Audit the dataset once, before Ray starts: its summary goes to the log now and to the report later."""
    import dataclasses

    from fer_core.train import run_audit as audit

    return audit(dataclasses.replace(settings.train, data=data), prefix="[sweeps]")


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()  # a time budget counts from here: the whole command
    # intermixed: key=value items may stand before and after --flags
    args = build_arg_parser().parse_intermixed_args(argv)
    if not args.address:
        keep_local_ray_on_loopback()
    try:
        settings = resolve_settings(args)
        check_writable(settings.storage, "--storage")
        check_experiment(settings, args.resume)
        if args.resume:
            settings = settings_for_resume(settings, args)
        check_tracking(settings)
        data = prepare_data(settings)
        check_cache(settings, data)
        findings = run_audit(settings, data)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import ray

    from sweeps import report, summary
    from sweeps import trials as trial_table
    from sweeps.progress import EpochProgress, Phases

    phases = Phases(t0)

    init_ray(args.address)
    try:
        # Planned once, before anything is submitted: a request no node can ever hold fails here in one line.
        cluster_config = cluster_config_path(args.address, args.cluster_config)
        nodes = cluster_nodes(cluster_config)
        plan = make_plan(settings, nodes)
        budget = None
        if args.dry_run or (settings.time_budget and not args.resume):
            budget, plan, est = plan_for_time(settings, data, plan, nodes, t0, args.time_budget is not None)
        if args.dry_run:
            print_dry_run(settings, data, findings, plan, est, budget, experiment_uri(settings), t0)
            return 0
        if not args.resume:  # signed, so a resume can trust it: --resume alone continues these settings
            write_record(experiment_uri(settings), settings)
        announce_plan(plan, args.address, cluster_config)
        phases.end("start-up" + (" and probe" if budget else ""))
        deadline = time.time() + budget.sweep_s if budget else None
        results = run_sweep(
            settings,
            data,
            args.resume,
            plan,
            time_budget_s=budget.sweep_s if budget else None,
            callbacks=[
                EpochProgress("search", expected_epochs(settings), deadline),
                *tracking_callbacks(settings, "sweep"),
            ],
        )
        sweep_s = phases.end("search")
        trials = trial_table.collect_trials(results, settings)
        members = trial_table.top_trials(trials, settings, max(1, settings.ensemble_top_k))
        if not members:
            print(
                "error: every trial failed; see the errors listed above and in the trial folders",
                file=sys.stderr,
            )
            summary.print_summary(trials, settings, None, phases.line())
            return 1
        retrain_budget_s = None
        if budget:
            retrain_budget_s = resize_retrain(settings, data, budget, results, members, plan, sweep_s, t0)
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
        finals = retrain(
            settings,
            data,
            [t["params"] for t in members],
            plan,
            time_budget_s=retrain_budget_s,
            callbacks=[
                EpochProgress("retrain", len(members) * settings.retrain_epochs),
                *tracking_callbacks(settings, "retrain"),
            ],
        )
        phases.end("retrain")
        if finals[0].error:
            print(f"error: the retrain of the winner failed: {finals[0].error}", file=sys.stderr)
            return 1
        timing = {
            "phases": phases.to_dict(),
            **({"plan": budget.lines(), "budget": budget.to_dict()} if budget else {}),
        }
        out = report.write_report(
            settings, data, trials, members, finals, phases.total, findings, timing=timing
        )
        phases.end("report")
        summary.write_timing(out, phases.to_dict())
        # After the timing is in: the artifacts are the report as it stays.
        run_id = log_report(settings, out, best, finals[0].metrics.get("trial_id", ""))
        if run_id:
            print(
                f"[sweeps] MLflow: experiment {settings.name!r} at {tracking_uri(settings)}; the winner's "
                f"report is attached to run {run_id}",
                flush=True,
            )
        summary.print_summary(trials, settings, out, phases.line() + budget_verdict(budget, phases.total))
        upload_report(
            settings.storage, settings.name, out
        )  # a URI storage keeps the report too: it outlives the cluster
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    failed = trials[trials["status"] == "ERROR"].to_dict("records")
    if failed:
        print(f"[sweeps] note: {len(failed)} trial(s) failed; they are listed in the report", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
