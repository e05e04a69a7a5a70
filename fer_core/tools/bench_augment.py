"""Augmentation throughput per core: the albumentations backend against the torch backend, alone.

    python -m fer_core.tools.bench_augment [--data DIR] [--strengths 0.5 1.0] [--batch-size 64] [--seconds 2]

Both backends run on one thread (torch's and OpenCV's pools sized to 1), on the same images, exactly as the
trainer serves them, with no model: albumentations through ``FerDataset`` (one reseed and one call per
image) and the DataLoader's collate with no workers, the torch backend through ``DeviceBatches`` on the CPU
(a gather and ``augment_torch`` per batch). Each figure is the median of ``--rounds`` timed passes of at
least ``--seconds``, the two backends alternated so that a slow spell of a shared machine hits both alike.

Without ``--data`` it uses FER2013's val split beside the checkout (``../shared/data/fer2013``) when that is
there, else the built-in demo faces at 48 px; the first line printed says which.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..apps.demo import ensure_demo_dataset
from ..augment import build_train_transform
from ..augment_torch import BatchAugment
from ..dataset import DeviceBatches, EpochSampler, FerDataset
from ..decode_cache import load_split
from ..runtime import limit_threads

FER2013 = Path(__file__).resolve().parents[3] / "shared" / "data" / "fer2013"


def _timed(passes, seconds: float) -> float:
    """Images per second of repeated passes (each returns its image count) over at least ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n == 0:
        n += passes()
    return n / elapsed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default="", help="dataset root (default: FER2013 beside the checkout, else demo)"
    )
    ap.add_argument("--split", default="val", help="split whose images are augmented (default val)")
    ap.add_argument("--img-size", type=int, default=48)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=2048, help="images per pass")
    ap.add_argument("--seconds", type=float, default=2.0, help="least time per timed pass")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    data = Path(args.data) if args.data else (FER2013 if (FER2013 / args.split).is_dir() else None)
    which = f"{data} ({args.split} split)" if data else "the built-in demo faces"
    root = data or ensure_demo_dataset()
    split = load_split(root=root, split=args.split, img_size=args.img_size, grayscale=True)
    n = min(args.images, len(split)) // args.batch_size * args.batch_size
    if n == 0:
        raise SystemExit(
            f"{root}: {len(split)} {args.split} images, fewer than one batch of {args.batch_size}"
        )
    limit_threads(1)
    print(
        f"data: {which}, {n} of {len(split)} images at {args.img_size} px; 1 thread; batch {args.batch_size}"
    )
    for s in args.strengths:
        rates = _rates(split, n, s, args.batch_size, args.seconds, args.rounds)
        alb, tor = (statistics.median(rates[k]) for k in ("albumentations", "torch"))
        print(
            f"strength {s:g}: albumentations {alb:,.0f} img/s, torch {tor:,.0f} img/s per core "
            f"(torch/albumentations {tor / alb:.2f}x; rounds: "
            + ", ".join(f"{a:,.0f}/{t:,.0f}" for a, t in zip(rates["albumentations"], rates["torch"]))
            + ")"
        )


def _rates(split, n: int, strength: float, batch_size: int, seconds: float, rounds: int) -> dict:
    """Images/s of each backend serving ``n`` images of ``split`` per pass, one figure per round."""
    idx, seed = np.arange(n), 0
    transform = build_train_transform(strength=strength, img_size=split.images.shape[1], seed=seed)
    sampler = EpochSampler(n, seed=seed)
    sources = {
        "albumentations": torch.utils.data.DataLoader(
            FerDataset(split, idx, transform=transform, seed=seed), batch_size=batch_size, sampler=sampler
        ),
        "torch": DeviceBatches(
            split, idx, sampler, batch_size, torch.device("cpu"), BatchAugment(strength, seed)
        ),
    }

    def epoch(source) -> int:
        sampler.set_epoch(sampler.epoch + 1)  # new parameters each pass, as in training
        return sum(len(x) for x, _ in source)

    rates: dict[str, list[float]] = {k: [] for k in sources}
    for _ in range(rounds):
        for name, source in sources.items():
            rates[name].append(_timed(lambda source=source: epoch(source), seconds))
    return rates


if __name__ == "__main__":
    main()
