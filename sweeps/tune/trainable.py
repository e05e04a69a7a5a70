"""The Ray Tune trainable: a thin adapter around ``fer_core.train.train``, and the fixed config it trains.

``trial_config`` builds the fixed keys of every trial; the trainable merges the trial's parameters into them, resumes from Tune's checkpoint, reports every epoch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ray
from ray import tune

from fer_core.config import config_to_dict, make_config
from fer_core.train import train
from sweeps.config.settings import SweepSettings
from sweeps.plan.latency import trial_objectives
from sweeps.plan.resources import assigned_threads


def trial_config(settings: SweepSettings, *, data: str, retrain: bool = False) -> dict:
    """The fixed part of every trial's TrainConfig mapping (the retrain's with its ``retrain:`` overrides)."""
    base = {**config_to_dict(settings.train), **(settings.retrain if retrain else {})}
    epochs = settings.retrain_epochs if retrain else settings.scheduler.max_epochs
    # The driver audited the data once (run_audit); every trial repeating it would only cost time.
    return {**base, "data": data, "epochs": epochs, "audit": False}


def _flat(row: dict) -> dict:
    """The epoch row as flat scalars (recall per class as ``val_recall_<class>``): Tune's CSVs stay clean."""
    out = {k: v for k, v in row.items() if k != "val_per_class_recall"}
    for cls, recall in row.get("val_per_class_recall", {}).items():
        out[f"val_recall_{cls}"] = recall
    return out


def _quiet_stop(unraisable) -> None:
    # Ray stops a worker with SIGTERM raising SystemExit wherever it is; inside a garbage-collector callback
    # Python would print that as an "Exception ignored" traceback, though the stop is intended (a Ctrl-C).
    if not isinstance(unraisable.exc_value, SystemExit):
        sys.__unraisablehook__(unraisable)


def fer_trainable(
    params: dict, base: dict, members: list[dict] | None = None, measured: dict | None = None
) -> None:
    """Run one trial of the sampled ``params`` over the fixed ``base`` keys; in a retrain, params is
    ``{"member": i}`` and the trial trains ``members[i]``. ``measured``: the measured objectives per
    architecture, which every epoch's result carries (``sweeps.plan.latency``)."""
    sys.unraisablehook = _quiet_stop
    if members is not None:
        params = members[int(params["member"])]
    # out: the trial's own folder (Tune changes into it); what must survive a lost node is in the checkpoints.
    # keep_checkpoints off: Ray's stored copy is kept, none in its session folder (which Ray never deletes).
    fixed = {"out": os.getcwd(), "progress": False, "keep_checkpoints": False}
    cfg = make_config({**base, **params, **assigned_threads(), **fixed}, source="trial config")

    # Ray's own results name the node by IP, which is not unique when several nodes share a host.
    node_id = ray.get_runtime_context().get_node_id()
    # GPUs Ray gave this trial, beside the device fer_core trained on (each row's "device"): the report warns
    # when the two disagree, i.e. a GPU was reserved and the trial trained on a CPU all the same.
    ray_gpus = len(ray.get_gpu_ids())
    objectives = trial_objectives(measured, cfg) if measured else {}

    def report(row: dict, ckpt_dir: Path) -> None:
        tune.report(
            {**_flat(row), **objectives, "node_id": node_id, "ray_gpus": ray_gpus},
            checkpoint=tune.Checkpoint.from_directory(ckpt_dir),
        )

    restored = tune.get_checkpoint()
    if restored is None:
        train(cfg, report=report)
        return
    # A retried or resumed trial continues from its last reported checkpoint: read in place from storage
    # (or from Ray's temporary download of it, removed when the block ends).
    with restored.as_directory() as d:
        print(f"[sweeps] trial restored from its checkpoint (epoch files in {restored.path})", flush=True)
        train(cfg, report=report, resume_from=Path(d) / "last.pt")
