"""The one place that decides device, precision, memory format, threads and data-loader workers.

Nothing else in the project names "cuda": code asks a ``Runtime`` for its device, autocast context and
how to move a batch.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .errors import ConfigError


def available_cpus() -> int:
    """CPUs this process may use (respects affinity masks and Ray's CPU pinning, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Runtime:
    """Resolved execution settings for one process."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None = fp32
    channels_last: bool
    num_workers: int
    threads: int

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
        return f"{self.device} [{name}], {prec}, channels_last={'on' if self.channels_last else 'off'}, workers={self.num_workers}"


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: str = "auto",
                    threads: int = 0, num_workers: int = -1) -> Runtime:
    """Turn config strings into a Runtime and apply process-wide settings (threads, cudnn).

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto", "fp32", "bf16" or "fp16".
        channels_last: "auto", "on" or "off".
        threads: torch CPU threads (0 = every CPU this process may use).
        num_workers: DataLoader workers (-1 = auto).

    Raises:
        ConfigError: CUDA asked for but absent, or an unknown device string.
    """
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"key 'device' = {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"key 'device' = {device!r} but no CUDA GPU is visible; use device=auto or cpu")
    cuda = dev.type == "cuda"
    if precision == "auto":
        # bf16 keeps fp32's range (no loss scaling needed); fp16 only for GPUs without bf16 support.
        amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    else:
        amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if amp is torch.float16 and not cuda:
            raise ConfigError("key 'precision' = 'fp16' needs a CUDA device; use fp32 or bf16 on CPU")
    cl = cuda if channels_last == "auto" else channels_last == "on"
    cpus = available_cpus()
    n_threads = threads or cpus
    torch.set_num_threads(n_threads)
    if num_workers < 0:
        # On CPU the model, not the data, is the bottleneck (~70 img/s on 2 cores): workers would only
        # steal cores from it. On a GPU, augmentation must keep up, so use the CPUs we were given.
        num_workers = min(8, max(1, cpus - 1)) if cuda else 0
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input size, so autotuning pays off after step one
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(dev, amp, cl, num_workers, n_threads)
