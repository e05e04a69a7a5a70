"""How fast an exported ONNX model runs on this machine's CPU: batch-1 latency and larger-batch throughput.

The model runs in onnxruntime's CPU provider, as a deployment runs it (``fer_core.apps.export`` puts the
preprocessing and the tempered softmax inside the graph, so a call is the whole model), on random uint8
images of the input shape the file declares.

Each batch size is timed call by call, after ``warmup`` untimed calls (the first ones allocate and plan
memory). "Enough repeats" is decided like this: timing goes on until at least ``min_repeats`` calls and
``min_seconds`` have passed, and then until the medians of the first and the second half of the calls
differ by less than ``tolerance`` (5 %), or ``max_seconds`` is spent; ``stable`` says which ended it. A
machine whose load changes during the measurement shows up as an unstable result and a wide
interquartile range, not as a quietly wrong median.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import FerError
from ..runtime import available_cpus, device_name


def _session(onnx_path: str | Path, threads: int):
    from .export import _need

    ort = _need("onnxruntime")
    if not Path(onnx_path).is_file():
        raise FerError(
            f"{onnx_path}: no such ONNX file; export one with python -m fer_core.apps.export CHECKPOINT"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for unreadable files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FerError(f"{onnx_path}: not a readable ONNX model ({first}); export it again") from None


def input_shape(session, onnx_path) -> tuple[str, tuple[int, ...]]:
    """The file's one uint8 input: its name and its shape after the batch axis."""
    inputs = session.get_inputs()
    if (
        len(inputs) != 1
        or inputs[0].type != "tensor(uint8)"
        or not all(isinstance(d, int) for d in inputs[0].shape[1:])
    ):
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise FerError(
            f"{onnx_path}: its inputs are {got}; the latency is measured on fer_core exports (one uint8 input "
            "N x S x S or N x S x S x 3): export the checkpoint with python -m fer_core.apps.export"
        )
    return inputs[0].name, tuple(inputs[0].shape[1:])


def _time_calls(run, warmup: int, min_repeats: int, min_seconds: float, max_seconds: float, tolerance: float):
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if len(times) < min_repeats or spent < min_seconds:
            continue
        half = len(times) // 2
        a, b = np.median(times[:half]), np.median(times[half:])
        stable = abs(a - b) <= tolerance * min(a, b)
        if stable or spent >= max_seconds:
            return np.asarray(times), bool(stable)


def measure_latency(
    onnx_path: str | Path,
    batch_sizes: tuple[int, ...] = (1, 64),
    threads: int | None = None,
    min_seconds: float = 2.0,
    max_seconds: float = 10.0,
    min_repeats: int = 20,
    warmup: int = 5,
    tolerance: float = 0.05,
    seed: int = 0,
) -> dict:
    """Time an exported model per batch size (see the module's docstring for when a measurement ends).

    Args:
        onnx_path: an ONNX file with one uint8 input (``fer_core.apps.export``'s contract).
        batch_sizes: batch sizes timed; the smallest gives the latency, the largest the throughput.
        threads: onnxruntime's intra-op threads (None: the CPUs this process may use).
        min_seconds, max_seconds: least and most time spent timing each batch size.
        min_repeats: least timed calls per batch size.
        warmup: untimed calls before timing.
        tolerance: largest relative difference of the two halves' medians that counts as stable.
        seed: seed of the random images.

    Returns:
        {"file", "size_bytes", "threads", "machine" (CPU model and core count), "load_average" (1-minute,
        before and after), "latency_ms" (median at the smallest batch), "latency_iqr_ms" ([25th, 75th]
        percentile), "images_per_s" (at the largest batch, from its median call), "batches": {batch: {"median_ms",
        "q1_ms", "q3_ms", "repeats", "stable", "images_per_s"}}}.

    Raises:
        FerError: the file is missing or unreadable, has no single uint8 input, a batch size below 1 or
            ``threads`` below 1.
    """
    sizes = sorted(set(int(b) for b in batch_sizes))
    if not sizes or sizes[0] < 1:
        raise FerError(f"batch_sizes = {tuple(batch_sizes)}; give batch sizes of at least 1, e.g. (1, 64)")
    threads = available_cpus() if threads is None else int(threads)
    if threads < 1:
        raise FerError(f"threads = {threads}; give at least 1 (None: the CPUs this process may use)")
    session = _session(onnx_path, threads)
    name, shape = input_shape(session, onnx_path)
    rng = np.random.default_rng(seed)
    load_before = os.getloadavg()[0]
    batches = {}
    for n in sizes:
        x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        times, stable = _time_calls(
            lambda x=x: session.run(None, {name: x}), warmup, min_repeats, min_seconds, max_seconds, tolerance
        )
        q1, med, q3 = np.percentile(times, [25, 50, 75]) * 1000
        batches[n] = {
            "median_ms": float(med),
            "q1_ms": float(q1),
            "q3_ms": float(q3),
            "repeats": len(times),
            "stable": stable,
            "images_per_s": float(n * 1000 / med),
        }
    first, last = batches[sizes[0]], batches[sizes[-1]]
    return {
        "file": str(onnx_path),
        "size_bytes": Path(onnx_path).stat().st_size,
        "threads": threads,
        "machine": device_name(torch.device("cpu")),
        "load_average": [load_before, os.getloadavg()[0]],
        "latency_ms": first["median_ms"],
        "latency_iqr_ms": [first["q1_ms"], first["q3_ms"]],
        "images_per_s": last["images_per_s"],
        "batches": batches,
    }


def format_latency(r: dict) -> str:
    """One line: latency at the smallest batch with its spread, throughput at the largest, threads, machine."""
    sizes = sorted(r["batches"])
    b1, big = r["batches"][sizes[0]], r["batches"][sizes[-1]]
    unstable = [str(n) for n in sizes if not r["batches"][n]["stable"]]
    return (
        f"batch {sizes[0]}: {r['latency_ms']:.2f} ms median (IQR {b1['q1_ms']:.2f}-{b1['q3_ms']:.2f}, "
        f"{b1['repeats']} calls); batch {sizes[-1]}: {big['images_per_s']:.0f} images/s; "
        f"onnxruntime {r['threads']} threads on {r['machine']}, load {r['load_average'][0]:.1f}"
        + (f"; not stable at batch {', '.join(unstable)}" if unstable else "")
    )
