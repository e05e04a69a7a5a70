"""How long a training step, a validation pass and a checkpoint write take for one TrainConfig.

``time_training`` builds the ``Trainer`` a run of that config would build and times its passes: a warm-up
(worker start, cuDNN autotuning, compilation), then the timed steps, in chunks so that the fastest chunk
shows the rate a slow spell of a shared machine did not touch; optionally validation on some val images
and the checkpoint an epoch writes. The sweep's time budget and the benchmark (``fer_core.tools.bench``)
both measure through it.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .config import TrainConfig
from .trainer import Trainer


@dataclass(frozen=True)
class TrainingTiming:
    """What ``time_training`` measured."""

    setup_s: float  # building the Trainer (data, model)
    warmup_s: float
    images_per_s: float  # all timed steps
    best_images_per_s: float  # fastest chunk
    eval_images_per_s: float  # 0.0 when eval_images == 0
    checkpoint_s: float  # 0.0 when eval_images == 0
    runtime: str  # Runtime.describe()
    train_images: int


def time_training(
    cfg: TrainConfig, *, warmup_steps: int, timed_steps: int, chunks: int = 1, eval_images: int = 0
) -> TrainingTiming:
    """Build the Trainer of ``cfg`` and time its training steps (and, asked for, what else an epoch does).

    The Trainer writes into a temporary folder (deleted on return), without a progress bar, with epochs of
    ``warmup_steps + timed_steps`` steps; the warm-up runs in epoch 1, the timed steps in epoch 2.

    Args:
        cfg: the config to time (its ``out``, ``progress``, ``epochs`` and ``steps_per_epoch`` are replaced).
        warmup_steps: untimed steps first (0: none).
        timed_steps: timed steps.
        chunks: time the steps in this many consecutive passes; ``best_images_per_s`` is the fastest.
        eval_images: also validate (``Trainer.evaluate``, with the config's flip TTA) on this many val
            images and write the epoch's checkpoint, timing both (0: neither).

    Raises:
        ValueError: a count below its minimum (timed_steps and chunks 1, the others 0).
        FerError: the config cannot build a Trainer (bad data, model or device).
    """
    for name, value, low in (
        ("warmup_steps", warmup_steps, 0),
        ("timed_steps", timed_steps, 1),
        ("chunks", chunks, 1),
        ("eval_images", eval_images, 0),
    ):
        if value < low:
            raise ValueError(f"time_training: {name} = {value}; it must be at least {low}")
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(
            cfg, out=out, progress=False, steps_per_epoch=warmup_steps + timed_steps, epochs=2
        )
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        setup_s = time.perf_counter() - t0
        trainer.sampler.set_epoch(1)
        torch.manual_seed(cfg.seed)
        t1 = time.perf_counter()
        if warmup_steps:  # max_steps=0 would be a whole pass
            trainer.train_pass(max_steps=warmup_steps)
        warmup_s = time.perf_counter() - t1
        trainer.sampler.set_epoch(2)
        parts = [trainer.train_pass(max_steps=n) for n in _split(timed_steps, chunks)]
        eval_images_per_s = checkpoint_s = 0.0
        if eval_images:
            idx = trainer.val_idx[:eval_images]
            t2 = time.perf_counter()
            trainer.evaluate(indices=idx)
            t3 = time.perf_counter()
            save_checkpoint(trainer.state(), Path(out) / "last.pt")
            eval_images_per_s, checkpoint_s = len(idx) / (t3 - t2), time.perf_counter() - t3
    return TrainingTiming(
        setup_s=setup_s,
        warmup_s=warmup_s,
        images_per_s=sum(p["train_images"] for p in parts) / sum(p["epoch_seconds"] for p in parts),
        best_images_per_s=max(p["images_per_s"] for p in parts),
        eval_images_per_s=eval_images_per_s,
        checkpoint_s=checkpoint_s,
        runtime=trainer.runtime.describe(),
        train_images=len(trainer.train_idx),
    )


def _split(steps: int, chunks: int) -> list[int]:
    """``steps`` as ``chunks`` near-equal positive parts (fewer when there are fewer steps)."""
    chunks = min(chunks, steps)
    return [steps // chunks + (i < steps % chunks) for i in range(chunks)]
