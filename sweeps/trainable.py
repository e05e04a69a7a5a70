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


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # a hard link costs nothing; Tune copies the folder to storage itself
    except OSError:
        shutil.copy2(src, dst)


def fer_trainable(params: dict, base: dict, members: list[dict] | None = None) -> None:
    """Run one trial.

    Args:
        params: the trial's sampled hyperparameters (TrainConfig keys), or ``{"member": i}`` in a retrain.
        base: the fixed TrainConfig keys (data, epochs, threads, ...), bound with ``tune.with_parameters``.
        members: for the retrain of the top-k configurations: member i trains ``members[i]``.
    """
    if members is not None:
        params = members[int(params["member"])]
    # The working folder is the trial's own (Tune changes into it); outputs stay there, and what must
    # survive a lost node travels in the reported checkpoints.
    cfg = make_config({**base, **params, "out": os.getcwd(), "progress": False}, source="trial config")
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

    def report(row: dict, ckpt_dir: Path) -> None:
        with tempfile.TemporaryDirectory(dir=cfg.out, prefix=".report-") as tmp:
            _link_or_copy(ckpt_dir / "last.pt", Path(tmp) / "last.pt")
            tune.report({**_flat(row), "node_id": node_id}, checkpoint=tune.Checkpoint.from_directory(tmp))

    train(cfg, report=report, resume_from=resume)
