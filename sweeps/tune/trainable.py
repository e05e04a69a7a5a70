"""The Ray Tune trainable: a thin adapter around ``fer_core.train.train``.

It merges the fixed train config with the trial's sampled parameters, restores from
``ray.tune.get_checkpoint()`` when Tune resumes or retries the trial, and reports every epoch with
``ray.tune.report(metrics, checkpoint=...)``. All training logic stays in fer_core.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
from ray import tune

from fer_core.config import make_config
from fer_core.train import train
from sweeps.plan.resources import assigned_threads

# What a trial reports besides the epoch row: flat scalars only, so Tune's tables and CSVs stay clean.
_SKIP = {"val_per_class_recall"}


def _flat(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in _SKIP}
    for cls, recall in row.get("val_per_class_recall", {}).items():
        out[f"val_recall_{cls}"] = recall
    return out


def fer_trainable(params: dict, base: dict, members: list[dict] | None = None) -> None:
    """Run one trial.

    Args:
        params: the trial's sampled hyperparameters (TrainConfig keys), or ``{"member": i}`` in a retrain.
        base: the fixed TrainConfig keys (data, epochs, threads, ...), bound with ``tune.with_parameters``.
        members: for the retrain of the top-k configurations: member i trains ``members[i]``.
    """
    if members is not None:
        params = members[int(params["member"])]
    # The working folder is the trial's own (Tune changes into it); its logs stay there, and what must
    # survive a lost node travels in the reported checkpoints.
    # keep_checkpoints off: the checkpoint Ray copies to storage is the one that is kept (resume, retrain and
    # report read it there); train() removes its local last.pt once reported, so trials leave no second copy
    # in Ray's session folder (which Ray never deletes: ~1 GB per FER2013 sweep otherwise).
    cfg = make_config(
        {
            **base,
            **params,
            **assigned_threads(),
            "out": os.getcwd(),
            "progress": False,
            "keep_checkpoints": False,
        },
        source="trial config",
    )

    # Ray's own results name the node by IP, which is not unique when several nodes share a host.
    node_id = ray.get_runtime_context().get_node_id()
    # GPUs Ray gave this trial, beside the device fer_core trained on (each row's "device"): the report warns
    # when the two disagree, i.e. a GPU was reserved and the trial trained on a CPU all the same.
    ray_gpus = len(ray.get_gpu_ids())

    def report(row: dict, ckpt_dir: Path) -> None:
        tune.report(
            {**_flat(row), "node_id": node_id, "ray_gpus": ray_gpus},
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
