"""The Ray Tune trainable: a thin adapter around ``fer_core.train.train``.

It merges the fixed train config with the trial's sampled parameters, restores from
``ray.tune.get_checkpoint()`` when Tune resumes or retries the trial, and reports every epoch with
``ray.tune.report(metrics, checkpoint=...)``. All training logic stays in fer_core.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import ray
from ray import tune

from fer_core.config import make_config
from fer_core.train import train

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
    # The trial's own CPU allocation sets its threads and, through them, its data-loader workers: the node's
    # CPU count would give every trial on a shared GPU node a full node's worth.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    share = {"threads": max(1, int(cpus))} if cpus else {}
    cfg = make_config({**base, **params, **share, "out": os.getcwd(), "progress": False}, source="trial config")
    # A killed attempt of this trial may have left its report folder (a whole last.pt) in the working folder.
    for stale in Path(cfg.out).glob(".report-*"):
        shutil.rmtree(stale, ignore_errors=True)
    resume = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            local = Path(cfg.out) / "restored_last.pt"
            shutil.copy2(Path(d) / "last.pt", local)
            resume = local
        print(f"[sweeps] trial restored from its checkpoint (epoch files in {restored.path})", flush=True)

    # Ray's own results name the node by IP, which is not unique when several nodes share a host.
    node_id = ray.get_runtime_context().get_node_id()
    # GPUs Ray gave this trial, beside the device fer_core trained on (each row's "device"): the report warns
    # when the two disagree, i.e. a GPU was reserved and the trial trained on a CPU all the same.
    ray_gpus = len(ray.get_gpu_ids())

    def report(row: dict, ckpt_dir: Path) -> None:
        # The reported checkpoint, copied to storage by tune.report, is the only copy anything reads again
        # (resume, retrain, report). The working folder lies in Ray's session folder (/tmp/ray/session_*),
        # which Ray never deletes, and a trial that Tune stops never returns from tune.report: so the
        # local files leave the working folder before the call, the last one moved into the temporary
        # folder that is deleted on the way out (kept, they cost ~1 GB of disk per FER2013 sweep).
        (ckpt_dir / "best.pt").unlink(missing_ok=True)
        (Path(cfg.out) / "restored_last.pt").unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(dir=cfg.out, prefix=".report-") as tmp:
            os.replace(ckpt_dir / "last.pt", Path(tmp) / "last.pt")  # same folder tree: a rename
            tune.report({**_flat(row), "node_id": node_id, "ray_gpus": ray_gpus}, checkpoint=tune.Checkpoint.from_directory(tmp))

    train(cfg, report=report, resume_from=resume)
