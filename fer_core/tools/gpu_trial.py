"""The GPU check's trial and its sharing processes: the measured config, the worker, starting workers together.

``TRIAL`` is the config every measurement of ``gpu_check`` trains; ``share`` starts N worker processes
(``python -m fer_core.tools.gpu_check worker ...``, which runs ``worker``), lets each build and warm up,
starts their timed windows together and returns what each measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config import TrainConfig, make_config
from ..trainer import Trainer
from .gpu_pack import load_packed

CHECKOUT = Path(__file__).resolve().parents[2]

# A trial of sweeps/configs/fer2013.yaml: its fixed train keys and the middle of its search space as the sweep's
# probe takes it (loguniform: geometric mean, uniform: mean, choice: the lower middle value); img_size and
# batch_size are what the check varies.
# tests/test_trial_config.py checks it against `python -m sweeps.trial_config sweeps/configs/fer2013.yaml`.
TRIAL = dict(
    model="efficientnet_b0",
    pretrained=False,
    optimizer="adamw",
    warmup_epochs=2.0,
    ema_decay=0.999,
    tta_flip=True,
    mix_prob=0.5,
    lr=1.0954e-3,
    aug_strength=0.65,
    weight_decay=2.2361e-2,
    label_smoothing=0.1,
    drop_rate=0.3,
    drop_path_rate=0.15,
    mixup_alpha=0.2,
    cutmix_alpha=0.0,
    class_weighting="none",
)


def trial_config(device: str, img_size: int, batch_size: int, **keys) -> TrainConfig:
    """The config of one measured trial: ``TRIAL`` at this size and batch, on ``device``, no progress bar."""
    values = dict(TRIAL, device=device, img_size=img_size, batch_size=batch_size, progress=False, epochs=1)
    return make_config({**values, **keys}, source="gpu_check")


def epoch_steps(rate: float | None, batch_size: int, seconds: float, default: int) -> int:
    """Steps an epoch must hold for passes of ``seconds`` at ``rate`` images/s (an upper bound), else ``default``."""
    return math.ceil(rate * seconds * 1.5 / batch_size) + 1 if rate else default


def worker(argv: list[str]) -> None:
    """One sharing trial: build, warm up, say ready, wait for "go", train ``--seconds`` in short passes, say
    its rate. Its stdout carries only these JSON lines."""
    ap = argparse.ArgumentParser(prog="python -m fer_core.tools.gpu_check worker")
    for flag, typ in (("--data", str), ("--device", str), ("--img-size", int), ("--batch-size", int)):
        ap.add_argument(flag, type=typ, required=True)
    for flag, typ in (("--threads", int), ("--seconds", float), ("--steps", int), ("--warmup", int)):
        ap.add_argument(flag, type=typ, required=True)
    a = ap.parse_args(argv)
    cfg = trial_config(
        a.device,
        a.img_size,
        a.batch_size,
        augment_backend="torch",
        threads=a.threads,
        steps_per_epoch=a.steps,
    )
    trainer = Trainer(cfg, splits=load_packed(a.data, a.img_size))
    warm = min(a.steps, a.warmup)
    trainer.train_pass(max_steps=warm)
    probe = trainer.train_pass(max_steps=warm)
    # Passes of ~0.5 s alone: the window overshoots by at most one, and each pass ends with a device sync.
    chunk = min(a.steps, max(1, round(probe["images_per_s"] * 0.5 / a.batch_size)))
    print(json.dumps({"ready": True}), flush=True)
    if not sys.stdin.readline():
        return  # the check is gone
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < a.seconds:
        images += trainer.train_pass(max_steps=chunk)["train_images"]
    seconds = time.perf_counter() - start
    print(json.dumps({"images_per_s": images / seconds, "images": images, "seconds": seconds}), flush=True)


def share(n: int, worker_args: list[str], logs: Path, timeout: float) -> tuple[float, list[dict]]:
    """Start ``n`` workers, wait until all are ready, start their timed windows together, collect the results.

    Args:
        n: processes.
        worker_args: the worker's flags.
        logs: folder for each worker's stderr (``share-N-I.log``).
        timeout: seconds for the whole (RuntimeError past it; the workers are killed on any way out).

    Returns:
        (seconds from the start of the processes until all were ready, each one's result line).
    """
    cmd = [sys.executable, "-m", "fer_core.tools.gpu_check", "worker", *worker_args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")]))
    start = time.monotonic()
    end = start + timeout
    lines: queue.Queue = queue.Queue()
    procs: list[subprocess.Popen] = []
    try:
        for i in range(n):
            with open(logs / f"share-{n}-{i}.log", "w") as log:
                procs.append(
                    subprocess.Popen(
                        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
                    )
                )
            threading.Thread(target=_read_lines, args=(i, procs[-1].stdout, lines), daemon=True).start()
        _collect(procs, lines, "ready", end, logs)
        setup_s = time.monotonic() - start
        for p in procs:  # every timed window starts now
            p.stdin.write("go\n")
            p.stdin.flush()
        done = _collect(procs, lines, "images_per_s", end, logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return setup_s, done


def _read_lines(i: int, stream, lines: queue.Queue) -> None:
    """A worker's stdout as parsed JSON objects, then None at its end."""
    for text in stream:
        try:
            lines.put((i, json.loads(text)))
        except json.JSONDecodeError:
            pass  # not the worker's protocol (a library's print)
    lines.put((i, None))


def _collect(procs: list, lines: queue.Queue, key: str, end: float, logs: Path) -> list[dict]:
    """Each worker's next line holding ``key``, in worker order; RuntimeError when one exits first or time runs out."""
    got: dict[int, dict] = {}
    while len(got) < len(procs):
        try:
            i, obj = lines.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(
                f"the workers did not all say {key!r} in time; see {logs}/share-*.log"
            ) from None
        if obj is None:
            code = procs[i].wait()
            tail = (logs / f"share-{len(procs)}-{i}.log").read_text().strip().splitlines()[-1:]
            raise RuntimeError(f"worker {i} exited (code {code}) before saying {key!r}: {' '.join(tail)}")
        if key in obj:
            got[i] = obj
    return [got[i] for i in range(len(procs))]
