"""Evaluate a checkpoint on any split (and every split a dataset has) and save the metrics as JSON.

python -m fer_core.evaluate CHECKPOINT --data DIR --split test [--out metrics.json] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import engine
from .checkpoint import load_model, temperature_of
from .dataset import iter_batches
from .decode_cache import load_split
from .engine import probs_metrics, view_probs
from .errors import CheckpointError, FerError
from .outputs import check_output
from .runtime import Runtime, resolve_runtime


def ensemble_metrics(scores: list[dict], split: str, classes: list[str]) -> dict:
    """Metrics of an ensemble: the average of its members' probabilities, plain and with flip TTA.

    Args:
        scores: per member, the output of ``evaluate_checkpoint(..., return_probs=True, tta_flip=True)``.
        split: split name (the key prefix).
        classes: class names in label order.
    """
    labels = scores[0]["labels"]
    out = {}
    for key, prefix in (("probs", f"{split}_"), ("probs_tta", f"{split}_tta_")):
        avg = np.mean([s[key] for s in scores], axis=0)
        m = probs_metrics(avg, labels, classes, prefix)
        out.update(
            {k: m[k] for k in (prefix + "accuracy", prefix + "balanced_accuracy", prefix + "macro_f1")}
        )
    return out


def _check_same_classes(path, classes: list[str], split_dir: Path) -> None:
    """A checkpoint of another class set is the mismatch to report, not the data's folders: the layout check
    alone would tell the user to rename or remove their (correct) class folders."""
    if not split_dir.is_dir():
        return  # load_split names the missing folder
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if found != sorted(classes):
        raise CheckpointError(
            f"{path}: trained on classes {', '.join(classes)} but {split_dir} holds {', '.join(found) or 'no class folders'}; "
            "evaluate it on data with its classes, or pass a checkpoint trained on these"
        )


def evaluate_checkpoint(
    path,
    data: str,
    split: str = "val",
    batch_size: int = 0,
    runtime: Runtime | None = None,
    cache_dir: str | None = None,
    return_probs: bool = False,
    tta_flip: bool = False,
) -> dict:
    """Evaluate a checkpoint on ``data/split``, with the checkpoint's own preprocessing and temperature.

    Args:
        path: checkpoint file.
        data: dataset root.
        split: split folder (val, test, train).
        batch_size: evaluation batch size (0 = the runtime's: 1024 on CUDA, 256 on CPU).
        runtime: device settings (default: auto).
        cache_dir: decoded-image cache folder (None: default).
        return_probs: include "probs"/"labels"/"logits" arrays (and "probs_tta"/"logits_flip").
        tta_flip: add horizontal-flip TTA metrics under ``split_tta_``.

    Returns:
        Metrics with keys prefixed by ``split_`` plus "checkpoint", "split", "epoch".
    """
    runtime = runtime or resolve_runtime()
    model, pre, classes, state = load_model(path, runtime)
    _check_same_classes(path, classes, Path(data) / split)
    split_data = load_split(
        root=data,
        split=split,
        img_size=pre.img_size,
        grayscale=pre.grayscale,
        cache_dir=cache_dir,
        classes=classes,
    )
    batches = iter_batches(
        split_data, np.arange(len(split_data)), batch_size=batch_size or runtime.eval_batch_size
    )
    out = engine.evaluate(
        model=model,
        batches=batches,
        preprocess=pre,
        runtime=runtime,
        class_names=classes,
        prefix=f"{split}_",
        return_probs=return_probs,
        tta_flip=tta_flip,
        temperature=temperature_of(state, path),
    )
    out.update({"checkpoint": str(path), "split": split, "epoch": int(state["epoch"])})
    return out


def splits(data: str) -> list[str]:
    """The splits a dataset is scored on: val, and test when ``data`` has one."""
    return ["val"] + (["test"] if (Path(data) / "test").is_dir() else [])


def score(ckpt: Path, data: str, cache_dir: str | None, runtime: Runtime) -> dict[str, dict]:
    """A checkpoint's metrics per split, plain and with flip TTA, with the probability arrays."""
    kwargs = dict(runtime=runtime, cache_dir=cache_dir, return_probs=True, tta_flip=True)
    return {sp: evaluate_checkpoint(ckpt, data, sp, **kwargs) for sp in splits(data)}


def at_temperature(scores: dict, temperature: float) -> dict:
    """A split's scores (``evaluate_checkpoint`` with ``return_probs``) as its checkpoint gives them with
    ``temperature`` stored: probabilities and losses from the raw logits, without a second pass over the
    images (no accuracy figure depends on the temperature)."""
    split, labels = scores["split"], torch.from_numpy(scores["labels"]).long()
    flipped = torch.from_numpy(scores["logits_flip"]) if "logits_flip" in scores else None
    logits = torch.from_numpy(scores["logits"])
    probs, tta = view_probs(logits, flipped, temperature)
    out = dict(scores, probs=probs.numpy())
    out[f"{split}_loss"] = float(torch.nn.functional.cross_entropy(logits / temperature, labels))
    if tta is not None:
        out[f"{split}_tta_loss"] = float(torch.nn.functional.nll_loss(tta.clamp_min(1e-12).log(), labels))
        out["probs_tta"] = tta.numpy()
    return out


def format_metrics(m: dict, split: str) -> str:
    """A readable table of a split's metrics, one row per class (its column as wide as the longest name)."""
    w = max([10, *(len(c) + 1 for c in m[f"{split}_support"])])
    lines = [
        f"{split}: accuracy {m[f'{split}_accuracy']:.4f}  balanced {m[f'{split}_balanced_accuracy']:.4f}  "
        f"macro-F1 {m[f'{split}_macro_f1']:.4f}  loss {m[f'{split}_loss']:.4f}  ({m[f'{split}_samples']} images)",
        f"{'class':<{w}}{'precision':>10}{'recall':>8}{'f1':>8}{'n':>7}",
    ]
    for c in m[f"{split}_support"]:
        lines.append(
            f"{c:<{w}}{m[f'{split}_per_class_precision'][c]:>10.3f}{m[f'{split}_per_class_recall'][c]:>8.3f}"
            f"{m[f'{split}_per_class_f1'][c]:>8.3f}{m[f'{split}_support'][c]:>7d}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fer_core.evaluate",
        description="Evaluate a fer_core checkpoint on a split and save metrics JSON.",
    )
    p.add_argument("checkpoint", help="best.pt / last.pt written by fer_core")
    p.add_argument("--data", required=True, help="dataset root holding the split folder")
    p.add_argument("--split", default="val", help="split folder to evaluate (val, test, ...); default val")
    p.add_argument("--out", help="metrics JSON path (default: <checkpoint folder>/<split>_metrics.json)")
    p.add_argument(
        "--batch-size", type=int, default=0, help="evaluation batch size (default: 1024 on CUDA, 256 on CPU)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    p.add_argument("--overwrite", action="store_true", help="let --out replace a checkpoint or a run's file")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"{args.split}_metrics.json"
    try:
        if args.batch_size < 0:
            raise FerError(
                f"--batch-size = {args.batch_size}; give a positive size, or 0 for the device's default"
            )
        if args.out and Path(args.out).is_dir():  # found now, not after the whole evaluation
            raise FerError(
                f"--out {args.out}: is a folder; give the metrics file to write, e.g. {Path(args.out) / 'metrics.json'}"
            )
        check_output(out, inputs=[args.checkpoint], datasets=[args.data], overwrite=args.overwrite)
        m = evaluate_checkpoint(
            args.checkpoint,
            data=args.data,
            split=args.split,
            batch_size=args.batch_size,
            runtime=resolve_runtime(args.device),
            tta_flip=args.tta,
        )
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        out.write_text(json.dumps(m, indent=1))
    except OSError as e:
        print(format_metrics(m, args.split))  # the figures are not lost with the file
        print(
            f"error: {out}: cannot write the metrics ({e.strerror or e}); pass --out with a writable path",
            file=sys.stderr,
        )
        return 2
    print(format_metrics(m, args.split))
    if args.tta:
        print(format_metrics(m, f"{args.split}_tta"))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
