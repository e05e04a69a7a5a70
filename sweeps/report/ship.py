"""The retrained winner as it ships: ``model.onnx`` (``fer_core.apps.export``), its speed on this CPU, with
``int8: true`` an INT8 copy weighed against it (``fer_core.apps.int8``), and ``model_card.md``."""

from __future__ import annotations

from pathlib import Path

from fer_core.apps.export import export_onnx
from fer_core.apps.int8 import DEFAULT_METHOD, calibration_images, format_int8_report, int8_report, quantize
from fer_core.apps.latency import format_latency, measure_latency
from fer_core.apps.model_card import model_card
from fer_core.checkpoint import load_checkpoint
from fer_core.errors import FerError
from sweeps.config.settings import SweepSettings
from sweeps.state.storage import write_local

ONNX, INT8, CARD = "model.onnx", "model.int8.onnx", "model_card.md"


def export_winner(settings: SweepSettings, ckpt: Path, out: Path, *, data, cache_dir) -> dict:
    """Write ``model.onnx`` of ``ckpt`` (temperature included) into ``out`` and time it as the sweep times
    its objectives (``settings.latency``); with ``settings.int8``, ``model.int8.onnx`` too (static,
    calibrated on the winner's training images) and FP32 against INT8 on val (and test). Returns
    ``{"latency": measure_latency's dict, "int8": int8_report's dict, or {"error": line} when onnxruntime
    could not quantize it (the report goes on without it)}``."""
    timing = {"batch_sizes": (1, settings.latency.batch), "threads": settings.latency.threads}
    onnx = export_onnx(ckpt, out / ONNX)
    shipped = {"latency": measure_latency(onnx, min_seconds=1.0, **timing)}
    print(f"[sweeps] {ONNX}: {format_latency(shipped['latency'])}", flush=True)
    if settings.int8:
        try:
            images, source = calibration_images(ckpt, data, cache_dir=cache_dir)
            quantize(onnx, out / INT8, DEFAULT_METHOD, images, source)
            r = int8_report(ckpt, onnx, out / INT8, data=data, cache_dir=cache_dir, latency=timing)
        except FerError as e:
            (out / INT8).unlink(missing_ok=True)  # an earlier report's, which this one would not describe
            print(f"[sweeps] WARNING: no INT8 model: {e}", flush=True)
            r = {"error": str(e)}
        else:
            print(f"[sweeps] {INT8}, FP32 against INT8:\n{format_int8_report(r)}", flush=True)
        shipped["int8"] = r
    return shipped


def write_card(ckpt: Path, out: Path, *, metrics: dict, audit: dict | None, choice: str) -> Path:
    """``model_card.md``: the Hub card of the winner (``fer_core.apps.model_card``) from the report's figures."""
    int8 = metrics.get("int8")
    card = model_card(
        load_checkpoint(ckpt),
        metrics=metrics,
        audit=audit,
        latency=metrics.get("latency"),
        int8=int8 if int8 and "error" not in int8 else None,
        choice=choice,
    )
    write_local(out / CARD, card.encode(), out.parent)
    return out / CARD
