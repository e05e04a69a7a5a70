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
from .checkpoint import load_checkpoint, load_model, temperature_of
from .config import make_config, parse_overrides
from .dataset import iter_batches
from .datasets import DATA_KEYS, Dataset, absolute, data_roots, digest, resolve, resolve_for
from .decode_cache import load_dataset
from .engine import PROB_KEYS, probs_metrics, view_probs
from .errors import DataError, FerError
from .metrics import dataset_metrics
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


def checkpoint_data(state: dict, data=None, mapping=None) -> tuple[Dataset, dict[str, int]]:
    """The data a checkpoint is scored on, labelled with its classes: its own training data as it was
    split then (``data`` None or the same), else ``data`` mapped onto its classes (``datasets.resolve_for``:
    ``mapping``, the folder names it was trained from, the names); with the folders left out, and their
    image counts.

    Raises:
        DataError: the training data's files changed since (a split made then cannot be made again), or no
            folder of ``data`` is one of its classes.
    """
    config, recorded = state["config"], state.get("data") or {}
    if data is None or (not mapping and absolute(data) == absolute(config["data"])):
        dataset = resolve(make_config({k: config[k] for k in DATA_KEYS if k in config}))
        made = [str(s.root) for s in dataset.sources if s.split is not None]
        if dataset.classes == tuple(state["class_names"]):
            if made and recorded.get("digest") and digest(dataset.record()) != recorded["digest"]:
                raise DataError(
                    f"{', '.join(made)}: its files changed since the checkpoint was trained, so the split made "
                    "then cannot be made again; evaluate on a folder with its own val/ or test/"
                )
            return dataset, {}
        if data is None:
            raise DataError(
                f"{config['data']}: its classes ({', '.join(dataset.classes)}) are no longer the checkpoint's "
                f"({', '.join(state['class_names'])}); pass --data"
            )
    return resolve_for(
        list(state["class_names"]), recorded.get("aliases", {}), data, mapping, recorded.get("sources", ())
    )


def evaluate_checkpoint(
    path,
    data=None,
    split: str = "val",
    batch_size: int = 0,
    runtime: Runtime | None = None,
    cache_dir: str | None = None,
    return_probs: bool = False,
    tta_flip: bool = False,
    mapping: dict | None = None,
) -> dict:
    """Evaluate a checkpoint on a split of ``data``, with the checkpoint's own preprocessing and temperature.

    Args:
        path: checkpoint file.
        data: a dataset folder (or a list; ``checkpoint_data``), None: the one it was trained on.
        split: val, test or train.
        batch_size: evaluation batch size (0 = the runtime's: 1024 on CUDA, 256 on CPU).
        runtime: device settings (default: auto).
        cache_dir: decoded-image cache folder (None: default).
        return_probs: include "probs"/"labels"/"logits" arrays (and "probs_tta"/"logits_flip").
        tta_flip: add horizontal-flip TTA metrics under ``split_tta_``.
        mapping: class -> folders of ``data`` (beside the names and the folders it was trained from).

    Returns:
        Metrics with keys prefixed by ``split_`` (and ``NAME/split_`` per dataset, when several), plus
        "checkpoint", "split", "epoch", "folders" (each folder's class) and "left_out" (folder -> images).
    """
    runtime = runtime or resolve_runtime()
    model, pre, classes, state = load_model(path, runtime)
    dataset, left_out = checkpoint_data(state, data, mapping)
    if split not in dataset.splits:
        roots = ", ".join(str(s.root) for s in dataset.sources)
        raise DataError(
            f"{roots}: has no {split} split (it has {', '.join(dataset.splits)}); pick one of those"
        )
    split_data = load_dataset(dataset, split, pre.img_size, pre.grayscale, cache_dir=cache_dir)
    batches = iter_batches(
        split_data, np.arange(len(split_data)), batch_size=batch_size or runtime.eval_batch_size
    )
    several = len(dataset.files[split]) > 1
    out = engine.evaluate(
        model=model,
        batches=batches,
        preprocess=pre,
        runtime=runtime,
        class_names=classes,
        prefix=f"{split}_",
        return_probs=return_probs or several,
        tta_flip=tta_flip,
        temperature=temperature_of(state, path),
    )
    if several:
        names = [src.name for src in dataset.sources]
        out |= dataset_metrics(
            out["labels"], out["probs"].argmax(1), split_data.source, names, classes, f"{split}_"
        )
        if not return_probs:
            for k in PROB_KEYS:
                out.pop(k, None)
    out.update(
        {
            "checkpoint": str(path),
            "split": split,
            "epoch": int(state["epoch"]),
            "folders": {s.name: s.folders for s in dataset.sources},
            "left_out": left_out,
        }
    )
    return out


def splits(state: dict, data=None) -> list[str]:
    """The splits a dataset is scored on: val and test, those it has (a folder the model never saw and that
    has no split of its own is all test)."""
    return [s for s in ("val", "test") if s in checkpoint_data(state, data)[0].splits]


def score(ckpt: Path, data, cache_dir: str | None, runtime: Runtime) -> dict[str, dict]:
    """A checkpoint's metrics per split, plain and with flip TTA, with the probability arrays."""
    kwargs = dict(runtime=runtime, cache_dir=cache_dir, return_probs=True, tta_flip=True)
    state = load_checkpoint(ckpt)
    return {sp: evaluate_checkpoint(ckpt, data, sp, **kwargs) for sp in splits(state, data)}


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
    p.add_argument(
        "--data",
        help="dataset folder to score it on (default: the data it was trained on, split as then); its folders "
        "map onto the checkpoint's classes by name (Anger is angry) and by the folder names it was trained from",
    )
    p.add_argument(
        "--classes",
        help="YAML mapping of the checkpoint's classes onto --data's folders, e.g. \"{negative: [anger, sadness]}\"",
    )
    p.add_argument(
        "--split",
        default="val",
        help="val, test or train (a folder it never saw, without splits: test); default val",
    )
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
        mapping = (
            parse_overrides([f"classes={args.classes}"], "--classes")["classes"] if args.classes else None
        )
        if mapping is not None and not isinstance(mapping, dict):
            raise FerError(f'--classes {args.classes}: give a YAML mapping, e.g. "{{angry: [anger]}}"')
        check_output(
            out,
            inputs=[args.checkpoint],
            datasets=data_roots(args.data) if args.data else [],
            overwrite=args.overwrite,
        )
        m = evaluate_checkpoint(
            args.checkpoint,
            data=args.data,
            split=args.split,
            batch_size=args.batch_size,
            runtime=resolve_runtime(args.device),
            tta_flip=args.tta,
            mapping=mapping,
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
    if m["left_out"]:
        left = ", ".join(f"{f} ({n} images)" for f, n in m["left_out"].items())
        print(f"left out (no class of the checkpoint): {left}")
    for name, folders in m["folders"].items():
        print(f"{name}: " + ", ".join(f"{f} -> {c}" if f != c else f for f, c in folders.items()))
    print(format_metrics(m, args.split))
    if args.tta:
        print(format_metrics(m, f"{args.split}_tta"))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
