"""Run a hyperparameter sweep with Ray Tune + Optuna, retrain the winner, write the report.

    python sweeps/run.py                                     # demo data, sweeps/configs/default.yaml
    python sweeps/run.py --config sweeps/configs/fer2013.yaml --data /path/to/fer2013
    python sweeps/run.py --time-budget 30m ...               # size trials and retrain to finish in 30 minutes
    python sweeps/run.py --dry-run ...                       # print the plan and its estimated time, write nothing
    python sweeps/run.py --pick "latency_ms <= 4" ...        # with objectives: the trial to retrain from the front
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

from fer_core.config import parse_overrides
from fer_core.errors import FerError
from sweeps.config.settings import LOCATION, TRACKERS, SweepSettings, load_settings

# Flags that are also YAML keys and change what the experiment is (a --resume given any of them compares it
# with the record); those that say where it is are ``LOCATION``.
SETTING_FLAGS = ("data", "time_budget", "pick", "tracking", "tracking_uri")


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python sweeps/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    p.add_argument("--config", help="sweep YAML (default: sweeps/configs/default.yaml, the demo)")
    p.add_argument("--data", help="dataset root with train/ and val/ (optional test/); default: demo faces")
    p.add_argument("--storage", help="results folder or URI (s3://..., NFS path on a cluster); default runs")
    p.add_argument("--name", help="experiment name; results go to STORAGE/NAME/")
    p.add_argument("--address", help="Ray cluster: 'auto' on a cluster node or HOST:PORT; default: local Ray")
    p.add_argument(
        "--cluster-config",
        metavar="YAML",
        help="an autoscaling cluster's launcher file: trials are planned for the worker types it can launch "
        "(default with --address auto: ~/ray_bootstrap_config.yaml, which `ray up` leaves on the head)",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment STORAGE/NAME")
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="finish search, retrain and report within this wall time, e.g. 30m, 2h, 1h30m (YAML: time_budget)",
    )
    p.add_argument(
        "--pick",
        metavar="RULE",
        help="which trial of the front to retrain: best, knee, 'fastest within 1 point' or limits such as "
        "'latency_ms <= 4' (YAML: pick; needs objectives: {val_accuracy: max, latency_ms: min})",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and its estimated time and write nothing into the experiment; it does run the "
        "data audit and a probe that trains a few steps to time this machine, which fills the image cache",
    )
    p.add_argument("--tracking", choices=TRACKERS, help="also log trials and the report to MLflow")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (implies --tracking mlflow)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override YAML keys, e.g. num_samples=4")
    return p


def resolve_settings(args) -> SweepSettings:
    """YAML + ``key=value`` + flags -> one checked, frozen value (no Ray needed; errors are one line)."""
    given = LOCATION + SETTING_FLAGS
    flags = {k: getattr(args, k) for k in given if getattr(args, k, None) is not None}
    if args.tracking_uri:
        flags.setdefault("tracking", "mlflow")
    return load_settings(args.config, parse_overrides(args.overrides), flags)


def keep_local_ray_on_loopback() -> None:
    """Make a local (no --address) Ray bind every socket to 127.0.0.1; call before Ray is imported.
    On Linux Ray listens on the routed address and 0.0.0.0 even when told 127.0.0.1; with this switch
    off (its default on macOS and Windows) it keeps to loopback."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local sweep talks to nothing but itself


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()  # a time budget counts from here: the whole command
    args = build_arg_parser().parse_intermixed_args(argv)  # key=value may stand before and after flags
    if not args.address:
        keep_local_ray_on_loopback()
    try:
        settings = resolve_settings(args)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported: the driver imports it only now.
    from sweeps.driver import drive

    bare = args.config is None and not args.overrides and all(getattr(args, k) is None for k in SETTING_FLAGS)
    return drive(args, settings, t0, bare)


if __name__ == "__main__":
    sys.exit(main())
