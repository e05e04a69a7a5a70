"""The prepared GPU check: how fast a sweep trial trains on one device, each figure kept as soon as it is measured.

Make the packed data here (once; FER2013 beside the checkout, under 40 MB, git-ignored: send
``.gpu-check/`` with the checkout), then run the check from the checkout root on the GPU machine, which
needs Python with torch, numpy and the pinned timm only (no Ray, Optuna, albumentations, network or package
registry; carry timm's wheel where another version is installed, as docs/measured.md shows):

    python -m fer_core.tools.gpu_check pack --data ../shared/data/fer2013 --out .gpu-check/fer2013-48.npz
    python -m fer_core.tools.gpu_check --budget 330 --out $OUT/gpu --data .gpu-check/fer2013-48.npz

The same on a CPU checks the code path in well under a minute (small batches, short passes):

    python -m fer_core.tools.gpu_check --device cpu --budget 30 --out /tmp/gpu-check

Each result is one JSON line in OUT/results.jsonl (and on stdout), written, flushed and synced when it is
measured, so a run stopped by a time limit keeps what it measured: ``name``, ``device`` (the GPU's name),
``settings``, ``images_per_s`` and ``seconds`` (the measurement's wall time: build, warm-up and timed
pass), or ``skipped`` / ``error`` with the reason. Measurements, in order, on a sweep trial's config
(``TRIAL``; the runtime picks precision and memory format: bf16 autocast and channels_last on a GPU with bf16):

1. ``step``: the trainer's own step on a batch already on the device (``timing.time_ready_step``), at 48 and
   96 px, batch 64 and 256: what the GPU and the host's kernel launches allow, with no data loading.
2. ``e2e``: ``Trainer.train_pass`` end to end after a warm-up pass, with each ``augment_backend``
   (albumentations only where it is installed).
3. ``share``: 1, 2 and 4 trial processes (this module in worker mode) sharing the device, started together,
   each training end to end with the torch backend for the same time: the total and each one's images/s.
4. ``compile``: the ready step with ``torch.compile`` (default and ``reduce-overhead``), if time remains.

``--budget`` counts from when this module has imported torch and timm (leave the machine's limit room for
that import): a measurement starts only when its estimated length fits in what is left, and an alarm stops
one that runs past twice its estimate or the budget's end. SIGTERM ends the run with a ``stopped`` line.
96 px data is the packed 48 px images resized once (``gpu_pack.load_packed``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from ..errors import FerError
from ..outputs import check_output_folder
from ..runtime import device_name
from ..timing import time_ready_step
from ..trainer import Trainer
from .gpu_pack import DEFAULT_PACK, load_packed, pack
from .gpu_trial import CHECKOUT, epoch_steps, share, trial_config, worker

STARTED = time.monotonic()  # the budget's start: CUDA start-up counts, importing torch (before) does not

STAGES = ("step", "e2e", "share", "compile")


@dataclass(frozen=True)
class Plan:
    """The sizes and lengths of the measurements on one kind of device."""

    step: tuple[tuple[int, int], ...]  # (img_size, batch_size) of the ready step
    e2e: tuple[tuple[int, int], ...]  # ... end to end, per backend
    share: tuple[int, int]  # ... of each sharing process
    compile: tuple[tuple[int, int], ...]  # ... compiled, per mode
    procs: tuple[int, ...]  # process counts sharing the device
    step_s: float  # shortest timed pass of the ready step
    warmup: int  # untimed steps before any timed pass
    pass_s: float  # timed end-to-end pass, and each sharing process's timed window
    setup_s: float  # first guess at a measurement's build and warm-up (then the longest seen)
    compile_s: float  # guess at a compilation (the alarm stops one at twice this)
    default_steps: int  # steps an end-to-end epoch holds when no ready-step rate sizes it


PLANS = {
    "cuda": Plan(
        step=((48, 64), (48, 256), (96, 64), (96, 256)),
        e2e=((48, 64), (48, 256), (96, 256)),
        share=(48, 64),
        compile=((48, 64), (48, 256)),
        procs=(1, 2, 4),
        step_s=2.0,
        warmup=10,
        pass_s=6.0,
        setup_s=30.0,
        compile_s=90.0,
        default_steps=2000,
    ),
    # On a CPU the run checks the code path: tiny batches and passes, figures of no interest.
    "cpu": Plan(
        step=((48, 8), (96, 8)),
        e2e=((48, 8),),
        share=(48, 8),
        compile=((48, 8),),
        procs=(1, 2, 4),
        step_s=0.3,
        warmup=1,
        pass_s=1.0,
        setup_s=8.0,
        compile_s=120.0,
        default_steps=20,
    ),
}


class OutOfTime(BaseException):
    """The alarm of a measurement that ran past its bound (a BaseException: library code must not swallow it)."""


class Stopped(BaseException):
    """SIGTERM: stop the whole check (the measurement in progress is written as skipped)."""


def _on_alarm(signum, frame):
    raise OutOfTime


def _on_term(signum, frame):
    raise Stopped


class Check:
    """One run of the check: the plan, the budget, the data, and the results file."""

    def __init__(self, *, data: Path, out: Path, device: str, budget: float):
        self.data, self.budget = data, budget
        self.device = torch.device(
            device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
        )
        self.plan = PLANS[self.device.type]
        self.name = device_name(self.device)
        self.out, self.results = out, out / "results.jsonl"
        self.setups: list[float] = []  # build and warm-up seconds of each ready-step measurement
        self.starts: list[float] = []  # start-up seconds of a sharing process (per wave: see _waves)
        self.ready: dict[tuple[int, int], float] = {}  # (img_size, batch) -> ready-step images/s
        self._splits: dict[int, tuple] = {}

    @property
    def setup_s(self) -> float:
        """A measurement's build and warm-up: the longest seen, or the plan's guess before any."""
        return max(self.setups, default=self.plan.setup_s)

    def left(self) -> float:
        return self.budget - (time.monotonic() - STARTED)

    def write(self, line: dict) -> None:
        """One result: appended, flushed and synced (a kill cannot lose it), and printed."""
        text = json.dumps(line) + "\n"
        with open(self.results, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        sys.stdout.write(text)
        sys.stdout.flush()

    def splits(self, img_size: int) -> tuple:
        if img_size not in self._splits:
            self._splits[img_size] = load_packed(self.data, img_size)
        return self._splits[img_size]

    def measure(self, name: str, settings: dict, need_s: float, run, bound_s: float = 0.0) -> None:
        """Run ``run() -> dict`` (with "images_per_s") if ``need_s`` fits the budget; write its line."""
        head = {"name": name, "device": self.name, "settings": settings}
        left = self.left()
        if left < need_s:
            self.write(
                {**head, "skipped": f"out of budget: {left:.0f} s left, it needs about {need_s:.0f} s"}
            )
            return
        if "img_size" in settings:
            self.splits(settings["img_size"])  # resized once, outside any measurement
        bound = max(1.0, min(self.left(), bound_s or 2 * need_s + 10))
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, bound)
        try:
            got = run()
        except OutOfTime:
            got = {"skipped": f"stopped by its alarm after {bound:.0f} s (budget or twice its estimate)"}
        except Stopped:
            self.write(
                {**head, "skipped": "stopped by SIGTERM", "seconds": round(time.perf_counter() - t0, 2)}
            )
            raise
        except Exception as e:  # noqa: BLE001 - the check goes on to the next measurement, naming this one's error
            got = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.write({**head, **got, "seconds": round(time.perf_counter() - t0, 2)})

    # -- the stages ----------------------------------------------------------------------------------------
    def _ready(self, img_size: int, batch: int, compile_mode: str = "") -> dict:
        t0 = time.perf_counter()
        cfg = trial_config(
            str(self.device),
            img_size,
            batch,
            steps_per_epoch=1,
            compile="on" if compile_mode == "default" else "off",
            augment_backend="torch",  # its loader is unused: the step is fed one batch; no albumentations needed
        )
        trainer = Trainer(cfg, splits=self.splits(img_size))
        if compile_mode == "reduce-overhead":
            trainer.train_model = torch.compile(trainer.model, mode=compile_mode)
        build_s = time.perf_counter() - t0
        r = time_ready_step(trainer, min_seconds=self.plan.step_s, warmup_steps=self.plan.warmup)
        if not compile_mode:
            self.ready[(img_size, batch)] = r["images_per_s"]
            self.setups.append(time.perf_counter() - t0 - r["seconds"])
        return {
            "images_per_s": round(r["images_per_s"], 1),
            "timed_seconds": round(r["seconds"], 2),
            "steps": r["steps"],
            "build_seconds": round(build_s, 2),
            "runtime": trainer.runtime.describe(),
        }

    def _e2e(self, img_size: int, batch: int, backend: str) -> dict:
        p = self.plan
        steps_cap = epoch_steps(self.ready.get((img_size, batch)), batch, p.pass_s, p.default_steps)
        cfg = trial_config(
            str(self.device),
            img_size,
            batch,
            augment_backend=backend,
            steps_per_epoch=max(steps_cap, p.warmup),
        )
        trainer = Trainer(cfg, splits=self.splits(img_size))
        trainer.train_pass(max_steps=p.warmup)  # workers start, cuDNN autotunes
        probe = trainer.train_pass(max_steps=p.warmup)  # the rate that sizes the timed pass
        steps = min(steps_cap, max(p.warmup, round(probe["images_per_s"] * p.pass_s / batch)))
        r = trainer.train_pass(max_steps=steps)
        return {
            "images_per_s": round(r["images_per_s"], 1),
            "timed_seconds": round(r["epoch_seconds"], 2),
            "steps": r["train_steps"],
            "runtime": trainer.runtime.describe(),
        }

    def _share(self, n: int, threads: int) -> dict:
        size, batch = self.plan.share
        steps = epoch_steps(self.ready.get((size, batch)), batch, 1.0, self.plan.default_steps)
        args = ["--data", str(self.data), "--device", str(self.device), "--img-size", str(size)]
        args += ["--batch-size", str(batch), "--threads", str(threads), "--seconds", str(self.plan.pass_s)]
        args += ["--steps", str(steps), "--warmup", str(self.plan.warmup)]
        setup_s, done = share(n, args, self.out, timeout=self.left())
        self.starts.append(setup_s / self._waves(n))
        rates = [round(r["images_per_s"], 1) for r in done]
        return {
            "images_per_s": round(sum(rates), 1),
            "per_process": rates,
            "timed_seconds": round(max(r["seconds"] for r in done), 2),
            "setup_seconds": round(setup_s, 2),
        }

    @staticmethod
    def _waves(n: int) -> int:
        """How many processes' start-ups each CPU runs when ``n`` start at once (they import torch in parallel)."""
        return math.ceil(n / (os.cpu_count() or 1))

    def run(self, stages: tuple[str, ...]) -> None:
        p = self.plan
        if "step" in stages:
            for size, batch in p.step:
                settings = {"img_size": size, "batch_size": batch}
                run = functools.partial(self._ready, size, batch)
                self.measure("step", settings, self.setup_s + 3 * p.step_s, run)
        if "e2e" in stages:
            for backend in ("torch", "albumentations"):
                for size, batch in p.e2e:
                    settings = {"img_size": size, "batch_size": batch, "augment_backend": backend}
                    if backend == "albumentations" and importlib.util.find_spec("albumentations") is None:
                        why = "albumentations is not installed"
                        self.write({"name": "e2e", "device": self.name, "settings": settings, "skipped": why})
                        continue
                    run = functools.partial(self._e2e, size, batch, backend)
                    self.measure("e2e", settings, self.setup_s + 2.5 * p.pass_s, run)
        if "share" in stages:
            for n in p.procs:
                threads = max(1, (os.cpu_count() or 1) // n)
                settings = {"processes": n, "img_size": p.share[0], "batch_size": p.share[1]}
                settings.update(augment_backend="torch", threads=threads)
                run = functools.partial(self._share, n, threads)
                start_s = max(self.starts, default=2 * p.setup_s)  # Python and torch start too
                self.measure("share", settings, start_s * self._waves(n) + 2 * p.pass_s, run)
        if "compile" in stages:
            for size, batch in p.compile:  # both modes of the host-bound batch first
                for mode in ("default", "reduce-overhead"):
                    settings = {"img_size": size, "batch_size": batch, "compile_mode": mode}
                    need = self.setup_s + p.compile_s + 3 * p.step_s
                    self.measure(
                        "compile", settings, need, functools.partial(self._ready, size, batch, mode), 2 * need
                    )
                    torch.compiler.reset()  # each compilation starts from nothing, as a trial's would


@contextlib.contextmanager
def _one_line_errors():
    """Bad input (data, --out) ends the command with ``error: ...`` and exit status 2, not a traceback."""
    try:
        yield
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the results folder cannot be made (permissions, a full disk, ...)
        print(f"error: {e.filename}: {e.strerror or e}; pass another --out", file=sys.stderr)
        sys.exit(2)


def check_timm() -> None:
    """The trainer uses timm's EMA as the version pyproject.toml pins it (another version's EMA lacks a method
    it calls): refused in one line at the start, before minutes of device time go to failing measurements."""
    pinned = re.search(r'"timm==([^"]+)"', (CHECKOUT / "pyproject.toml").read_text())
    if pinned and timm.__version__ != pinned.group(1):
        raise FerError(
            f"timm {timm.__version__} is installed but the project pins {pinned.group(1)}; carry its wheel "
            f"(pip download --no-deps timm=={pinned.group(1)} -d .whl) and install it first (docs/measured.md, GPU check)"
        )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pack"]:
        ap = argparse.ArgumentParser(prog="gpu_check pack", description="Pack FER2013 for the GPU check.")
        ap.add_argument("--data", default=str(CHECKOUT.parent / "shared" / "data" / "fer2013"))
        ap.add_argument("--out", default=str(CHECKOUT / DEFAULT_PACK))
        a = ap.parse_args(argv[1:])
        with _one_line_errors():
            print(json.dumps(pack(a.data, a.out)))
        return
    if argv[:1] == ["worker"]:  # one of the share stage's processes
        worker(argv[1:])
        return
    ap = argparse.ArgumentParser(
        prog="python -m fer_core.tools.gpu_check", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--budget", type=float, default=480.0, help="seconds the whole check may take (from its start)"
    )
    ap.add_argument(
        "--out", required=True, help="folder for results.jsonl (appended to) and the workers' logs"
    )
    ap.add_argument("--data", default=str(CHECKOUT / DEFAULT_PACK), help="the packed file (gpu_check pack)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")
    ap.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    a = ap.parse_args(argv)
    stages = tuple(s for s in a.stages.split(",") if s)
    if not set(stages) <= set(STAGES):
        ap.error(f"--stages {a.stages}: each must be one of {', '.join(STAGES)}")
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    with _one_line_errors():
        check_timm()
        check_output_folder(a.out, holds="results.jsonl and the workers' logs")
        check = Check(data=Path(a.data), out=Path(a.out), device=a.device, budget=a.budget)
        train, val = check.splits(48)  # the data is read before anything is written
        check.out.mkdir(parents=True, exist_ok=True)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__}
    check.write(
        {
            "name": "env",
            "device": check.name,
            "budget_s": a.budget,
            "train_images": len(train),
            "val_images": len(val),
        }
        | versions
        | {"cuda": torch.version.cuda, "data": a.data, "stages": list(stages)}
    )
    try:
        check.run(stages)
    except Stopped:
        check.write({"name": "stopped", "device": check.name, "reason": "SIGTERM"})
        sys.exit(143)
    check.write({"name": "done", "device": check.name, "seconds": round(time.monotonic() - STARTED, 1)})


if __name__ == "__main__":
    main()
