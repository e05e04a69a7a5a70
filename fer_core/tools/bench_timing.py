"""The benchmark's measurements, one function per path: (a) ``bench_seed``, (b) ``bench_fer_core``, (c)
``bench_compute`` (what each stands for: ``fer_core.tools.bench``'s docstring), with the peak-memory sampler
and the warm-up/timed step loop they share.

Each call builds its path, runs ``warmup`` untimed then ``steps`` timed steps and returns images per second,
warm-up seconds and peak memory. Split from ``bench`` (which alternates them over rounds, takes medians and
ratios, runs the parity check and is the CLI) so that what is timed reads apart from how it is reported.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..config import make_config

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
    import timm
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

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
    device: str,
    img_size: int,
    batch_size: int,
    warmup: int,
    steps: int,
    overrides: dict | None = None,
    eval_images: int = 0,
    chunks: int = 1,
) -> dict:
    """(b) fer_core's training path exactly as a trial builds it (``Trainer``), timed for ``steps`` steps.

    Args:
        data: dataset root.
        device: config device string.
        img_size, batch_size: as in the trial config.
        warmup, steps: untimed and timed steps.
        overrides: further TrainConfig keys (e.g. channels_last=off to measure one choice).
        eval_images: also time what an epoch does besides training, for the sweep's time budget
            (sweeps/budget.py): the validation pass (``Trainer.evaluate``, with the config's flip TTA) on
            this many val images, ``eval_images_per_s``, and writing the epoch's checkpoint, ``checkpoint_s``.
        chunks: time the steps in this many consecutive passes; ``best_images_per_s`` is the fastest.
    """
    from ..trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = make_config(
            {
                "data": str(data),
                "out": out,
                "img_size": img_size,
                "batch_size": batch_size,
                "device": device,
                "progress": False,
                "steps_per_epoch": warmup + steps,
                "epochs": 2,
                **(overrides or {}),
            },
            source="bench",
        )
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        setup_s = time.perf_counter() - t0
        trainer.sampler.set_epoch(1)
        torch.manual_seed(cfg.seed)
        rt = trainer.runtime
        with PeakMemory(rt.device) as mem:
            t1 = time.perf_counter()
            if warmup:
                trainer.train_pass(max_steps=warmup)
            warm_s = time.perf_counter() - t1
            trainer.sampler.set_epoch(2)
            # In chunks when asked: the fastest chunk is the rate a slow spell of a shared machine (or
            # Ray's own start-up beside a probe) did not touch; "images_per_s" is still all steps.
            parts = [trainer.train_pass(max_steps=n) for n in _split(steps, chunks)]
        m = {
            "images_per_s": sum(p["train_images"] for p in parts) / sum(p["epoch_seconds"] for p in parts),
            "best_images_per_s": max(p["images_per_s"] for p in parts),
        }
        timed_eval = {}
        if eval_images:
            idx = trainer.val_idx[:eval_images]
            t2 = time.perf_counter()
            trainer.evaluate(indices=idx)
            t3 = time.perf_counter()
            save_checkpoint(trainer.state(), Path(out) / "last.pt")
            timed_eval = {
                "eval_images_per_s": len(idx) / (t3 - t2),
                "checkpoint_s": time.perf_counter() - t3,
            }
        return {
            **timed_eval,
            **m,
            "warmup_s": warm_s,
            "setup_s": setup_s,
            "peak_memory_bytes": mem.peak,
            "runtime": rt.describe(),
            "train_images": len(trainer.train_idx),
        }


def _split(steps: int, chunks: int) -> list[int]:
    """``steps`` as ``chunks`` near-equal positive parts (fewer when there are fewer steps)."""
    chunks = max(1, min(chunks, steps))
    return [steps // chunks + (i < steps % chunks) for i in range(chunks)]


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
    import timm

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
