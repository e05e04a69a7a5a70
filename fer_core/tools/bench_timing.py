"""The benchmark's measurements, one function per path: (a) ``bench_seed``, (b) ``bench_fer_core``, (c)
``bench_compute`` (what each stands for: ``fer_core.tools.bench``'s docstring), with the peak-memory sampler
and the warm-up/timed step loop (a) and (c) share; (b) is ``fer_core.timing.time_training``.

Each call builds its path, runs ``warmup`` untimed then ``steps`` timed steps and returns images per second,
warm-up seconds and peak memory. ``bench`` alternates them over rounds, takes medians and ratios, runs the
parity check and is the CLI.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import timm
import torch
import torchvision.transforms as T
from torch import nn
from torchvision.datasets import ImageFolder

from ..config import make_config
from ..timing import time_training

SEED_WORKERS = 2  # what the seed notebooks pass to DataLoader


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


def _timed_steps(step, batches, warmup: int, steps: int, batch_size: int, device: torch.device) -> dict:
    """Run ``warmup`` untimed then ``steps`` timed calls of ``step(batch)``; returns img/s and warm-up seconds."""
    it = iter(batches)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(next(it))
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step(next(it))
    _sync(device)
    t2 = time.perf_counter()
    return {"images_per_s": steps * batch_size / (t2 - t1), "warmup_s": t1 - t0}


def _endless(loader):
    while True:
        yield from loader


def bench_seed(
    data: Path,
    device: torch.device,
    img_size: int,
    batch_size: int,
    warmup: int,
    steps: int,
    workers: int = SEED_WORKERS,
) -> dict:
    """(a) The seed-style loop: ImageFolder + PIL + torchvision transforms, Adam, fp32, NCHW.

    Args:
        data: dataset root (its train/ is read).
        device: where the model runs.
        img_size: input size.
        batch_size: batch size.
        warmup, steps: untimed and timed steps.
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
        out = _timed_steps(step, _endless(loader), warmup, steps, batch_size, device)
    del loader  # stops the workers
    return {**out, "peak_memory_bytes": mem.peak}


def bench_fer_core(
    data: Path,
    device: torch.device,
    img_size: int,
    batch_size: int,
    warmup: int,
    steps: int,
    overrides: dict | None = None,
) -> dict:
    """(b) fer_core's training path exactly as a trial builds it: ``fer_core.timing.time_training`` on the
    TrainConfig of these settings, with the peak memory of building and timing it.

    Args:
        data: dataset root.
        device: where the model runs.
        img_size, batch_size: as in the trial config.
        warmup, steps: untimed and timed steps.
        overrides: further TrainConfig keys (e.g. channels_last=off to measure one choice).

    Returns:
        ``TrainingTiming``'s fields and ``peak_memory_bytes``.
    """
    cfg = make_config(
        {
            "data": str(data),
            "img_size": img_size,
            "batch_size": batch_size,
            "device": str(device),
            **(overrides or {}),
        },
        source="bench",
    )
    with PeakMemory(device) as mem:
        timing = time_training(cfg, warmup_steps=warmup, timed_steps=steps)
    return {**dataclasses.asdict(timing), "peak_memory_bytes": mem.peak}


def bench_compute(
    device: torch.device, img_size: int, batch_size: int, warmup: int, steps: int, classes: int = 7
) -> dict:
    """(c) Forward + backward of the plain eager fp32 NCHW efficientnet_b0 on a batch already on the device.

    Args:
        device: where it runs.
        img_size, batch_size: input shape.
        warmup, steps: untimed and timed steps.
        classes: classifier outputs.
    """
    model = timm.create_model("efficientnet_b0", num_classes=classes).to(device).train()
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step(_):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    with PeakMemory(device) as mem:
        out = _timed_steps(step, _endless([None]), warmup, steps, batch_size, device)
    return {**out, "peak_memory_bytes": mem.peak}
