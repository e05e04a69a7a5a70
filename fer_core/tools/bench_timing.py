"""The benchmark's measurements: (a) ``bench_seed``, then (b) and (c') on one Trainer, ``bench_fer_core`` (what
each stands for: ``fer_core.tools.bench``'s docstring), with the peak-memory sampler and the timed loop (a)
uses; (b) is ``fer_core.timing.time_loader_steps``, (c') ``fer_core.timing.time_ready_step``.

Each figure comes from a timed pass of at least ``min_seconds`` after ``warmup`` untimed steps.
``bench`` alternates them over rounds, takes medians and ratios, runs the parity check and is the CLI.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from pathlib import Path

import timm
import torch
import torchvision.transforms as T
from torch import nn
from torchvision.datasets import ImageFolder

from ..config import TrainConfig
from ..timing import time_loader_steps, time_ready_step
from ..trainer import Trainer

SEED_WORKERS = 2  # what the seed notebooks pass to DataLoader
# The (b) Trainer's epoch, in steps: its timed pass never reaches the epoch's end (2 s at batch 64 is
# 1,000 steps up to 32,000 img/s).
BENCH_EPOCH_STEPS = 1000


class PeakMemory:
    """Peak memory while the with-block runs: CUDA max allocated, or RSS of this process + its children."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss_tree(pid: int) -> int:
        total = 0
        try:
            with open(f"/proc/{pid}/statm") as f:
                total = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    total += sum(PeakMemory._rss_tree(int(c)) for c in f.read().split())
        except (OSError, ValueError):  # a worker exited between listing and reading
            pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss_tree(os.getpid()))

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._rss_tree(os.getpid())
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(
    step, batches, warmup: int, min_seconds: float, batch_size: int, device: torch.device
) -> dict:
    """``warmup`` untimed calls of ``step(batch)``, then calls until ``min_seconds`` have passed (the host's
    clock; a CUDA sync before the last reading); returns img/s, steps, seconds and warm-up seconds."""
    it = iter(batches)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(next(it))
    _sync(device)
    t1 = time.perf_counter()
    steps = 0
    while time.perf_counter() - t1 < min_seconds:
        step(next(it))
        steps += 1
    _sync(device)
    seconds = time.perf_counter() - t1
    return {
        "images_per_s": steps * batch_size / seconds,
        "steps": steps,
        "seconds": seconds,
        "warmup_s": t1 - t0,
    }


def _endless(loader):
    while True:
        yield from loader


def bench_seed(
    data: Path,
    device: torch.device,
    img_size: int,
    batch_size: int,
    warmup: int,
    min_seconds: float,
    workers: int = SEED_WORKERS,
) -> dict:
    """(a) The seed-style loop: ImageFolder + PIL + torchvision transforms, Adam, fp32, NCHW.

    Args:
        data: dataset root (its train/ is read).
        device: where the model runs.
        img_size: input size.
        batch_size: batch size.
        warmup: untimed steps.
        min_seconds: shortest timed pass.
        workers: DataLoader workers.
    """
    tf = T.Compose(
        [
            T.Grayscale(num_output_channels=3),
            T.Resize((img_size, img_size)),
            T.RandomHorizontalFlip(),
            T.RandomRotation(20),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    ds = ImageFolder(str(data / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model = timm.create_model("efficientnet_b0", num_classes=len(ds.classes)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(batch):
        x, y = batch[0].to(device), batch[1].to(device)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with PeakMemory(device) as mem:
        out = _timed_steps(step, _endless(loader), warmup, min_seconds, batch_size, device)
    del loader  # stops the workers
    return {**out, "peak_memory_bytes": mem.peak}


def bench_fer_core(cfg: TrainConfig, device: torch.device, warmup: int, min_seconds: float) -> dict:
    """(b) and (c') on one ``Trainer`` of ``cfg``, built as a trial builds it: (b) consecutive steps of one
    pass of its loader (``time_loader_steps``), then (c') its own step on a batch already on the device
    (``time_ready_step``).

    Args:
        cfg: the trial's config (its ``out``, ``progress`` and ``steps_per_epoch`` are replaced).
        device: the config's device, resolved (where peak memory is read).
        warmup: untimed steps before each.
        min_seconds: shortest timed pass of each.

    Returns:
        {"fer_core": ..., "ready_step": ...}: each with ``images_per_s``, ``seconds``, ``warmup_s`` and
        ``peak_memory_bytes``; (b)'s also ``setup_s``, ``runtime`` and ``train_images``.
    """
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(cfg, out=out, progress=False, steps_per_epoch=BENCH_EPOCH_STEPS)
        with PeakMemory(device) as mem_b:
            t0 = time.perf_counter()
            trainer = Trainer(cfg)
            setup_s = time.perf_counter() - t0
            b = time_loader_steps(trainer, warmup_steps=warmup, timed_steps=1, min_seconds=min_seconds)
        with PeakMemory(device) as mem_c:
            t1 = time.perf_counter()
            c = time_ready_step(trainer, min_seconds=min_seconds, warmup_steps=max(1, warmup))
            c["warmup_s"] = time.perf_counter() - t1 - c["seconds"]  # the warm-up and any shorter passes
    return {
        "fer_core": {
            **b,
            "setup_s": setup_s,
            "runtime": trainer.runtime.describe(),
            "train_images": len(trainer.train_idx),
            "peak_memory_bytes": mem_b.peak,
        },
        "ready_step": {**c, "peak_memory_bytes": mem_c.peak},
    }
