"""The measured objectives (``latency_ms``, ``throughput``): each architecture the search can train, exported as
``fer_core.apps.export`` exports a checkpoint and timed by onnxruntime on CPU, once, before the search.

Speed belongs to the exported graph (network, input size, channels), not to the weights a trial learns, so
trials of one architecture share one measurement: a front is then not made of timing noise between trials
of the same network, and no trial's training runs beside the timing (on 2 cores a training trial slows the
other core's timing). It runs as a Ray task of one trial's CPUs, so on a cluster it times a node that
trains the trials; the figures, with the CPU they were timed on, are recorded with the experiment and go
into every trial's results.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import ray

from fer_core.apps.export import export_config
from fer_core.apps.latency import measure_latency
from fer_core.config import TrainConfig
from fer_core.errors import CheckpointError, ConfigError
from sweeps.config.space import arch_key, architectures


def _time_architectures(train: TrainConfig, archs: list[dict], num_classes: int, threads: int, batch: int):
    """The figures per architecture, or the one-line error that stopped them (a Ray task's exception would
    come back wrapped in its traceback)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            cfg = dataclasses.replace(train, **arch)
            try:
                path = export_config(cfg, num_classes, Path(tmp) / "model.onnx")
            except CheckpointError as e:  # a weights file fits one architecture
                return f"search_space.model = {cfg.model}: {e}"
            r = measure_latency(path, batch_sizes=(1, batch), threads=threads, min_seconds=1.0)
            out[arch_key(cfg)] = {
                "latency_ms": r["latency_ms"],
                "latency_iqr_ms": r["latency_iqr_ms"],
                "throughput": r["images_per_s"],
                "stable": all(b["stable"] for b in r["batches"].values()),
                "threads": r["threads"],
                "batch": batch,
                "machine": r["machine"],
            }
    return out


def what_is_timed(settings, archs: list[dict]) -> str:
    """The architectures and the timing's settings, as the driver and the dry run say them."""
    return (
        f"{len(archs)} architecture(s) for the objectives ({', '.join(map(arch_key, archs))}): "
        f"onnxruntime, {settings.latency.threads} thread(s), batch 1 and {settings.latency.batch}"
    )


def measure_objectives(settings, num_classes: int, resources: dict) -> dict:
    """``{arch_key: {"latency_ms", "latency_iqr_ms", "throughput", "stable", "threads", "batch", "machine"}}``
    for every architecture of the search, timed in one Ray task with a trial's ``resources`` (Tune's
    ``{"cpu", "gpu"}``; the timing uses ``settings.latency.threads`` of them, and no GPU)."""
    archs = architectures(settings.search_space, settings.train, settings.source)
    print(f"[sweeps] timing {what_is_timed(settings, archs)}", flush=True)
    cpus = max(float(resources.get("cpu", 1)), float(settings.latency.threads))
    task = ray.remote(num_cpus=cpus, num_gpus=0, max_retries=0)(_time_architectures)
    args = (settings.train, archs, num_classes, settings.latency.threads, settings.latency.batch)
    measured = ray.get(task.remote(*args))
    if isinstance(measured, str):
        raise ConfigError(measured)
    return measured


def trial_objectives(measured: dict, config) -> dict:
    """What a trial of ``config`` reports beside its epoch: its architecture's figures."""
    m = measured[arch_key(config)]
    return {"latency_ms": m["latency_ms"], "throughput": m["throughput"], "latency_machine": m["machine"]}
