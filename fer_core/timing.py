"""How long a training step, a validation pass and a checkpoint write take for one TrainConfig.

``time_training`` builds the ``Trainer`` a run of that config would build and times its steps within one
pass of its loader, as an epoch runs them: a warm-up (worker start, cuDNN autotuning, compilation), then
the timed steps, clocked in consecutive chunks so that the fastest chunk shows the rate a slow spell of a
shared machine did not touch; optionally validation on some val images (after one untimed batch) and the
checkpoint an epoch writes. The sweep's time budget and the benchmark (``fer_core.tools.bench``)
both measure through it. ``time_ready_step`` times the trainer's own step alone, on one batch already on
the device: what the GPU and the host's launch work allow, with no data loading or augmentation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import save_checkpoint
from .config import TrainConfig
from .runtime import PREFETCH
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

    The Trainer writes into a temporary folder (deleted on return), without a progress bar. Warm-up and
    timed steps are consecutive steps of one loader pass (a new pass would refill the prefetch queue), in
    an epoch longer than them by what the loader may prefetch, so no timed step gets a batch made ahead
    at the end of an epoch.

    Args:
        cfg: the config to time (its ``out``, ``progress``, ``epochs`` and ``steps_per_epoch`` are replaced).
        warmup_steps: untimed steps first (0: none).
        timed_steps: timed steps.
        chunks: clock the timed steps in this many consecutive chunks; ``best_images_per_s`` is the fastest.
        eval_images: also validate (``Trainer.evaluate``, with the config's flip TTA) on this many val
            images, after one untimed eval batch (cuDNN autotunes the new shapes), and write the epoch's
            checkpoint, timing both (0: neither).

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
    # The Trainer's loader prefetches PREFETCH batches per worker (auto: at most 8 workers).
    margin = PREFETCH * max(8, cfg.num_workers)
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(
            cfg, out=out, progress=False, steps_per_epoch=warmup_steps + timed_steps + margin, epochs=1
        )
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        setup_s = time.perf_counter() - t0
        loop = time_loader_steps(trainer, warmup_steps=warmup_steps, timed_steps=timed_steps, chunks=chunks)
        eval_images_per_s = checkpoint_s = 0.0
        if eval_images:
            idx = trainer.val_idx[:eval_images]
            trainer.evaluate(indices=idx[: trainer.runtime.eval_batch_size])  # warm: cuDNN autotuning
            t2 = time.perf_counter()
            trainer.evaluate(indices=idx)
            t3 = time.perf_counter()
            save_checkpoint(trainer.state(), Path(out) / "last.pt")
            eval_images_per_s, checkpoint_s = len(idx) / (t3 - t2), time.perf_counter() - t3
    return TrainingTiming(
        setup_s=setup_s,
        warmup_s=loop["warmup_s"],
        images_per_s=loop["images_per_s"],
        best_images_per_s=loop["best_images_per_s"],
        eval_images_per_s=eval_images_per_s,
        checkpoint_s=checkpoint_s,
        runtime=trainer.runtime.describe(),
        train_images=len(trainer.train_idx),
    )


def time_loader_steps(
    trainer: Trainer, *, warmup_steps: int, timed_steps: int, chunks: int = 1, min_seconds: float = 0.0
) -> dict:
    """Time consecutive steps of one pass of the trainer's loader (epoch 1's order): data, augmentation
    and the step, as an epoch runs them.

    The clock is read (after a CUDA sync) when a chunk's first step asks for its batch and after the last
    step. The timed steps end at least as many batches before the epoch's end as the loader prefetches,
    so none is a batch made ahead while the step waited.

    Args:
        trainer: the Trainer to time (it trains: weights, optimizer and schedule move on; torch's global
            RNG is left as it was).
        warmup_steps: untimed steps first (0: none).
        timed_steps: timed steps, clocked in ``chunks`` consecutive chunks.
        chunks: ``best_images_per_s`` is the fastest chunk's rate.
        min_seconds: go on past ``timed_steps`` (in the last chunk) until the timed steps took this long,
            or the epoch's end is that near.

    Returns:
        {"warmup_s", "images_per_s", "best_images_per_s", "steps", "seconds"} of the timed steps.
    """
    sizes = _split(timed_steps, chunks)
    bounds = [warmup_steps + sum(sizes[:i]) for i in range(len(sizes) + 1)]
    last = len(trainer.loader) - PREFETCH * trainer.runtime.num_workers  # the prefetched batches left out
    if bounds[-1] > last:
        raise ValueError(
            f"time_loader_steps: {bounds[-1]} steps do not fit an epoch of {len(trainer.loader)} steps "
            f"less the {len(trainer.loader) - last} batches its loader prefetches"
        )
    clock: list[tuple[int, float]] = []  # (steps done, time)
    runtime = trainer.runtime

    def mark(step: int) -> None:
        if runtime.is_cuda:
            torch.cuda.synchronize(runtime.device)
        clock.append((step, time.perf_counter()))

    def clocked():
        it = iter(trainer.loader)
        for step in range(last + 1):
            done = step >= bounds[-1] and (
                step == last or not min_seconds or time.perf_counter() - clock[0][1] >= min_seconds
            )
            if step in bounds[:-1] or done:
                mark(step)
            if done:
                return
            yield next(it)

    with torch.random.fork_rng(devices=[runtime.device] if runtime.is_cuda else []):
        trainer.sampler.set_epoch(1)
        torch.manual_seed(trainer.cfg.seed)
        t0 = time.perf_counter()
        trainer.train_pass(batches=clocked())
    bs = trainer.cfg.batch_size
    rates = [(b - a) * bs / (tb - ta) for (a, ta), (b, tb) in zip(clock, clock[1:])]
    (first, t_first), (end, t_end) = clock[0], clock[-1]
    return {
        "warmup_s": t_first - t0,
        "images_per_s": (end - first) * bs / (t_end - t_first),
        "best_images_per_s": max(rates),
        "steps": end - first,
        "seconds": t_end - t_first,
    }


def _split(steps: int, chunks: int) -> list[int]:
    """``steps`` as ``chunks`` near-equal positive parts (fewer when there are fewer steps)."""
    chunks = min(chunks, steps)
    return [steps // chunks + (i < steps % chunks) for i in range(chunks)]


def time_ready_step(trainer: Trainer, *, min_seconds: float = 2.0, warmup_steps: int = 5) -> dict:
    """Images per second of the trainer's own training step on one batch already on the device.

    The step is exactly a trial's (``Trainer.train_pass``: autocast, loss, backward, gradient clipping,
    optimizer, schedule, EMA, mixing), fed the same uint8 batch over and over: the trainer's batch size of
    its first training images, moved to the device once. After ``warmup_steps`` untimed steps (cuDNN
    autotuning, compilation), passes of growing length run until one lasts at least ``min_seconds``;
    that pass is the figure (each pass ends with a CUDA sync, so the clock includes the queued GPU work).

    It trains: the trainer's weights, optimizer, schedule and EMA move on (time on a Trainer built for
    timing, or on one whose run is over). Torch's global RNG is left as it was.

    Args:
        trainer: the Trainer whose step to time.
        min_seconds: shortest timed pass.
        warmup_steps: untimed steps first (at least 1).

    Returns:
        {"images_per_s", "steps", "seconds", "batch_size"} of the timed pass.
    """
    if warmup_steps < 1 or min_seconds <= 0:
        raise ValueError(
            f"time_ready_step: warmup_steps = {warmup_steps} and min_seconds = {min_seconds}; "
            "they must be at least 1 and above 0"
        )
    bs, idx = trainer.cfg.batch_size, trainer.train_idx
    rows = idx[np.arange(bs) % len(idx)]  # a subset smaller than a batch repeats its images
    device = trainer.runtime.device
    batch = (
        torch.from_numpy(np.ascontiguousarray(trainer.train_data.images[rows])).to(device),
        torch.from_numpy(trainer.train_data.labels[rows]).to(device),
    )
    with torch.random.fork_rng(devices=[device] if trainer.runtime.is_cuda else []):
        torch.manual_seed(trainer.cfg.seed)
        trainer.train_pass(max_steps=warmup_steps, batches=itertools.repeat(batch))
        steps = warmup_steps
        while True:
            r = trainer.train_pass(max_steps=steps, batches=itertools.repeat(batch))
            if r["epoch_seconds"] >= min_seconds:
                break
            # Aim 20 % past min_seconds from this pass's rate, growing at most 16x per pass.
            want = math.ceil(steps * 1.2 * min_seconds / max(r["epoch_seconds"], 1e-6))
            steps = min(16 * steps, max(steps + 1, want))
    return {
        "images_per_s": r["images_per_s"],
        "steps": r["train_steps"],
        "seconds": r["epoch_seconds"],
        "batch_size": bs,
    }
