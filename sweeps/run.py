"""Run a hyperparameter sweep with Ray Tune + Optuna, retrain the winner, write the report.

    python sweeps/run.py                                     # demo data, sweeps/configs/default.yaml
    python sweeps/run.py --config sweeps/configs/fer2013.yaml --data /path/to/fer2013
    python sweeps/run.py --resume --name NAME                # continue an interrupted sweep
    python sweeps/run.py --address auto ...                  # on a Ray cluster's head node
    python sweeps/run.py --address HOST:PORT --cluster-config cluster.yaml ...   # plan for its autoscaled workers

Any other ``key=value`` overrides the YAML: TrainConfig keys go to ``train``, dotted keys to their
section (``scheduler.max_epochs=4``), the rest to the top level (``num_samples=12``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_core.config import config_to_dict, parse_overrides  # noqa: E402
from fer_core.errors import FerError  # noqa: E402
from sweeps.paths import check_cache, check_name, check_writable  # noqa: E402
from sweeps.settings import SweepSettings, load_settings  # noqa: E402


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python sweeps/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--config", help="sweep YAML (default: sweeps/configs/default.yaml, the demo)")
    p.add_argument("--data", help="dataset root with train/ and val/ (optional test/); default: generated demo faces")
    p.add_argument("--storage", help="results folder or shared URI (s3://..., an NFS path on a cluster); default from YAML ('runs')")
    p.add_argument("--name", help="experiment name; results go to STORAGE/NAME/")
    p.add_argument("--address", help="Ray cluster to join: 'auto' on a cluster node, or HOST:PORT; default: start Ray locally on 127.0.0.1")
    p.add_argument("--cluster-config", metavar="YAML",
                   help="the Ray launcher file of an autoscaling cluster: trials are planned for the worker types it can "
                        "launch, not only the nodes up now (default with --address auto: ~/ray_bootstrap_config.yaml, "
                        "which `ray up` leaves on the head, when it exists)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment STORAGE/NAME (searcher state and finished trials kept)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override YAML keys, e.g. num_samples=4 lr=1e-3 scheduler.max_epochs=3")
    return p


def resolve_settings(args) -> SweepSettings:
    """YAML + command line -> checked settings (no Ray needed; every error is a one-line FerError)."""
    settings = load_settings(args.config, parse_overrides(args.overrides))
    for key in ("data", "storage", "name"):
        if getattr(args, key) is not None:  # an empty --name is refused below, not ignored
            setattr(settings, key, getattr(args, key))
    check_name(settings.name, "--name" if args.name is not None else f"{settings.source}: 'name'")
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
            raise FerError(f"{where}.weights: {value}: weights file not found; point it at a local ImageNet weights file "
                           "(.safetensors or torch state dict), or pass weights= model=efficientnet_b0 to train from scratch")
        if where == "train":
            holder.weights = str(path)
        else:
            holder["weights"] = str(path)


def storage_uri(storage: str) -> str:
    """Ray wants an absolute local path or a URI."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def prepare_data(settings: SweepSettings) -> str:
    """The dataset to sweep: the YAML/--data path, or the cached demo set (generated on first use)."""
    if settings.data:
        from fer_core.data import scan_split
        for split in ("train", "val"):
            scan_split(settings.data, split)  # layout errors now, not inside a trial
        return str(Path(settings.data).expanduser().resolve())
    from fer_core.demo import ensure_demo_dataset
    d = settings.demo
    path = ensure_demo_dataset(train_per_class=d.train_per_class, val_per_class=d.val_per_class,
                               test_per_class=d.test_per_class, img_size=d.img_size, seed=d.seed)
    print(f"[sweeps] Using the built-in DEMO data (procedurally drawn faces) at {path}.\n"
          f"[sweeps] For real data: python sweeps/run.py --config sweeps/configs/fer2013.yaml --data /path/to/fer2013 "
          f"(an ImageFolder root with train/ and val/, each holding angry disgust fear happy neutral sad surprise)", flush=True)
    return str(path)


def check_experiment(settings: SweepSettings, resume: bool) -> None:
    """Refuse to resume nothing, or to start over an existing experiment, before Ray starts."""
    from ray import tune

    exp = f"{storage_uri(settings.storage)}/{settings.name}"
    exists = tune.Tuner.can_restore(exp)
    if resume and not exists:
        raise FerError(f"{exp}: no experiment to resume; run without --resume to start it (check --storage/--name)")
    if not resume and exists:
        raise FerError(f"{exp}: an experiment already exists there; pass --resume to continue it or --name NEW to start another")


def keep_local_ray_on_loopback() -> None:
    """Make a local (no --address) Ray bind every socket to 127.0.0.1. Call before ray is imported.

    On Linux, Ray turns even ``_node_ip_address="127.0.0.1"`` into the machine's routed address and
    listens there and on 0.0.0.0; with this switch off (its default on macOS and Windows) it uses the
    loopback address for everything, which is all a single-machine sweep needs.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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


# Where `ray up` leaves the cluster's launcher config on the head (what `ray exec`/`ray submit` run beside).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def cluster_config_path(address: str | None, cluster_config: str | None) -> str | None:
    """The launcher file to read node types from: --cluster-config, else the head's bootstrap config when
    the sweep runs on the head (``--address auto``), else none (plan from the nodes that are up)."""
    if cluster_config:
        return cluster_config
    if address == "auto" and Path(BOOTSTRAP_CONFIG).expanduser().is_file():
        return str(Path(BOOTSTRAP_CONFIG).expanduser())
    return None


def cluster_nodes(cluster_config: str | None) -> list:
    """The nodes that are up (``ray.nodes()``) plus the worker types the autoscaler can launch."""
    import ray

    from sweeps.placement import load_node_types, nodes_from_ray

    return nodes_from_ray(ray.nodes()) + (load_node_types(cluster_config) if cluster_config else [])


def plan_resources(settings: SweepSettings, cluster) -> tuple[dict, int]:
    """Per-trial resources and how many trials run at once (see ``sweeps.placement.plan_trials``).

    Args:
        settings: the sweep settings.
        cluster: a list of ``NodeShape`` (the nodes, and node types that can be launched), or one node's
            resource dict (``{"CPU": 16, "GPU": 2}``).
    """
    plan = make_plan(settings, cluster)
    return plan.resources, plan.concurrent


def make_plan(settings: SweepSettings, cluster):
    """``plan_trials`` for these settings; ``cluster`` as in ``plan_resources``."""
    from sweeps.placement import NodeShape, plan_trials

    if isinstance(cluster, dict):
        cluster = [NodeShape("local", float(cluster.get("CPU", 1)), float(cluster.get("GPU", 0)))]
    r = settings.resources
    return plan_trials(cluster, r.cpus_per_trial, r.gpus_per_trial, settings.max_concurrent_trials, settings.num_samples)


def announce_plan(plan, address: str | None, cluster_config: str | None) -> None:
    """Log the per-node plan before the sweep starts; warn loudly where trials would train on CPU by accident."""
    for line in plan.lines():
        print(f"[sweeps] {line}", flush=True)
    for w in plan.warnings:  # a cluster known to have (or launch) GPUs, and a CPU-only plan
        print(f"[sweeps] WARNING: {w}", file=sys.stderr, flush=True)
    if address and not plan.gpus and not cluster_config and not plan.warnings:
        # Nothing says whether this cluster could launch GPU workers later: say what the plan assumed.
        print("[sweeps] note: no GPU on the cluster now and no launcher file read, so trials train on CPU; on an "
              "autoscaling GPU cluster pass its launcher file (--cluster-config) to plan for its GPU workers", flush=True)


def base_train_config(settings: SweepSettings, data: str, resources: dict, epochs: int, retrain: bool = False) -> dict:
    """The fixed part of every trial's TrainConfig (with the ``retrain:`` overrides for the retrain)."""
    base = config_to_dict(settings.train)
    if retrain:
        base.update(settings.retrain)
    # The driver audited the data once (run_audit); every trial repeating it would only cost time.
    base.update(data=data, epochs=epochs, threads=int(resources["cpu"]), audit=False)
    return base


def run_audit(settings: SweepSettings, data: str) -> dict:
    """Audit the dataset once, before Ray starts: its summary goes to the log now and to the report later."""
    import dataclasses

    from fer_core.train import run_audit as audit

    return audit(dataclasses.replace(settings.train, data=data), prefix="[sweeps]")


def make_trainable(base: dict, resources: dict, members: list[dict] | None = None):
    from ray import tune
    from sweeps.trainable import fer_trainable
    return tune.with_resources(tune.with_parameters(fer_trainable, base=base, members=members), resources)


def run_sweep(settings: SweepSettings, data: str, resume: bool, plan=None):
    """Run (or resume) the search; returns Ray's ResultGrid.

    Args:
        settings: the sweep settings.
        data: dataset root.
        resume: continue the experiment in storage.
        plan: the per-node plan (``make_plan``); None: planned from the nodes that are up.
    """
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.space import to_tune

    plan = plan or make_plan(settings, cluster_nodes(None))
    resources, concurrent = plan.resources, plan.concurrent
    base = base_train_config(settings, data, resources, settings.scheduler.max_epochs)
    trainable = make_trainable(base, resources)
    exp = f"{storage_uri(settings.storage)}/{settings.name}"
    print(f"[sweeps] {settings.num_samples} trials, up to {concurrent} at once, each {resources['cpu']} CPU + "
          f"{resources['gpu']:g} GPU, at most {settings.scheduler.max_epochs} epochs; results in {exp}", flush=True)
    if resume:
        # Finished trials are kept as they are; unfinished ones continue from their last checkpoint.
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        # TPE's default 10 random start-up trials would leave a small sweep entirely random.
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=max(2, min(10, settings.num_samples // 3)))
        searcher = OptunaSearch(sampler=sampler, points_to_evaluate=settings.initial_points or None)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=settings.scheduler.max_epochs,
                                  grace_period=settings.scheduler.grace_period,
                                  reduction_factor=settings.scheduler.reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=to_tune(settings.search_space),
            tune_config=tune.TuneConfig(metric=settings.metric, mode=settings.mode, search_alg=searcher, scheduler=scheduler,
                                        num_samples=settings.num_samples, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(
                name=settings.name, storage_path=storage_uri(settings.storage),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # only last.pt is needed to resume
                verbose=1,  # the trial status table and start/stop lines, not every epoch's full result
            ),
        )
    return tuner.fit()


def retrain(settings: SweepSettings, data: str, members: list[dict], plan=None) -> list:
    """Retrain the winning parameters (and, for an ensemble, the next best) from scratch for
    ``retrain_epochs``, as one Tune run with a trial per member.

    Running it through Tune (not in the driver) puts it on GPU workers on clusters whose head has none,
    runs ensemble members side by side where resources allow, persists their checkpoints to the same
    storage, and makes the retrain resumable with the sweep.

    Args:
        settings: the sweep settings.
        data: dataset root.
        members: parameter dicts, the winner's first.
        plan: the sweep's per-node plan (``make_plan``); None: planned from the nodes that are up.

    Returns:
        Ray Results in the order of ``members``.
    """
    from ray import tune

    plan = plan or make_plan(settings, cluster_nodes(None))
    resources, concurrent = plan.resources, plan.concurrent
    trainable = make_trainable(base_train_config(settings, data, resources, settings.retrain_epochs, retrain=True),
                               resources, members=[dict(m) for m in members])
    root = f"{storage_uri(settings.storage)}/{settings.name}"
    exp = f"{root}/retrain"
    if tune.Tuner.can_restore(exp):
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space={"member": tune.grid_search(list(range(len(members))))},
                           tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=min(concurrent, len(members))),
                           run_config=tune.RunConfig(name="retrain", storage_path=root,
                                                     failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1))
    results = list(tuner.fit())
    return sorted(results, key=lambda r: int(r.config["member"]))


def main(argv: list[str] | None = None) -> int:
    # intermixed: key=value items may stand before and after --flags
    args = build_arg_parser().parse_intermixed_args(argv)
    if not args.address:
        keep_local_ray_on_loopback()
    t0 = time.perf_counter()
    try:
        settings = resolve_settings(args)
        check_writable(settings.storage, "--storage")
        check_experiment(settings, args.resume)
        data = prepare_data(settings)
        check_cache(settings, data)
        findings = run_audit(settings, data)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import ray

    from sweeps import report

    init_ray(args.address)
    try:
        # Planned once, before anything is submitted: a request no node can ever hold fails here in one line.
        cluster_config = cluster_config_path(args.address, args.cluster_config)
        plan = make_plan(settings, cluster_nodes(cluster_config))
        announce_plan(plan, args.address, cluster_config)
        results = run_sweep(settings, data, args.resume, plan)
        trials = report.collect_trials(results, settings)
        members = report.top_trials(trials, settings, max(1, settings.ensemble_top_k))
        if not members:
            print("error: every trial failed; see the errors listed above and in the trial folders", file=sys.stderr)
            report.print_summary(trials, settings, None)
            return 1
        best = members[0]
        print(f"[sweeps] best trial {best['trial_id']}: {settings.metric} {best['best']:.4f} with {best['params']}; "
              f"retraining it from scratch for {settings.retrain_epochs} epochs"
              + (f", with the next {len(members) - 1} configuration(s) for the ensemble" if len(members) > 1 else ""), flush=True)
        finals = retrain(settings, data, [t["params"] for t in members], plan)
        if finals[0].error:
            print(f"error: the retrain of the winner failed: {finals[0].error}", file=sys.stderr)
            return 1
        out = report.write_report(settings, data, trials, members, finals, time.perf_counter() - t0, findings)
        report.print_summary(trials, settings, out)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    failed = [t for t in trials if t["status"] == "ERROR"]
    if failed:
        print(f"[sweeps] note: {len(failed)} trial(s) failed; they are listed in the report", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
