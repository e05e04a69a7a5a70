"""Export a checkpoint to ONNX with the preprocessing inside the graph, and check it against PyTorch.

    python -m fer_core.apps.export CHECKPOINT --onnx model.onnx [--check] [--batch-size 64] [--opset 17] [--overwrite]
        [--int8 [model.int8.onnx] [--quantization static|dynamic] [--calibration DIR] [--data DIR] [--threads N]]
        [--hub DIR]

The exported model takes what a deployment has at hand, decoded uint8 pixels, and returns probabilities:

- input ``images``: uint8, shape N×S×S (grayscale checkpoints) or N×S×S×3 (RGB, channels last), S = the
  checkpoint's ``img_size``; N is dynamic. Faces must be cropped and resized to S×S beforehand with the
  training decoder's rules (8-bit gray 'L' or RGB, bicubic resize; see ``fer_core.data.decode_image``).
- inside: ``fer_core.preprocess.Preprocess.normalize`` itself, traced: uint8 -> float, the gray channel
  repeated to 3, then either each image standardised by its own mean and std (``per_image``, the default)
  or ``(x - 255*mean) / (255*std)`` per channel with the weights' mean/std.
- output ``probabilities``: float32 N×C, softmax of the logits divided by the checkpoint's temperature (1
  unless the sweep's report fitted one: ``fer_core.calibration.tempered_softmax``), over the checkpoint's own
  classes (whatever it was trained on) in its ``class_names`` order, which the command prints.

The class names and this contract are stored in the ONNX file's ``metadata_props`` (keys ``class_names``,
``preprocess``, ``temperature``, ``input_contract``, ``source_checkpoint``, ``fer_core_version``).

``--int8`` also writes an INT8 copy quantized by onnxruntime (``fer_core.apps.int8``: the same input,
preprocessing and metadata, plus a ``quantization`` key), then prints FP32 against INT8: accuracy and ECE
on val (and test) of the checkpoint's data (or ``--data``), batch-1 latency, throughput and file size.
Static quantization draws its calibration images from the checkpoint's training data (``--calibration``
when it is elsewhere).

``--hub DIR`` writes a Hugging Face Hub folder (``fer_core.apps.hub``): model.onnx (there, unless --onnx
says where), the weights as timm's model.safetensors and config.json, and the model card as README.md
(with the --int8 report when given). Nothing is uploaded.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..atomic import write_atomic
from ..calibration import tempered_softmax
from ..checkpoint import load_model, temperature_of
from ..config import TrainConfig
from ..errors import FerError
from ..model import build_model
from ..outputs import check_output
from ..preprocess import Preprocess
from ..runtime import resolve_runtime

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
# The opsets torch's TorchScript exporter writes (its own constant, read where torch has it): 17 is the
# oldest with the LayerNorm and resize ops timm's models need.
OPSETS = range(17, getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20) + 1)


class PreprocessedModel(nn.Module):
    """uint8 images in, probabilities out: ``Preprocess`` and the tempered softmax wrapped around the network.

    Args:
        model: the classifier (logits out).
        preprocess: the checkpoint's contract.
        temperature: the checkpoint's softmax temperature.
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess, temperature: float = 1.0):
        super().__init__()
        self.model, self.preprocess, self.temperature = model, preprocess, temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The very function training and evaluation use, traced into the graph: they cannot drift apart.
        return tempered_softmax(self.model(self.preprocess.normalize(images)), self.temperature)


def input_contract(pre: Preprocess, class_names: list[str], temperature: float = 1.0) -> str:
    """The sentence stored in the ONNX metadata that tells a deployment what to feed and what comes back."""
    shape = f"N x {pre.img_size} x {pre.img_size}" + ("" if pre.grayscale else " x 3")
    colour = "8-bit grayscale ('L')" if pre.grayscale else "8-bit RGB, channels last"
    norm = (
        "each image to zero mean and unit standard deviation over its pixels (std floored at 1 grey level)"
        if pre.per_image
        else f"(x/255 - mean)/std with mean {list(pre.mean)}, std {list(pre.std)}"
    )
    gray = ", gray repeated to 3 channels" if pre.grayscale else ""
    return (
        f"input '{INPUT_NAME}': uint8 {shape}, a face crop resized to {pre.img_size}x{pre.img_size} (bicubic), "
        f"{colour}; normalisation is inside the graph{gray}: {norm}. "
        f"output '{OUTPUT_NAME}': float32 N x {len(class_names)} softmax probabilities (logits / temperature "
        f"{temperature:.4g}) for {', '.join(class_names)}"
    )


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise FerError(
            f"python package '{module}' is missing; pip install onnx onnxruntime (or pip install -e .)"
        ) from None


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Write the checkpoint's model, with its preprocessing and softmax, as an ONNX file.

    Args:
        checkpoint: a fer_core checkpoint.
        out: the .onnx file to write (its folder is created).
        opset: ONNX opset, in ``OPSETS``.

    Returns:
        The ONNX path.

    Raises:
        CheckpointError: not a usable fer_core checkpoint.
        FerError: onnx is not installed.
    """
    model, pre, classes, state = load_model(checkpoint, resolve_runtime("cpu", channels_last="off"))
    temperature = temperature_of(state, checkpoint)
    return _write_onnx(PreprocessedModel(model, pre, temperature), classes, out, str(checkpoint), opset)


def export_config(cfg: TrainConfig, num_classes: int, out: str | Path, opset: int = 17) -> Path:
    """Write the model a run of ``cfg`` would train, untrained, as ``export_onnx`` writes a checkpoint's: the
    same graph (architecture, input size, preprocessing, softmax), so the same speed, before any training."""
    # The weights change no speed; loaded, they are checked against the architecture before any trial.
    model = build_model(
        cfg.model, num_classes=num_classes, weights=cfg.weights or None, drop_rate=cfg.drop_rate
    )
    classes = [f"class_{i}" for i in range(num_classes)]
    wrapped = PreprocessedModel(model, Preprocess.for_config(cfg, model))
    return _write_onnx(wrapped, classes, out, f"untrained {cfg.model}", opset)


def _write_onnx(wrapped: PreprocessedModel, classes: list[str], out, source: str, opset: int) -> Path:
    """Trace ``wrapped`` to the ONNX file ``out`` with its contract in the metadata; returns ``out``."""
    onnx = _need("onnx")
    wrapped = wrapped.eval()
    pre, temperature = wrapped.preprocess, wrapped.temperature
    shape = (2, pre.img_size, pre.img_size) + (() if pre.grayscale else (3,))
    out = Path(out)
    traced = io.BytesIO()
    # The TorchScript exporter: no onnxscript dependency, and it handles timm's EfficientNet without fuss.
    # Its "legacy exporter" DeprecationWarning is silenced: it says nothing a user of this command can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # The normalisation's mean and std tensors are constants: the tracer's warning that they are is noise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped,
            (torch.zeros(shape, dtype=torch.uint8),),
            traced,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load_from_string(traced.getvalue())
    meta = {
        "class_names": json.dumps(classes),
        "preprocess": json.dumps(pre.to_dict()),
        "temperature": json.dumps(temperature),
        "input_contract": input_contract(pre, classes, temperature),
        "source_checkpoint": source,
        "fer_core_version": __version__,
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.doc_string = "fer_core", meta["input_contract"]
    onnx.checker.check_model(proto)
    write_atomic(out, lambda f: f.write(proto.SerializeToString()), mode=0o644)  # a kill leaves no half file
    return out


def onnx_class_names(path: str | Path) -> list[str]:
    """The class names an exported file's metadata stores, in the order of its probabilities."""
    meta = {p.key: p.value for p in _need("onnx").load(str(path)).metadata_props}
    return json.loads(meta.get("class_names", "[]"))


def _images_per_s(run, batch: np.ndarray, min_seconds: float = 2.0, min_reps: int = 3) -> float:
    run(batch)  # warm-up: first calls allocate and (ORT) plan memory
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < min_seconds:
        run(batch)
        reps += 1
    return reps * len(batch) / (time.perf_counter() - t0)


def _test_images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Varied uint8 images: dark to bright, flat to noisy, with a gradient.

    Uniform noise alone is a poor test: every such image looks alike to the network, the outputs barely
    differ, and two runtimes would agree even if one ignored its input.
    """
    size = shape[0]
    level = np.linspace(20, 235, n)[:, None, None]
    ramp = np.linspace(-60, 60, size)[None, None, :] * np.resize([1.0, -1.0, 0.3], n)[:, None, None]
    x = np.broadcast_to(level + ramp, (n, size, size))
    if len(shape) == 3:  # RGB: a different tint per image
        x = (
            x[..., None]
            * np.resize([[1.0, 0.8, 0.6], [0.6, 1.0, 0.8], [0.8, 0.6, 1.0]], (n, 3))[:, None, None, :]
        )
    contrast = np.resize([0.0, 0.15, 0.5, 1.0], n).reshape((n,) + (1,) * len(shape))
    return (x + contrast * rng.normal(0, 80, (n,) + shape)).clip(0, 255).astype(np.uint8)


def _check_finite_outputs(onnx_path, *outputs: np.ndarray) -> None:
    """A NaN difference compares false with any tolerance, so a check that only compared would pass a model
    whose every output is NaN: every probability must be finite first."""
    bad = [
        name
        for name, o in zip(("onnxruntime", "PyTorch", "PyTorch eager"), outputs)
        if not np.isfinite(o).all()
    ]
    if bad:
        raise FerError(
            f"{onnx_path}: {' and '.join(bad)} gave NaN or infinite probabilities, so the difference is not "
            "finite; the model is unusable: export it again from a checkpoint that evaluates correctly"
        )


def check_onnx(
    onnx_path: str | Path,
    checkpoint: str | Path,
    batch_size: int = 8,
    bench_batch: int = 64,
    bench_seconds: float = 2.0,
    seed: int = 0,
    images: np.ndarray | None = None,
) -> dict:
    """Run the ONNX file (onnxruntime, CPU) and the checkpoint (PyTorch, CPU) on the same uint8 batch.

    Args:
        onnx_path: file written by ``export_onnx``.
        checkpoint: the checkpoint it came from.
        batch_size: images compared.
        bench_batch: batch size for the throughput figures (0: skip timing).
        bench_seconds: time spent measuring each runtime.
        seed: seed of the generated test images.
        images: uint8 batch to compare on instead (N×S×S or N×S×S×3); default: generated varied images.

    Returns:
        {"max_abs_diff" (ONNX vs the wrapper), "max_abs_diff_eager" (ONNX vs model(Preprocess(x))),
        "prob_range" (largest spread of one class's probability across the images: near 0 means the
        comparison proves little), "temperature" (the checkpoint's, inside both), "batch", "threads", "onnx_images_per_s", "torch_images_per_s",
        "bench_batch", "class_names"}.

    Raises:
        FerError: a runtime gave non-finite probabilities (the difference would not be finite), or the
            ONNX file's class names differ from the checkpoint's.
    """
    ort = _need("onnxruntime")
    runtime = resolve_runtime("cpu", channels_last="off")
    model, pre, classes, state = load_model(checkpoint, runtime)
    temperature = temperature_of(state, checkpoint)
    wrapped = PreprocessedModel(model, pre, temperature).eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = runtime.threads  # the same cores PyTorch uses, so the figures compare
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    stored = session.get_modelmeta().custom_metadata_map
    if json.loads(stored.get("class_names", "[]")) != list(classes):
        raise FerError(
            f"{onnx_path}: its class names {stored.get('class_names')} differ from {checkpoint}'s; export it again"
        )
    shape = (pre.img_size, pre.img_size) + (() if pre.grayscale else (3,))
    rng = np.random.default_rng(seed)

    def run_ort(x):
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def run_torch(x):
        with torch.inference_mode():
            return wrapped(torch.from_numpy(x)).numpy()

    batch = _test_images(rng, batch_size, shape) if images is None else np.asarray(images, dtype=np.uint8)
    p_ort, p_torch = run_ort(batch), run_torch(batch)
    # The eager Preprocess path (as in training/evaluation) must give the same numbers as the wrapper.
    with torch.inference_mode():
        p_eager = tempered_softmax(model(pre(torch.from_numpy(batch))), temperature).numpy()
    _check_finite_outputs(onnx_path, p_ort, p_torch, p_eager)
    out = {
        "max_abs_diff": float(np.abs(p_ort - p_torch).max()),
        "max_abs_diff_eager": float(np.abs(p_ort - p_eager).max()),
        "prob_range": float(np.ptp(p_torch, axis=0).max()),
        "temperature": temperature,
        "batch": batch_size,
        "threads": runtime.threads,
        "class_names": classes,
        "onnx_images_per_s": None,
        "torch_images_per_s": None,
        "bench_batch": bench_batch,
    }
    if bench_batch:
        big = rng.integers(0, 256, (bench_batch,) + shape, dtype=np.uint8)
        out["onnx_images_per_s"] = _images_per_s(run_ort, big, bench_seconds)
        out["torch_images_per_s"] = _images_per_s(run_torch, big, bench_seconds)
    return out


def _check_arguments(args, out: Path) -> None:
    """One-line errors for arguments that would otherwise fail deep inside torch or onnxruntime."""
    if args.hub is not None:
        from .hub import check_hub_folder

        check_hub_folder(args.hub, args.checkpoint, args.overwrite)
    if args.opset not in OPSETS:
        raise FerError(
            f"--opset = {args.opset}; this torch exports opsets {OPSETS[0]} to {OPSETS[-1]}: pass one of them"
        )
    if args.batch_size < 1:
        raise FerError(f"--batch-size = {args.batch_size}; the --check timing batch must be at least 1")
    if out.is_dir() or (args.onnx or "").endswith(("/", "\\")):
        raise FerError(
            f"--onnx {args.onnx or out}: is a folder; give the file to write, e.g. --onnx {out / 'model.onnx'}"
        )
    check_output(out, what="--onnx", inputs=[args.checkpoint], overwrite=args.overwrite)
    given = [
        f"--{k}" for k in ("quantization", "calibration", "data", "threads") if getattr(args, k) is not None
    ]
    if given and args.int8 is None:
        raise FerError(f"{' and '.join(given)}: only used with --int8; add --int8 or leave them out")
    if args.int8 is not None:
        from .int8 import int8_path

        int8 = Path(args.int8) if args.int8 else int8_path(out)
        if int8.resolve() == out.resolve():
            raise FerError(f"--int8 {int8}: is the FP32 file --onnx writes; give the INT8 file another name")
        check_output(int8, what="--int8", inputs=[args.checkpoint], overwrite=args.overwrite)
    if args.threads is not None and args.threads < 1:
        raise FerError(f"--threads = {args.threads}; give at least 1, or leave it out for the CPUs available")


def _int8(args, out: Path, calibration: tuple) -> dict:
    """``--int8``: quantize the file just written, print where and how, then the FP32 against INT8 report."""
    from .int8 import format_int8_report, int8_path, int8_report, quantize

    int8 = Path(args.int8) if args.int8 else int8_path(out)
    method = args.quantization
    quantize(out, int8, method, *calibration)
    print(f"wrote {int8} ({int8.stat().st_size / 1e6:.1f} MB, INT8 {method})")
    r = int8_report(args.checkpoint, out, int8, data=args.data, latency={"threads": args.threads})
    print(format_int8_report(r))
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fer_core.apps.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
    )
    p.add_argument("checkpoint", help="best.pt / last.pt written by fer_core")
    p.add_argument("--onnx", help="ONNX file to write (default: the checkpoint's path with .onnx)")
    p.add_argument(
        "--opset", type=int, default=17, help=f"ONNX opset, {OPSETS[0]} to {OPSETS[-1]} (default 17)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="compare onnxruntime with PyTorch on a batch and time both on CPU",
    )
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the --check timing (default 64)")
    p.add_argument("--overwrite", action="store_true", help="let --onnx/--hub replace a checkpoint or files")
    p.add_argument(
        "--int8",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write an INT8 model (default path: --onnx's with .int8.onnx) and print FP32 against INT8",
    )
    p.add_argument(
        "--quantization",
        choices=["static", "dynamic"],
        default=None,
        help="how --int8 quantizes (default static: see fer_core.apps.int8)",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="dataset folder whose train split gives static quantization its images (default: the checkpoint's data)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="dataset folder the --int8 report scores, val and test (default: the checkpoint's data, split as then)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="onnxruntime threads of the --int8 timings (default: the CPUs this process may use)",
    )
    p.add_argument("--hub", metavar="DIR", help="write a Hugging Face Hub folder there (no upload)")
    args = p.parse_args(argv)
    hub_onnx = Path(args.hub) / "model.onnx" if args.hub else None
    out = Path(args.onnx) if args.onnx else hub_onnx or Path(args.checkpoint).with_suffix(".onnx")
    try:
        _check_arguments(args, out)
        calibration = (None, "")
        if args.int8 is not None:  # the data both need is found before anything is written
            from ..checkpoint import load_checkpoint
            from .int8 import DEFAULT_METHOD, calibration_images, report_data

            report_data(load_checkpoint(args.checkpoint), args.data)
            args.quantization = args.quantization or DEFAULT_METHOD
            if args.quantization == "static":
                calibration = calibration_images(args.checkpoint, args.calibration)
        export_onnx(args.checkpoint, out, args.opset)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        classes = onnx_class_names(out)
        print(
            f"its {len(classes)} probabilities are, in order: {', '.join(classes)} (metadata 'class_names')"
        )
        if args.check:
            r = check_onnx(out, args.checkpoint, bench_batch=args.batch_size)
            print(
                f"onnxruntime vs PyTorch on {r['batch']} images: max abs diff of probabilities {r['max_abs_diff']:.2e} "
                f"(temperature {r['temperature']:.4g} in both)"
            )
            print(
                f"CPU inference, batch {r['bench_batch']}, {r['threads']} threads: onnxruntime {r['onnx_images_per_s']:.0f} images/s, "
                f"PyTorch {r['torch_images_per_s']:.0f} images/s"
            )
        report = _int8(args, out, calibration) if args.int8 is not None else None
        if args.hub is not None:  # its folder was checked above, before model.onnx was written there
            from .hub import describe_hub_folder, hub_card, write_hub_folder

            card = hub_card(args.checkpoint, **({"int8": report} if report else {}))
            write_hub_folder(args.checkpoint, args.hub, card=card, onnx=out, overwrite=True)
            print(describe_hub_folder(args.hub))
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the ONNX file cannot be written there (permissions, a full disk, ...)
        print(
            f"error: {out}: cannot write the ONNX file ({e.strerror or e}); pass --onnx with a writable path",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
