"""Dataset audit, run before training: ``python -m fer_core.audit DATA [--json] [--img-size 48] [--out FILE]``.

Per split: counts, imbalance, original sizes (upright, as training reads them) and colour modes (file
headers), images far from the training size or shape, unreadable and blank images, and those over the
pixel limit (``data.MAX_PIXELS``: named with their sizes, never decoded). Across the data: exact
duplicates (pixel-identical decoded images) and near duplicates (perceptual hash), within and across
splits, with the groups whose labels disagree; ``duplicates.cross_split_duplicates`` gives the train
images that leak into val/test (``dedupe: cross_split``). Split mismatch: brightness, contrast and
sharpness of val/test against train, warned about when they differ more than augmentation can bridge (a
blurred or re-compressed split). Pixel work reads ``load_split``'s decode-once cache, so a second audit
decodes nothing; nothing under DATA is ever written.

This module assembles the findings (``audit_dataset``), words them (``summarize``) and is the CLI; the
pixel work it reports lives in ``duplicates`` (hashes, pairs, groups) and ``image_stats`` (per-image
statistics, the blank rule and the split-mismatch test), which training's dedupe uses without any of this.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .data import MAX_PIXELS, ImageWarning, SplitData, image_info, odd_sizes, skipped_reasons
from .datasets import Dataset, resolve
from .decode_cache import load_dataset
from .duplicates import PHASH_MAX_DISTANCE, PHASH_MIN_COSINE, exact_duplicate_groups, near_duplicate_groups
from .errors import FerError
from .image_stats import BLANK_STD, image_stats, split_mismatch
from .outputs import check_output

SPLITS = ("train", "val", "test")


def _group_report(
    groups: list[np.ndarray], split_of, labels, paths, classes, exact_ids, examples: int
) -> dict:
    spans = [len(set(split_of[g].tolist())) > 1 for g in groups]
    conflicts = [len(set(labels[g].tolist())) > 1 for g in groups]

    def tally(sel: list[int]) -> dict:
        return {
            "groups": len(sel),
            "images": int(sum(len(groups[k]) for k in sel)),
            "label_conflicts": sum(conflicts[k] for k in sel),
        }

    order = sorted(set(split_of.tolist()), key=SPLITS.index)
    within = {
        s: tally([k for k, g in enumerate(groups) if not spans[k] and split_of[g[0]] == s]) for s in order
    }
    # Examples: label conflicts across splits first (the costliest), then other conflicts, then cross-split.
    rank = sorted(range(len(groups)), key=lambda k: (-2 * conflicts[k] - spans[k], -len(groups[k])))
    member = lambda i: {"split": str(split_of[i]), "path": paths[i], "label": classes[labels[i]]}  # noqa: E731
    return {
        **tally(list(range(len(groups)))),
        "not_exact_groups": sum(len(set(exact_ids[g].tolist())) > 1 for g in groups),
        "largest_group": max((len(g) for g in groups), default=0),
        "cross_split": tally([k for k in range(len(groups)) if spans[k]]),
        "within_split": within,
        "examples": [
            {"size": len(groups[k]), "members": [member(i) for i in groups[k][:8]]} for k in rank[:examples]
        ],
    }


def _headers(root: Path, data: SplitData, img_size: int, examples: int) -> dict:
    sizes, modes, odd = Counter(), Counter(), []
    for rel, (w, h) in zip(data.paths, data.sizes):  # as a viewer shows them, as training decoded them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageWarning)  # said when the split was decoded
            mode = image_info(root / rel).mode  # header only: nothing decoded
        sizes[f"{w}x{h}"] += 1
        modes[mode] += 1
        if odd_sizes([rel], [(w, h)], img_size):  # the rule load_split warns with (data.odd_sizes)
            odd.append({"path": rel, "size": f"{w}x{h}"})
    return {
        "sizes": {"most_common": [[k, n] for k, n in sizes.most_common(5)], "distinct": len(sizes)},
        "modes": dict(modes.most_common()),
        "odd_size": {"count": len(odd), "examples": odd[:examples]},
    }


def _skipped(root: Path, data: SplitData, examples: int) -> dict:
    unreadable, too_large = skipped_reasons(data.skipped)
    rel = lambda p: str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p  # noqa: E731
    return {
        "unreadable": {"count": len(unreadable), "examples": unreadable[:examples]},
        "over_pixel_limit": {
            "count": len(too_large),
            "limit": MAX_PIXELS,
            "examples": [{"path": rel(p), "size": f"{w}x{h}"} for p, (w, h) in too_large[:examples]],
        },
    }


def audit_dataset(
    data, img_size: int = 48, grayscale: bool = True, cache_dir=None, strict: bool = False, examples: int = 5
) -> dict:
    """Audit a dataset (train, val, and test when present, as ``datasets.resolve`` made them); nothing under
    its folders is written.

    Args:
        data: a ``datasets.Dataset``, or a dataset root (its folders are its classes).
        img_size: training size the images are decoded at (through ``load_split``'s cache).
        grayscale: decode as the training does (duplicates compare those bytes; the rest uses gray).
        cache_dir: decoded-image cache (None: $FER_CACHE_DIR or ~/.cache/fer_core).
        strict: raise on an unreadable image instead of reporting it.
        examples: how many example paths/groups each finding lists.

    Returns:
        JSON-serialisable findings: ``splits`` (per split), ``exact_duplicates``, ``near_duplicates``,
        ``mismatch`` (per non-train split), ``warnings``, ``seconds`` and ``timings``.

    Raises:
        DataError: see ``data.scan_split``; an unreadable image when ``strict``.
    """
    t0 = clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        timings[name], clock = round(time.perf_counter() - clock, 3), time.perf_counter()

    dataset = data if isinstance(data, Dataset) else resolve(TrainConfig(data=str(data)))
    # paths are relative to the one root, or (several) carry their root
    root = dataset.sources[0].root if len(dataset.sources) == 1 else Path()
    names = list(dataset.splits)
    data = {
        s: load_dataset(
            dataset, s, img_size=img_size, grayscale=grayscale, strict=strict, cache_dir=cache_dir
        )
        for s in names
    }
    lap("load")
    classes = data["train"].classes
    stats = {s: image_stats(d.images) for s, d in data.items()}
    ok = {s: stats[s]["contrast"] >= BLANK_STD for s in names}  # blank: neither duplicates nor in the medians
    lap("stats")
    findings: dict = {
        "root": ", ".join(str(s.root) for s in dataset.sources),
        "img_size": img_size,
        "grayscale": grayscale,
        "splits": {},
    }
    for s, d in data.items():
        counts = np.bincount(d.labels, minlength=len(classes))
        blank = np.flatnonzero(~ok[s])
        findings["splits"][s] = {
            "images": len(d),
            "class_counts": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "imbalance_ratio": round(float(counts.max() / max(counts.min(), 1)), 2),
            **_headers(root, d, img_size, examples),
            **_skipped(root, d, examples),
            "blank": {"count": len(blank), "examples": [d.paths[i] for i in blank[:examples]]},
        }
    lap("headers")
    images = np.concatenate([np.asarray(d.images) for d in data.values()])
    split_of = np.concatenate([np.full(len(d), s) for s, d in data.items()])
    labels = np.concatenate([d.labels for d in data.values()])
    paths = [p for d in data.values() for p in d.paths]
    valid = np.concatenate([ok[s] for s in names])
    exact, exact_groups = exact_duplicate_groups(images, valid)
    findings["exact_duplicates"] = _group_report(
        exact_groups, split_of, labels, paths, classes, exact, examples
    )
    lap("exact_duplicates")
    near_groups = near_duplicate_groups(images, valid, exact_groups)
    findings["near_duplicates"] = {
        "max_distance": PHASH_MAX_DISTANCE,
        "min_cosine": PHASH_MIN_COSINE,
        **_group_report(near_groups, split_of, labels, paths, classes, exact, examples),
    }
    lap("near_duplicates")
    made = [str(src.root) for src in dataset.sources if src.split is not None]
    leaks = findings["near_duplicates"]["cross_split"]["groups"]
    findings["warnings"] = []
    if made and leaks:
        findings["warnings"].append(
            f"{leaks} groups of near-identical images fall on both sides of the split made from {', '.join(made)} "
            "(frames of one person or sequence?): set group, a regular expression over file names whose match "
            'stays in one split, e.g. group: "^(S\\d+)_"'
        )
    findings["mismatch"] = {}
    for s in names[1:]:
        figs, warns = split_mismatch(
            s,
            {k: v[ok["train"]] for k, v in stats["train"].items()},
            {k: v[ok[s]] for k, v in stats[s].items()},
        )
        findings["mismatch"][s] = {**figs, "warnings": warns}
        findings["warnings"] += warns
    lap("mismatch")
    findings["timings"] = timings
    findings["seconds"] = round(time.perf_counter() - t0, 2)
    return findings


def _tally(t: dict) -> str:
    return f"{t['groups']} groups ({t['images']} images, {t['label_conflicts']} with different labels)"


def summarize(findings: dict) -> list[str]:
    """Short human lines: one per split, per duplicate kind and per split comparison, then each warning.

    Args:
        findings: the result of ``audit_dataset``.
    """
    lines = []
    for s, f in findings["splits"].items():
        counts = f["class_counts"]
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        sizes = ", ".join(f"{k} x{n}" for k, n in f["sizes"]["most_common"][:3])
        modes = ", ".join(f"{k} x{n}" for k, n in f["modes"].items())
        lines.append(
            f"{s}: {f['images']} images, imbalance {f['imbalance_ratio']:g}x ({big} {counts[big]} / {small} "
            f"{counts[small]}); sizes {sizes} ({f['sizes']['distinct']} distinct); modes {modes}; "
            f"{f['odd_size']['count']} far from {findings['img_size']} px or square; "
            f"{f['unreadable']['count']} unreadable; {f['blank']['count']} blank"
            + (f"; {n} over the pixel limit" if (n := f["over_pixel_limit"]["count"]) else "")
        )
    for kind in ("exact", "near"):
        d = findings[f"{kind}_duplicates"]
        head = (
            "exact duplicates"
            if kind == "exact"
            else (
                f"near duplicates (pHash <= {d['max_distance']} bits and cosine >= {d['min_cosine']}, exact ones included; "
                f"{d['not_exact_groups']} groups not pixel-identical)"
            )
        )
        within = "; ".join(f"within {s} {_tally(t)}" for s, t in d["within_split"].items() if t["groups"])
        lines.append(
            f"{head}: {_tally(d)}: {within or 'none within a split'}; "
            f"across splits {_tally(d['cross_split'])}"
        )
    for s, m in findings["mismatch"].items():
        figs = ", ".join(
            f"{k} {m[k]['train']['median']:.{p}f} vs {m[k][s]['median']:.{p}f}"
            for k, p in (("sharpness", 2), ("contrast", 1), ("brightness", 1))
        )
        lines.append(f"train vs {s} medians: {figs}")
    lines += [f"WARNING: {w}" for w in findings["warnings"]]
    lines.append(f"audit took {findings['seconds']:.1f} s")
    return lines


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fer_core.audit",
        description="Audit a dataset folder: counts, odd "
        "files, duplicates within and across splits, and brightness/contrast/sharpness "
        "mismatch between splits. Writes nothing under DATA.",
    )
    p.add_argument(
        "data", help="dataset root with train/ and val/ (test/ optional), each holding the class folders"
    )
    p.add_argument(
        "--json", action="store_true", help="print the full findings as JSON instead of the summary"
    )
    p.add_argument(
        "--img-size", type=int, default=48, help="training size images are decoded and compared at (48)"
    )
    p.add_argument("--rgb", action="store_true", help="decode in colour, as a run with grayscale: false does")
    p.add_argument("--out", help="also write the findings as JSON to this file (never inside a dataset)")
    p.add_argument("--overwrite", action="store_true", help="let --out replace a checkpoint or a run's file")
    p.add_argument("--cache-dir", help="decoded-image cache (default $FER_CACHE_DIR or ~/.cache/fer_core)")
    p.add_argument(
        "--strict", action="store_true", help="stop at the first unreadable image instead of counting it"
    )
    p.add_argument("--examples", type=int, default=5, help="example paths or groups listed per finding (5)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        if args.img_size < 8:
            raise FerError(
                f"--img-size {args.img_size}: too small to compare images; use the training size (e.g. 48)"
            )
        if args.out:
            check_output(args.out, datasets=[args.data], overwrite=args.overwrite)
        findings = audit_dataset(
            args.data, args.img_size, not args.rgb, args.cache_dir, args.strict, max(args.examples, 0)
        )
        if args.out:
            try:
                Path(args.out).write_text(json.dumps(findings, indent=1) + "\n")
            except OSError as e:
                raise FerError(
                    f"{args.out}: cannot write the findings ({e.strerror}); pass a writable --out path"
                ) from None
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(findings, indent=1) if args.json else "\n".join(summarize(findings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
