"""INT8 models: an exported ONNX file quantized by onnxruntime, and the report that weighs it against FP32.

``quantize`` writes the INT8 file with the FP32 file's metadata (classes, preprocessing contract,
temperature) and a ``quantization`` key saying how it was made; the uint8 input, the normalisation and
the tempered softmax stay as they were (only the convolutions and the classifier are quantized), so
``OnnxPredictor`` and any deployment load it exactly as the FP32 file. ``int8_report`` scores both files
with onnxruntime on the images the checkpoint's evaluation decodes, and times both with
``fer_core.apps.latency``.

Two methods: ``static`` (QDQ: weights int8 per channel, activations uint8 with ranges fixed beforehand:
the 99.999th percentile of each tensor's values over ``CALIBRATION_IMAGES`` training images) and
``dynamic`` (weights uint8, activation ranges computed at every call, no calibration images).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from ..calibration import ece
from ..checkpoint import load_checkpoint
from ..decode_cache import load_dataset
from ..errors import DataError, FerError
from ..evaluate import checkpoint_data
from ..runtime import available_cpus
from .export import INPUT_NAME, OUTPUT_NAME, _need
from .latency import measure_latency

METHODS = ("static", "dynamic")
# Static: on the FER2013 + AffectNet winner (efficientnet_lite0, 48 px gray), FER2013 val, 2-core AMD EPYC
# (docs/measured.md, "INT8"), static lost 0.45 points (0.6264 -> 0.6219), ran batch 1 in 0.44 ms against
# FP32's 0.61 on one thread (0.42 against 0.38 on two) and batch 64 at 3081 against 1928 images/s, in 0.29x
# the file; dynamic lost 0.28 points but ran batch 1 in 4.9 ms, 8x FP32 (its ConvInteger kernels are far
# slower than the fused QDQ convolutions).
DEFAULT_METHOD = "static"
CALIBRATION_IMAGES = 256  # drawn at random (seeded) from the training split
OP_TYPES = ["Conv", "Gemm", "MatMul"]  # the arithmetic; normalisation and softmax stay float
MAX_ACCURACY_LOSS = 0.01  # points of accuracy (as a fraction) INT8 may lose on a split before a warning


def int8_path(onnx_path: str | Path) -> Path:
    """Where the INT8 file goes by default: model.onnx -> model.int8.onnx."""
    return Path(onnx_path).with_suffix(".int8.onnx")


def calibration_images(
    checkpoint: str | Path, data=None, n: int = CALIBRATION_IMAGES, seed: int = 0, cache_dir=None
) -> tuple[np.ndarray, str]:
    """``n`` images drawn at random from the training split of the checkpoint's own data (or of ``data``,
    mapped onto its classes; its val split when it has no train split), decoded as training decodes them.

    Returns:
        The uint8 images and a phrase saying where they came from.

    Raises:
        DataError: the data is not where the checkpoint says (pass ``data``), or has neither split.
    """
    state = load_checkpoint(checkpoint)
    try:
        dataset, _ = checkpoint_data(state, data)
    except DataError as e:
        hint = "" if data is not None else "; or pass --calibration DIR, a folder of the same classes"
        raise DataError(f"calibration images: {e}{hint}") from None
    split = next((s for s in ("train", "val") if s in dataset.splits), None)
    roots = ", ".join(str(s.root) for s in dataset.sources)
    if split is None:
        raise DataError(
            f"{roots}: has no train or val split to draw calibration images from; pass --calibration DIR"
        )
    pre = state["preprocess"]
    split_data = load_dataset(dataset, split, pre["img_size"], pre["grayscale"], cache_dir=cache_dir)
    pick = np.sort(np.random.default_rng(seed).permutation(len(split_data))[:n])
    return np.ascontiguousarray(split_data.images[pick]), f"{len(pick)} {split} images of {roots}"


def report_data(state: dict, data=None):
    """The data ``int8_report`` scores: ``fer_core.evaluate.checkpoint_data``, with the flag to pass when
    the checkpoint's own data is not there."""
    try:
        return checkpoint_data(state, data)[0]
    except DataError as e:
        raise DataError(f"INT8 report: {e}" + ("" if data is not None else "; or pass --data DIR")) from None


def _metadata(path) -> dict[str, str]:
    try:
        proto = _need("onnx").load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's decode errors, a missing file
        raise FerError(f"{path}: not a readable ONNX model ({type(e).__name__}); export it again") from None
    return {p.key: p.value for p in proto.metadata_props}


def quantize(
    onnx_path: str | Path,
    out: str | Path,
    method: str = DEFAULT_METHOD,
    images: np.ndarray | None = None,
    source: str = "",
) -> Path:
    """Write an INT8 copy of a fer_core ONNX export, its metadata kept and a ``quantization`` key added.

    Args:
        onnx_path: the FP32 file (``fer_core.apps.export``).
        out: the INT8 file to write.
        method: ``static`` (needs ``images``) or ``dynamic``.
        images: uint8 calibration images of the model's input shape (static only).
        source: where the images came from, for the metadata.

    Raises:
        FerError: an unknown method, static without images, a file onnxruntime cannot quantize, or an INT8
            model this onnxruntime cannot run.
    """
    onnx, ort = _need("onnx"), _need("onnxruntime")
    from onnxruntime import quantization as q

    if method not in METHODS:
        raise FerError(f"--quantization {method}: unknown; use one of {', '.join(METHODS)}")
    meta = _metadata(onnx_path)
    if "class_names" not in meta:
        raise FerError(
            f"{onnx_path}: not a fer_core export (no 'class_names' in its metadata); export the checkpoint with "
            "python -m fer_core.apps.export CHECKPOINT --onnx OUT.onnx"
        )
    if method == "static" and (images is None or len(images) == 0):
        raise FerError(f"{onnx_path}: static quantization needs calibration images; pass --calibration DIR")
    out = Path(out)
    # The quantizer writes its file here; ``out`` is written whole, once the model is known to run.
    with tempfile.TemporaryDirectory(prefix="fer-int8-") as work:
        raw = Path(work, out.name)
        muted = logging.root.manager.disable
        # Silences the quantizer's advice to pre-process the model: measured, it changed nothing here.
        logging.disable(logging.WARNING)
        try:
            if method == "static":
                # One image a batch: the percentile calibrator cannot stack batches of different sizes.
                batches = iter([{INPUT_NAME: images[i : i + 1]} for i in range(len(images))])

                class Reader(q.CalibrationDataReader):
                    def get_next(self):
                        return next(batches, None)

                with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
                    q.quantize_static(
                        str(onnx_path),
                        str(raw),
                        Reader(),
                        quant_format=q.QuantFormat.QDQ,
                        op_types_to_quantize=OP_TYPES,
                        per_channel=True,
                        activation_type=q.QuantType.QUInt8,
                        weight_type=q.QuantType.QInt8,
                        # Percentile (99.999 %) ranges: on the model DEFAULT_METHOD names, FER2013 val accuracy
                        # 0.6219 and ECE 0.0325, against 0.6199 and 0.0396 with MinMax or Entropy (FP32: 0.6264,
                        # 0.0297).
                        calibrate_method=q.CalibrationMethod.Percentile,
                    )
                how = (
                    "static QDQ, int8 weights per channel, uint8 activations, 99.999th-percentile ranges from "
                    + (source or f"{len(images)} images")
                )
            else:
                q.quantize_dynamic(
                    str(onnx_path), str(raw), op_types_to_quantize=OP_TYPES, weight_type=q.QuantType.QUInt8
                )
                how = "dynamic, uint8 weights, activation ranges computed at every call"
        except Exception as e:  # onnxruntime's quantizer raises whatever its passes raise
            raise FerError(
                f"{onnx_path}: onnxruntime {ort.__version__} cannot quantize it {method}ally ({type(e).__name__}: "
                f"{_first_line(e)}); {_other_method(method)}"
            ) from None
        finally:
            logging.disable(muted)
        proto = onnx.load(str(raw))
    del proto.metadata_props[:]
    for key, value in {
        **meta,
        "quantization": json.dumps({"int8": True, "method": method, "how": how}),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.doc_string = "fer_core", meta.get("input_contract", "")
    model = proto.SerializeToString()
    try:  # a platform without the quantized kernels fails here, not in a deployment
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
        session.run([OUTPUT_NAME], {INPUT_NAME: np.zeros(shape, np.uint8)})
    except Exception as e:
        raise FerError(
            f"{out}: onnxruntime {ort.__version__} on this platform cannot run the {method} INT8 model "
            f"({_first_line(e)}); {_other_method(method)}"
        ) from None
    write_atomic(out, lambda f: f.write(model), mode=0o644)  # a kill leaves no half file
    return out


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _other_method(method: str) -> str:
    """The fix a failed quantization's message offers."""
    return f"try --quantization {'dynamic' if method == 'static' else 'static'} or ship the FP32 file"


def _probabilities(path: str | Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    ort = _need("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = available_cpus()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images[i : i + batch])})[0]
            for i in range(0, len(images), batch)
        ]
    )


def int8_report(
    checkpoint: str | Path,
    fp32_path: str | Path,
    int8_path: str | Path,
    data=None,
    cache_dir=None,
    latency: dict | None = None,
    rounds: int = 3,
    max_loss: float = MAX_ACCURACY_LOSS,
) -> dict:
    """FP32 against INT8: accuracy and ECE per split (val, and test when the data has one), batch-1 latency,
    throughput and file size.

    Args:
        checkpoint: the checkpoint both files were exported from (its data and classes).
        fp32_path, int8_path: the two ONNX files.
        data: data to score on, as ``fer_core.evaluate`` takes it (None: the checkpoint's own, split as then).
        cache_dir: decoded-image cache folder.
        latency: keyword arguments of ``measure_latency`` (default: its own, with ``min_seconds`` 1).
        rounds: timings of each file, the two files taking turns; each keeps its fastest batch-1 round.
        max_loss: accuracy INT8 may lose on a split before ``warning`` is set.

    Returns:
        {"fp32", "int8" (the paths), "quantization" (the INT8 file's metadata key), "splits": {split:
        {"images", "fp32": {"accuracy", "ece"}, "int8": {...}, "agreement" (share of equal top-1)}},
        "latency": {"fp32", "int8": ``measure_latency``'s dict of the kept round, plus
        "round_latencies_ms"}, "load_average" (1-minute, before and after the timings), "size_bytes": {"fp32", "int8"},
        "max_loss", "warning" (one line, or None)}.
    """
    state = load_checkpoint(checkpoint)
    dataset = report_data(state, data)
    pre = state["preprocess"]
    files = {"fp32": Path(fp32_path), "int8": Path(int8_path)}
    out = {
        **{k: str(p) for k, p in files.items()},
        "quantization": json.loads(_metadata(int8_path).get("quantization", "null")),
        "splits": {},
        "max_loss": max_loss,
    }
    for split in (s for s in ("val", "test") if s in dataset.splits):
        d = load_dataset(dataset, split, pre["img_size"], pre["grayscale"], cache_dir=cache_dir)
        probs = {k: _probabilities(p, d.images) for k, p in files.items()}
        out["splits"][split] = {
            "images": len(d),
            **{
                k: {"accuracy": float((p.argmax(1) == d.labels).mean()), "ece": ece(p, d.labels)}
                for k, p in probs.items()
            },
            "agreement": float((probs["fp32"].argmax(1) == probs["int8"].argmax(1)).mean()),
        }
    # FP32 and INT8 take turns, and each keeps its least disturbed round: another process's load only ever
    # slows a round down (measured on a shared 2-core machine: one round in six had the ratio upside down).
    runs: dict[str, list[dict]] = {k: [] for k in files}
    for _ in range(rounds):
        for k, p in files.items():
            runs[k].append(measure_latency(p, **{"min_seconds": 1.0, **(latency or {})}))
    out["latency"] = {
        k: dict(min(v, key=lambda r: r["latency_ms"]), round_latencies_ms=[r["latency_ms"] for r in v])
        for k, v in runs.items()
    }
    out["load_average"] = [runs["fp32"][0]["load_average"][0], runs["int8"][-1]["load_average"][1]]
    out["size_bytes"] = {k: p.stat().st_size for k, p in files.items()}
    lost = {s: r["fp32"]["accuracy"] - r["int8"]["accuracy"] for s, r in out["splits"].items()}
    worst = max(lost, key=lost.get, default=None)
    out["warning"] = (
        f"INT8 loses {100 * lost[worst]:.1f} points of {worst} accuracy (more than {100 * max_loss:.1f}): "
        "try the other --quantization method, or ship the FP32 file"
        if worst is not None and lost[worst] > max_loss
        else None
    )
    return out


def format_int8_report(r: dict) -> str:
    """The report as a small table, FP32 and INT8 side by side, and the warning when there is one."""
    rows = [f"{'':<22}{'FP32':>12}{'INT8':>12}"]
    for split, s in r["splits"].items():
        for key in ("accuracy", "ece"):
            rows.append(f"{f'{split} {key}':<22}{s['fp32'][key]:>12.4f}{s['int8'][key]:>12.4f}")
        rows.append(
            f"{f'{split} top-1 agreement':<22}{'':>12}{s['agreement']:>12.4f}  ({s['images']} images)"
        )
    lat = r["latency"]
    big = max(lat["fp32"]["batches"])
    rows += [
        f"{'batch-1 latency, ms':<22}{lat['fp32']['latency_ms']:>12.2f}{lat['int8']['latency_ms']:>12.2f}"
        f"  (x{lat['int8']['latency_ms'] / lat['fp32']['latency_ms']:.2f}; the fastest of "
        f"{len(lat['int8']['round_latencies_ms'])} alternating rounds)",
        f"{f'batch {big}, images/s':<22}{lat['fp32']['images_per_s']:>12.0f}{lat['int8']['images_per_s']:>12.0f}",
        f"{'file, MB':<22}{r['size_bytes']['fp32'] / 1e6:>12.2f}{r['size_bytes']['int8'] / 1e6:>12.2f}"
        f"  (x{r['size_bytes']['int8'] / r['size_bytes']['fp32']:.2f})",
        f"quantization: {(r['quantization'] or {}).get('how', 'unknown')}",
        f"timed with onnxruntime, {lat['fp32']['threads']} threads, on {lat['fp32']['machine']} "
        f"(load average {r['load_average'][0]:.1f} at the start, {r['load_average'][1]:.1f} at the end)",
    ]
    if r["warning"]:
        rows.append(f"warning: {r['warning']}")
    return "\n".join(rows)
