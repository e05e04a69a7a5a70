"""The one place that decides device, precision, memory format, threads, data-loader workers and augmentation backend.

Training, evaluation and prediction ask a ``Runtime`` for their device, autocast context and how to move
a batch.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError

try:  # OpenCV is albumentations' backend: a machine that augments with torch may not have it
    import cv2
except ImportError:
    cv2 = None


def available_cpus() -> int:
    """CPUs this process may use (respects affinity masks and Ray's CPU pinning, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []  # Linux only
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), platform.processor() or "cpu"
    )
    return f"{model}, {os.cpu_count()} cores"


PREFETCH = 4  # batches each training-loader worker makes ahead (fer_core.timing leaves them out)


@dataclass(frozen=True)
class Runtime:
    """Resolved execution settings for one process: ``plan_runtime`` decides them, ``resolve_runtime`` also
    applies the process-wide ones."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None = fp32
    channels_last: bool
    compile: bool
    num_workers: int
    threads: int
    eval_batch_size: int
    fused_optimizer: bool = False  # one fused kernel per optimizer step, its step count on the device
    augment_backend: str = "albumentations"  # "albumentations" or "torch" (never "auto": resolved)

    @property
    def pin_memory(self) -> bool:
        """Page-locked host batches: only meaningful (and only allowed) with a CUDA device to copy to."""
        return self.is_cuda

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """Autocast context for forward passes (a no-op context in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        prec = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else f"cpu ({self.threads} threads)"
        return (
            f"{self.device} [{name}], {prec}, channels_last={'on' if self.channels_last else 'off'}, "
            f"compile={'on' if self.compile else 'off'}, workers={self.num_workers}, augment={self.augment_backend}"
        )


def plan_runtime(
    device: torch.device | str,
    cpus: int,
    bf16_supported: bool,
    precision: str = "auto",
    channels_last: str = "auto",
    compile: str = "auto",
    threads: int = 0,
    num_workers: int = -1,
    eval_batch_size: int = 0,
    augment_backend: str = "auto",
) -> Runtime:
    """Decide precision, memory format, compilation, threads, workers, eval batch and augmentation backend
    for a device, without
    touching it: a pure function of the machine, so tests on a CPU-only machine can check what a GPU run
    would use.

    Each "auto" is the measured winner (``python -m fer_core.tools.bench``; figures in docs/measured.md):

    - precision: bf16 autocast on CUDA (fp32's range, no loss scaling), fp16 on CUDA without bf16;
      fp32 on CPU, where bf16 autocast measured slower (142 vs 173 img/s, efficientnet_b0 48 px, 2 cores).
    - channels_last: on everywhere. On CPU it measured 1.7-2.1x faster than NCHW for efficientnet_b0
      (oneDNN's depthwise convolutions prefer NHWC); on CUDA tensor cores want NHWC too.
    - compile: off unless asked for. On CPU torch.compile measured slower (252 vs 278 img/s) after
      ~100 s of compilation; it has not been measured on a GPU, so it is not on by default there either.
    - augmentation backend: torch on CUDA (the split lives on the GPU and a whole batch is augmented there,
      so a trial needs about one CPU), albumentations on CPU (what CPU runs have always computed).
    - workers: none with the torch backend (no loader), none on CPU (augmentation costs ~0.2 ms an image,
      ~6 % of a CPU step; a worker would take a core from the model), CPUs-1 up to 8 on CUDA with
      albumentations (one core augments ~4,800 img/s at 48 px).
    - eval batch: 1024 on CUDA, 256 on CPU (no gradients; larger batches only add latency on a CPU).
    - fused optimizer: on CUDA (one kernel per step instead of a few per parameter group, and no step
      count read on the host); off on CPU, which keeps the foreach optimizer and its figures.

    Args:
        device: the device ("cpu", "cuda" or "cuda:N").
        cpus: CPUs this process may use.
        bf16_supported: whether the CUDA device supports bf16.
        precision, channels_last, compile: config strings ("auto" or an explicit choice).
        threads: torch CPU threads and this process's CPU share, which caps auto workers (0 = cpus).
        num_workers: DataLoader workers (-1 = auto: from the share).
        eval_batch_size: evaluation batch (0 = auto).
        augment_backend: "auto", "albumentations" or "torch".

    Raises:
        ConfigError: fp16 asked for on a CPU.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if precision == "auto":
        amp = (torch.bfloat16 if bf16_supported else torch.float16) if cuda else None
    else:
        amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if amp is torch.float16 and not cuda:
            raise ConfigError("key 'precision' = 'fp16' needs a CUDA device; use fp32 or bf16 on CPU")
    cl = channels_last != "off"
    comp = compile == "on"
    # A set ``threads`` is this process's share of the machine (a sweep trial's CPU allocation): workers come
    # out of that share, not out of every CPU the node has, or four trials on a 16-core node start 8 each.
    share = min(cpus, threads) if threads else cpus
    backend = ("torch" if cuda else "albumentations") if augment_backend == "auto" else augment_backend
    if num_workers < 0:
        num_workers = min(8, max(1, share - 1)) if cuda and backend == "albumentations" else 0
    return Runtime(
        device=device,
        amp_dtype=amp,
        channels_last=cl,
        compile=comp,
        num_workers=num_workers,
        threads=threads or cpus,
        eval_batch_size=eval_batch_size or (1024 if cuda else 256),
        fused_optimizer=cuda,
        augment_backend=backend,
    )


def limit_threads(n: int) -> None:
    """Size every CPU thread pool of this process to ``n``: torch's intra-op and inter-op pools and OpenCV's
    (albumentations' backend), which otherwise take one thread per CPU of the whole machine.

    Args:
        n: threads per pool (the process's CPU share).
    """
    torch.set_num_threads(n)
    # The inter-op pool may be sized once per process, before any inter-op work: a later call keeps the
    # first size.
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass
    if cv2 is not None:
        cv2.setNumThreads(n)


def worker_init(worker_id: int) -> None:
    """DataLoader worker start: one OpenCV thread (torch already gives each worker one), so the workers
    of a process together use what they were planned for."""
    limit_threads(1)


def resolve_runtime(
    device: str = "auto",
    precision: str = "auto",
    channels_last: str = "auto",
    threads: int = 0,
    num_workers: int = -1,
    compile: str = "auto",
    eval_batch_size: int = 0,
    augment_backend: str = "auto",
) -> Runtime:
    """Turn config strings into a Runtime and apply process-wide settings (threads, cudnn).

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto", "fp32", "bf16" or "fp16".
        channels_last: "auto", "on" or "off".
        threads: CPU threads per pool and the process's CPU share (0 = every CPU this process may use).
        num_workers: DataLoader workers (-1 = auto).
        compile: "auto", "on" or "off" (torch.compile of the training forward).
        eval_batch_size: evaluation batch size (0 = auto).
        augment_backend: "auto" (torch on CUDA, albumentations elsewhere), "albumentations" or "torch".

    Raises:
        ConfigError: CUDA asked for but absent, or an unknown device string.
    """
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ConfigError(
                f"key 'device' = {device!r} is not a device; use auto, cpu, cuda or cuda:N"
            ) from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"key 'device' = {device!r} but no CUDA GPU is visible; use device=auto or cpu")
    cuda = dev.type == "cuda"
    runtime = plan_runtime(
        dev,
        cpus=available_cpus(),
        bf16_supported=cuda and torch.cuda.is_bf16_supported(),
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        threads=threads,
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
        augment_backend=augment_backend,
    )
    limit_threads(runtime.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input size, so autotuning pays off after step one
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return runtime
