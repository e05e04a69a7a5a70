"""Training-throughput benchmark: the seed-style loop vs fer_core's path vs compute alone, in one process.

    python -m fer_core.tools.bench [--data DIR] [--device cpu|cuda] [--img-size 48] [--batch-size 64] [--json]
    python -m fer_core.tools.bench --parity        # same-seed val accuracy of the plain and the fast path

Three measurements on the same data and model (efficientnet_b0, 7 classes), alternated over ``--rounds``
so that a slow spell of a shared machine hits all three alike; each figure is the median over rounds:

(a) seed: the seed recipe as public FER notebooks write it: torchvision ImageFolder + PIL decoding every
    epoch, grayscale->3 channels, flip + ±20° rotation, ImageNet normalisation, Adam 1e-3, fp32,
    NCHW, a DataLoader with 2 workers (the notebooks' value).
(b) fer_core: the path a sweep trial runs: ``Trainer`` built from a TrainConfig with the defaults
    (decoded uint8 cache, albumentations at strength 0.5, the runtime's precision / memory format /
    workers / compile), timed through ``Trainer.train_pass``, the call every epoch makes.
(c) compute: forward + backward of the plain eager fp32 NCHW model on a batch already on the device
    (no data, no optimizer step): what the hardware does with the unoptimised model.

Images per second exclude each path's warm-up steps (worker start, cuDNN autotuning, compilation); the
warm-up seconds are printed beside them, and fer_core's one-off decode of the split into its cache is
printed separately. Peak memory: the GPU's max allocated bytes on CUDA; on CPU the peak resident set of
this process and its DataLoader workers, sampled every 20 ms; fer_core's includes building its Trainer
(in the first round also that decode).

Without ``--data`` it measures FER2013 beside the checkout (``../shared/data/fer2013``) when that is there,
else the built-in demo faces; the first line printed says which.

This module alternates the measurements over rounds, reduces them to medians and ratios, runs the parity
check and is the CLI; the measurements themselves (what is timed, and the memory sampler) are in
``bench_timing``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..apps.demo import ensure_demo_dataset
from ..config import make_config, parse_overrides
from ..errors import FerError
from ..runtime import available_cpus, resolve_runtime
from ..train import train
from .bench_timing import SEED_WORKERS, bench_compute, bench_fer_core, bench_seed

CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding fer_core/


def default_data(checkout: Path = CHECKOUT) -> tuple[Path, str]:
    """The data to measure without --data, and a phrase saying which it is.

    Args:
        checkout: the project checkout; FER2013 is looked for in ``../shared/data/fer2013`` beside it.

    Returns:
        (dataset root, description): that FER2013 when it has a train/ folder, else the built-in demo faces.
    """
    fer = checkout.parent / "shared" / "data" / "fer2013"
    if (fer / "train").is_dir():
        return fer, "FER2013 beside the checkout (../shared/data/fer2013)"
    return ensure_demo_dataset(), f"the built-in demo faces: no {fer}; pass --data DIR to measure real data"


def run_benchmark(
    data: Path,
    device: str = "auto",
    img_size: int = 48,
    batch_size: int = 64,
    steps: int = 15,
    warmup: int = 3,
    rounds: int = 3,
    overrides: dict | None = None,
    log=print,
) -> dict:
    """Measure (a), (b) and (c), alternating them over ``rounds``; returns medians, ratios and settings.

    Args:
        data: dataset root with train/ (and val/, which fer_core's Trainer checks).
        device: auto, cpu or cuda[:N].
        img_size, batch_size: the shape every path trains at.
        steps, warmup: timed and untimed steps per path per round.
        rounds: repetitions; each figure is the median.
        overrides: TrainConfig keys for the fer_core path.
        log: progress printer.
    """
    rt = resolve_runtime(device)
    dev = rt.device
    per = {"seed": [], "fer_core": [], "compute": []}
    for r in range(rounds):
        # The fer_core path goes first in round 1, so its one-off cache decode is not charged to (a).
        b = bench_fer_core(
            data,
            device=dev,
            img_size=img_size,
            batch_size=batch_size,
            warmup=warmup,
            steps=steps,
            overrides=overrides,
        )
        log(f"round {r + 1}/{rounds}: (b) fer_core {b['images_per_s']:.1f} img/s")
        a = bench_seed(data, device=dev, img_size=img_size, batch_size=batch_size, warmup=warmup, steps=steps)
        log(f"round {r + 1}/{rounds}: (a) seed     {a['images_per_s']:.1f} img/s")
        c = bench_compute(dev, img_size=img_size, batch_size=batch_size, warmup=warmup, steps=steps)
        log(f"round {r + 1}/{rounds}: (c) compute  {c['images_per_s']:.1f} img/s")
        for k, v in (("seed", a), ("fer_core", b), ("compute", c)):
            per[k].append(v)
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in per.items()}
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {
        "images_per_s": med,
        "ratio_b_over_a": med["fer_core"] / med["seed"],
        "ratio_b_over_c": med["fer_core"] / med["compute"],
        "per_round": {k: [round(x["images_per_s"], 1) for x in v] for k, v in per.items()},
        # Ratios within each round, where the three ran back to back on the same machine state.
        "ratios_per_round": {
            "b/a": [
                round(b["images_per_s"] / a["images_per_s"], 2) for a, b in zip(per["seed"], per["fer_core"])
            ],
            "b/c": [
                round(b["images_per_s"] / c["images_per_s"], 2)
                for b, c in zip(per["fer_core"], per["compute"])
            ],
        },
        "warmup_s": {k: round(statistics.median(x["warmup_s"] for x in v), 2) for k, v in per.items()},
        "fer_core_setup_s_first_round": round(per["fer_core"][0]["setup_s"], 2),
        "peak_memory_mib": {
            k: round(max(x["peak_memory_bytes"] for x in v) / 2**20, 1) for k, v in per.items()
        },
        "fer2013_epoch_s_at_b": 28709 / med["fer_core"],
        "settings": {
            "data": str(data),
            "train_images": per["fer_core"][0]["train_images"],
            "device": str(dev),
            "gpu": gpu,
            "cpus": available_cpus(),
            "torch_threads": torch.get_num_threads(),
            "img_size": img_size,
            "batch_size": batch_size,
            "steps": steps,
            "warmup_steps": warmup,
            "rounds": rounds,
            "seed_loop": f"ImageFolder+PIL, flip+rot20, Adam 1e-3, fp32 NCHW, {SEED_WORKERS} workers",
            "fer_core_runtime": per["fer_core"][0]["runtime"],
            "fer_core_overrides": overrides or {},
            "compute": "efficientnet_b0 eager fp32 NCHW forward+backward, batch on device",
            "torch": torch.__version__,
        },
    }


def run_parity(
    data: Path,
    device: str = "auto",
    epochs: int = 3,
    steps_per_epoch: int = 100,
    max_train_samples: int = 7000,
    seeds=(0, 1),
    img_size: int = 48,
    batch_size: int = 64,
    log=print,
) -> dict:
    """Train the plain path (fp32 NCHW, no workers, no compile) and the fast default path with the same
    seeds on a real-data subset; return each run's final val metrics, so the difference between paths
    can be read against the difference between seeds.

    Args:
        data: dataset root.
        device: config device string.
        epochs, steps_per_epoch: training length (the same for both).
        max_train_samples: stratified train subset.
        seeds: seeds to run on each path.
        img_size, batch_size: the shape both paths train at.
        log: progress printer.
    """
    plain = {"channels_last": "off", "compile": "off", "precision": "fp32", "num_workers": 0}
    out = {}
    for name, over in (("plain", plain), ("fast", {})):
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                res = train(
                    make_config(
                        {
                            "data": str(data),
                            "out": tmp,
                            "epochs": epochs,
                            "steps_per_epoch": steps_per_epoch,
                            "max_train_samples": max_train_samples,
                            "seed": seed,
                            "device": device,
                            "img_size": img_size,
                            "batch_size": batch_size,
                            "progress": False,
                            "lr": 3e-3,
                            "warmup_epochs": 0.3,
                            **over,
                        },
                        source="bench",
                    )
                )
            last = res["history"][-1]
            out[f"{name}_seed{seed}"] = {
                "val_accuracy": last["val_accuracy"],
                "val_macro_f1": last["val_macro_f1"],
                "train_images_per_s": statistics.median(r["images_per_s"] for r in res["history"]),
                "wall_s": time.perf_counter() - t0,
            }
            log(
                f"parity {name} seed {seed}: val_accuracy {last['val_accuracy']:.4f} macro_f1 {last['val_macro_f1']:.4f}"
            )
    return out


def _print_report(res: dict) -> None:
    s, ips, mem = res["settings"], res["images_per_s"], res["peak_memory_mib"]
    print(f"\nsettings: {json.dumps(s, indent=1)}")
    print(f"{'path':<12}{'img/s':>10}{'warm-up s':>11}{'peak MiB':>10}  per round")
    labels = {"seed": "(a) seed", "fer_core": "(b) fer_core", "compute": "(c) compute"}
    for k in ("seed", "fer_core", "compute"):
        print(
            f"{labels[k]:<12}{ips[k]:>10.1f}{res['warmup_s'][k]:>11.2f}{mem[k]:>10.0f}  {res['per_round'][k]}"
        )
    print(
        f"b/a = {res['ratio_b_over_a']:.2f}   b/c = {res['ratio_b_over_c']:.2f}   "
        f"(per round: b/a {res['ratios_per_round']['b/a']}, b/c {res['ratios_per_round']['b/c']})\n"
        f"(fer_core's one-off setup incl. cache: {res['fer_core_setup_s_first_round']:.1f} s; "
        f"a full 28,709-image FER2013 epoch at (b): {res['fer2013_epoch_s_at_b']:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fer_core.tools.bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        help="dataset root with train/ and val/ (default: ../shared/data/fer2013 when present, else the demo data)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--img-size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=15, help="timed steps per path per round (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument(
        "--rounds", type=int, default=3, help="alternating repetitions; medians are reported (default 3)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--parity", action="store_true", help="instead: same-seed val accuracy of the plain and the fast path"
    )
    p.add_argument("--parity-epochs", type=int, default=3)
    p.add_argument("--parity-steps", type=int, default=100, help="steps per epoch in --parity (default 100)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="TrainConfig keys for the fer_core path, e.g. channels_last=off",
    )
    args = p.parse_args(argv)
    try:
        for flag, value, low in (
            ("--steps", args.steps, 1),
            ("--warmup", args.warmup, 0),
            ("--rounds", args.rounds, 1),
            ("--img-size", args.img_size, 16),
            ("--batch-size", args.batch_size, 1),
            ("--parity-epochs", args.parity_epochs, 1),
            ("--parity-steps", args.parity_steps, 1),
        ):
            if value < low:
                raise FerError(f"{flag} = {value}; it must be at least {low}")
        overrides = parse_overrides(args.overrides)
        make_config(overrides, source="command line")  # one-line error for a bad key before any work
        if args.parity and overrides:
            raise FerError(
                "--parity compares fixed plain and fast settings; drop the key=value overrides "
                f"({', '.join(overrides)}) or run the benchmark without --parity"
            )
        data, source = (Path(args.data), "given with --data") if args.data else default_data()
        if not (data / "train").is_dir():
            raise FerError(
                f"{data}: no train/ folder; pass --data pointing at a dataset root with train/ and val/"
            )
        log = (
            (lambda m: print(m, file=sys.stderr, flush=True))
            if args.json
            else (lambda m: print(m, flush=True))
        )
        log(f"data: {data} ({source})")
        if args.parity:
            res = run_parity(
                data,
                device=args.device,
                epochs=args.parity_epochs,
                steps_per_epoch=args.parity_steps,
                img_size=args.img_size,
                batch_size=args.batch_size,
                log=log,
            )
        else:
            res = run_benchmark(
                data,
                device=args.device,
                img_size=args.img_size,
                batch_size=args.batch_size,
                steps=args.steps,
                warmup=args.warmup,
                rounds=args.rounds,
                overrides=overrides,
                log=log,
            )
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json or args.parity:
        print(json.dumps(res, indent=1, default=float))
    else:
        _print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
