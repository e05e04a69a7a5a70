"""Dataset audit, run before training: ``python -m fer_core.audit DATA [--json] [--img-size 48] [--out FILE]``.

Per split: counts, imbalance, original sizes and colour modes (file headers only), images far from the
training size or shape, unreadable and blank images. Across the data: exact duplicates (pixel-identical
decoded images) and near duplicates (perceptual hash), within and across splits, with the groups whose labels
disagree; ``cross_split_duplicates`` gives the train images that leak into val/test (``dedupe: cross_split``).
Split mismatch: brightness, contrast and sharpness of val/test against train, warned about when they differ
more than augmentation can bridge (a blurred or re-compressed split). Pixel work reads ``load_split``'s
decode-once cache, so a second audit decodes nothing; nothing under DATA is ever written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import SplitData, load_split, odd_sizes
from .errors import DataError, FerError

SPLITS = ("train", "val", "test")
# Constant images: FER2013 train has 12 with std < 2 (11 all-zero, one 0.65), and the next lowest is 9.2.
BLANK_STD = 2.0
# Near duplicates: the 64-bit DCT pHash (8x8 lowest frequencies of a 32x32 resize, each bit = coefficient
# above the image's median) within Hamming distance 12, confirmed by a cosine >= 0.95 between the same
# 63 AC coefficients. Measured on 2,000 FER2013 train faces: a JPEG re-save (q70 / q50) moves at most 6 / 10 bits
# and +-10 brightness at most 8, all at cosine >= 0.98 (100 % kept); a 1-px shift moves a median 6 bits
# (99th percentile 12 in x, 10 in y), and 97.8 % (x) / 99.8 % (y) of shifted copies pass both tests. The hash
# alone does not tell faces apart: at 6-12 bits a third to half of FER2013's pairs are different people with
# the same face layout; the cosine removes most of them (by eye, ~1 in 6 of the kept 8-12-bit pairs is still
# two different faces, ~none at <= 6 bits), and on val it keeps 81 of the 838 pairs within 12 bits.
PHASH_MAX_DISTANCE = 12
PHASH_MIN_COSINE = 0.95
# Split mismatch tolerances on the per-split medians. Two random halves of FER2013 train agree within 0.4 %
# (and train vs val within 5 %); a Gaussian blur of sigma 0.5 px makes a split 1.4x less sharp (sigma 1: 3x,
# sigma 3: 10x), and sigma 2 lowers its contrast 1.24x. A larger gap is a processing difference between
# the splits (blur, resizing, compression, levels) that augmentation does not undo.
SHARPNESS_RATIO_TOL = 1.5
CONTRAST_RATIO_TOL = 1.25
BRIGHTNESS_DIFF_TOL = 20.0
# A median of n values wanders by about 1.25 sd / sqrt(n), so two small splits drawn alike can differ past a
# tolerance by chance (the 12/4-per-class demo set: val medians 35 grey levels darker than train, 3 standard
# errors). A difference is reported only when it exceeds its tolerance by more than this many standard
# errors of the two medians' difference (on log values for the ratios): confidently beyond it, not by chance.
MISMATCH_SE = 2.0
_CHUNK = 4096  # images per vectorised batch: bounds the float memory of the per-image work


def _gray(images: np.ndarray) -> np.ndarray:
    return images if images.ndim == 3 else images.mean(axis=3).round().astype(np.uint8)


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image brightness (mean grey), contrast (std) and sharpness (mean |4-neighbour Laplacian| /
    max(std, 1): fine detail relative to contrast, so a darker or flatter split does not read as blurrier).

    Args:
        images: uint8 N×H×W (gray) or N×H×W×3 decoded images.
    """
    out: dict[str, list[np.ndarray]] = {"brightness": [], "contrast": [], "sharpness": []}
    for s in range(0, len(images), _CHUNK):
        x = _gray(np.asarray(images[s:s + _CHUNK])).astype(np.int16)  # exact integer sums, 2x leaner than float
        lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
        flat = x.reshape(len(x), -1).astype(np.int32)
        mean = flat.sum(axis=1, dtype=np.int64) / flat.shape[1]
        std = np.sqrt(np.maximum((flat * flat).sum(axis=1, dtype=np.int64) / flat.shape[1] - mean ** 2, 0))
        out["brightness"].append(mean)
        out["contrast"].append(std)
        out["sharpness"].append(np.abs(lap).reshape(len(x), -1).mean(axis=1) / np.maximum(std, 1.0))
    return {k: np.concatenate(v).astype(np.float32) if v else np.zeros(0, np.float32) for k, v in out.items()}


def _hash_matrix(n: int) -> np.ndarray:
    """8×n: resizing an n-px side to 32 (area down, linear up, as PIL/torch do) then the 8 lowest DCT-II rows.
    Both steps are linear and separable, so one small matrix per side does them in a single product."""
    eye = torch.eye(n).unsqueeze(0)
    resize = F.interpolate(eye, size=32, mode="area" if n >= 32 else "linear")[0].T.numpy()  # 32×n
    i, u = np.arange(32), np.arange(8)[:, None]
    dct = np.cos(np.pi * (2 * i + 1) * u / 64) * np.sqrt(2 / 32)
    return (dct @ resize).astype(np.float32)


def perceptual_hash(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit DCT pHash of each image (8×8 lowest frequencies of a 32×32 resize, a bit per coefficient
    above the image's median AC coefficient), and its 63 AC coefficients scaled to unit length.

    Args:
        images: uint8 N×H×W or N×H×W×3.

    Returns:
        (uint64 N hashes, float32 N×63 unit coefficient vectors; an image without low-frequency content
        gets a zero vector).
    """
    hashes, coefs = [np.zeros(0, np.uint64)], [np.zeros((0, 63), np.float32)]
    if len(images):
        rows, cols = _hash_matrix(images.shape[1]), _hash_matrix(images.shape[2])
    for s in range(0, len(images), _CHUNK):
        x = _gray(np.asarray(images[s:s + _CHUNK])).astype(np.float32)
        c = (rows @ x @ cols.T).reshape(len(x), 64)
        bits = c > np.median(c[:, 1:], axis=1, keepdims=True)  # DC excluded: brightness does not matter
        hashes.append(np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64))
        ac = c[:, 1:]
        coefs.append(ac / np.maximum(np.linalg.norm(ac, axis=1, keepdims=True), 1e-6))
    return np.concatenate(hashes), np.concatenate(coefs).astype(np.float32)


def _near_pairs(h1, c1, h2=None, c2=None, max_distance=PHASH_MAX_DISTANCE, min_cosine=PHASH_MIN_COSINE) -> np.ndarray:
    """Index pairs (i, j) within Hamming ``max_distance`` and cosine ``min_cosine``: all pairs i < j of one
    set when ``h2`` is None, else pairs i of set 1 × j of set 2. Chunked brute force, ~3e8 pairs/s."""
    same = h2 is None
    h2, c2 = (h1, c1) if same else (h2, c2)
    rows = max(1, 2 ** 20 // max(len(h2), 1))  # 1M-pair slabs in reused buffers: cache-sized, no page faults
    xor, count, hit = (np.empty(rows * len(h2), t) for t in (np.uint64, np.uint8, bool))
    found = [np.zeros((0, 2), np.int64)]
    for s in range(0, len(h1), rows):
        start = s if same else 0
        shape = (min(rows, len(h1) - s), len(h2) - start)
        size = shape[0] * shape[1]
        x, n, m = xor[:size].reshape(shape), count[:size].reshape(shape), hit[:size].reshape(shape)
        np.bitwise_xor(h1[s:s + shape[0], None], h2[None, start:], out=x)
        np.less_equal(np.bitwise_count(x, out=n), max_distance, out=m)
        i, j = np.nonzero(m)
        i, j = i + s, j + start
        keep = (j > i) if same else slice(None)
        i, j = i[keep], j[keep]
        ok = np.einsum("ij,ij->i", c1[i], c2[j]) >= min_cosine
        found.append(np.stack([i[ok], j[ok]], axis=1))
    return np.concatenate(found)


def _exact_ids(images: np.ndarray) -> np.ndarray:
    """Group id per image: equal ids <=> pixel-identical decoded bytes."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    if not len(flat):
        return np.zeros(0, np.int64)
    return np.unique(flat.view(np.dtype((np.void, flat.shape[1]))).ravel(), return_inverse=True)[1].ravel()


def _union(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pairs: a representative id per position (union-find)."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(a) for a in range(n)], dtype=np.int64)


def cross_split_duplicates(train: SplitData, others: Sequence[SplitData], max_distance: int = PHASH_MAX_DISTANCE,
                           min_cosine: float = PHASH_MIN_COSINE) -> np.ndarray:
    """Indices of train images that exactly or nearly duplicate an image of another split.

    Dropping them (``dedupe: cross_split``) keeps val/test figures free of images the model trained on.
    Blank images are left out on both sides: they are reported as blank, not as copies of each other.

    Args:
        train: the loaded train split.
        others: the loaded val (and test) splits.
        max_distance: pHash Hamming distance of a near duplicate.
        min_cosine: DCT coefficient cosine a near duplicate must also reach.

    Returns:
        sorted int64 positions into ``train.images``.
    """
    others = [o for o in others if len(o)]
    if not len(train) or not others:
        return np.zeros(0, np.int64)
    ti = np.flatnonzero(image_stats(train.images)["contrast"] >= BLANK_STD)
    oi = [np.flatnonzero(image_stats(o.images)["contrast"] >= BLANK_STD) for o in others]
    timg = np.asarray(train.images)[ti]
    oimg = np.concatenate([np.asarray(o.images)[i] for o, i in zip(others, oi, strict=True)])
    ids = _exact_ids(np.concatenate([timg, oimg]))
    hit = np.isin(ids[:len(timg)], ids[len(timg):])
    (h1, c1), (h2, c2) = perceptual_hash(timg), perceptual_hash(oimg)
    hit[_near_pairs(h1, c1, h2, c2, max_distance, min_cosine)[:, 0]] = True
    return ti[hit].astype(np.int64)


def _group_report(groups: list[np.ndarray], split_of, labels, paths, classes, exact_ids, examples: int) -> dict:
    spans = [len(set(split_of[g].tolist())) > 1 for g in groups]
    conflicts = [len(set(labels[g].tolist())) > 1 for g in groups]

    def tally(sel: list[int]) -> dict:
        return {"groups": len(sel), "images": int(sum(len(groups[k]) for k in sel)),
                "label_conflicts": sum(conflicts[k] for k in sel)}

    order = sorted(set(split_of.tolist()), key=SPLITS.index)
    within = {s: tally([k for k, g in enumerate(groups) if not spans[k] and split_of[g[0]] == s]) for s in order}
    # Examples: label conflicts across splits first (the costliest), then other conflicts, then cross-split.
    rank = sorted(range(len(groups)), key=lambda k: (-2 * conflicts[k] - spans[k], -len(groups[k])))
    member = lambda i: {"split": str(split_of[i]), "path": paths[i], "label": classes[labels[i]]}  # noqa: E731
    return {**tally(list(range(len(groups)))),
            "not_exact_groups": sum(len(set(exact_ids[g].tolist())) > 1 for g in groups),
            "largest_group": max((len(g) for g in groups), default=0),
            "cross_split": tally([k for k in range(len(groups)) if spans[k]]), "within_split": within,
            "examples": [{"size": len(groups[k]), "members": [member(i) for i in groups[k][:8]]}
                         for k in rank[:examples]]}


def _groups(ids: np.ndarray, valid: np.ndarray) -> list[np.ndarray]:
    """Positions sharing an id, as groups of two or more (only positions where ``valid``)."""
    order = np.flatnonzero(valid)
    order = order[np.argsort(ids[order], kind="stable")]
    return [g for g in np.split(order, np.flatnonzero(np.diff(ids[order])) + 1) if len(g) > 1]


def _headers(root: Path, data: SplitData, img_size: int, examples: int) -> dict:
    sizes, modes, odd = Counter(), Counter(), []
    for rel in data.paths:
        with Image.open(root / rel) as im:  # header only: PIL decodes pixels lazily, on first access
            (w, h), mode = im.size, im.mode
        sizes[f"{w}x{h}"] += 1
        modes[mode] += 1
        if odd_sizes([rel], [(w, h)], img_size):  # the rule load_split warns with (data.odd_sizes)
            odd.append({"path": rel, "size": f"{w}x{h}"})
    return {"sizes": {"most_common": [[k, n] for k, n in sizes.most_common(5)], "distinct": len(sizes)},
            "modes": dict(modes.most_common()), "odd_size": {"count": len(odd), "examples": odd[:examples]}}


def _percentiles(v: np.ndarray) -> dict:
    p10, p50, p90 = np.percentile(v, [10, 50, 90]) if len(v) else (float("nan"),) * 3
    return {"p10": round(float(p10), 3), "median": round(float(p50), 3), "p90": round(float(p90), 3)}


def _median_se(x: np.ndarray, y: np.ndarray, log: bool) -> float:
    """Standard error of median(y) - median(x) (of their logs when ``log``), from the normal approximation."""
    if log:
        x, y = np.log(np.maximum(x, 1e-6)), np.log(np.maximum(y, 1e-6))
    return float(1.2533 * np.sqrt(x.var() / max(len(x), 1) + y.var() / max(len(y), 1)))


def _beyond(value: float, tol: float, se: float) -> bool:
    """|value| exceeds ``tol`` by more than MISMATCH_SE standard errors."""
    return abs(value) - MISMATCH_SE * se > tol


def _mismatch(name: str, ref: dict, other: dict) -> tuple[dict, list[str]]:
    """Medians and 10/90th percentiles of ``other`` (split ``name``) against train, and the warnings."""
    figs = {k: {"train": _percentiles(ref[k]), name: _percentiles(other[k])}
            for k in ("sharpness", "contrast", "brightness")}
    med = {k: (figs[k]["train"]["median"], figs[k][name]["median"]) for k in figs}
    se = {k: _median_se(ref[k], other[k], log=k != "brightness") for k in figs}
    for k in figs:
        figs[k]["standard_error" + ("_log" if k != "brightness" else "")] = round(se[k], 4)
    warns = []
    a, b = med["sharpness"]
    figs["sharpness"]["ratio"] = r = round(b / max(a, 1e-6), 3)
    if _beyond(np.log(max(r, 1e-6)), np.log(SHARPNESS_RATIO_TOL), se["sharpness"]):
        word, k = ("sharper", r) if r > 1 else ("blurrier", 1 / r)
        warns.append(f"{name} is {k:.1f}x {word} than train (median Laplacian/std {b:.2f} vs {a:.2f}): the splits were "
                     f"made differently (blur, resizing, compression), so {name} figures will not show the fit")
    a, b = med["contrast"]
    figs["contrast"]["ratio"] = r = round(b / max(a, 1e-6), 3)
    if _beyond(np.log(max(r, 1e-6)), np.log(CONTRAST_RATIO_TOL), se["contrast"]):
        warns.append(f"{name} has {r:.2f}x the contrast of train (median std {b:.1f} vs {a:.1f} grey levels): "
                     "the splits were processed differently (levels, gamma, blur)")
    a, b = med["brightness"]
    figs["brightness"]["difference"] = d = round(b - a, 3)
    if _beyond(d, BRIGHTNESS_DIFF_TOL, se["brightness"]):
        warns.append(f"{name} is {abs(d):.1f} grey levels {'brighter' if d > 0 else 'darker'} than train (median mean "
                     f"grey {b:.1f} vs {a:.1f}): the splits were processed differently (levels, gamma)")
    return figs, warns


def audit_dataset(root, img_size: int = 48, grayscale: bool = True, cache_dir=None, strict: bool = False,
                  examples: int = 5) -> dict:
    """Audit a dataset folder (train, val, and test when present); nothing under ``root`` is written.

    Args:
        root: dataset root with train/ and val/ (test/ optional), each holding the class folders.
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

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; pass the folder that holds train/ and val/")
    names = [s for s in SPLITS if s != "test" or (root / "test").is_dir()]
    data = {s: load_split(root, s, img_size, grayscale, strict, cache_dir) for s in names}
    lap("load")
    classes = data["train"].classes
    stats = {s: image_stats(d.images) for s, d in data.items()}
    ok = {s: stats[s]["contrast"] >= BLANK_STD for s in names}  # blank: neither duplicates nor in the medians
    lap("stats")
    findings: dict = {"root": str(root), "img_size": img_size, "grayscale": grayscale, "splits": {}}
    for s, d in data.items():
        counts = np.bincount(d.labels, minlength=len(classes))
        blank = np.flatnonzero(~ok[s])
        findings["splits"][s] = {
            "images": len(d), "class_counts": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "imbalance_ratio": round(float(counts.max() / max(counts.min(), 1)), 2),
            **_headers(root, d, img_size, examples),
            "unreadable": {"count": len(d.skipped), "examples": d.skipped[:examples]},
            "blank": {"count": len(blank), "examples": [d.paths[i] for i in blank[:examples]]},
        }
    lap("headers")
    images = np.concatenate([np.asarray(d.images) for d in data.values()])
    split_of = np.concatenate([np.full(len(d), s) for s, d in data.items()])
    labels = np.concatenate([d.labels for d in data.values()])
    paths = [p for d in data.values() for p in d.paths]
    valid = np.concatenate([ok[s] for s in names])
    exact = _exact_ids(images)
    exact_groups = _groups(exact, valid)
    findings["exact_duplicates"] = _group_report(exact_groups, split_of, labels, paths, classes, exact, examples)
    lap("exact_duplicates")
    idx = np.flatnonzero(valid)
    pairs = [idx[_near_pairs(*perceptual_hash(images[idx]))]]
    # Exact groups are joined in too, so near groups always contain them (even one without low-frequency content).
    pairs += [np.stack([g[:-1], g[1:]], axis=1) for g in exact_groups]
    near_groups = _groups(_union(len(images), np.concatenate(pairs)), valid)
    findings["near_duplicates"] = {"max_distance": PHASH_MAX_DISTANCE, "min_cosine": PHASH_MIN_COSINE,
                                   **_group_report(near_groups, split_of, labels, paths, classes, exact, examples)}
    lap("near_duplicates")
    findings["mismatch"], findings["warnings"] = {}, []
    for s in names[1:]:
        figs, warns = _mismatch(s, {k: v[ok["train"]] for k, v in stats["train"].items()},
                                {k: v[ok[s]] for k, v in stats[s].items()})
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
        lines.append(f"{s}: {f['images']} images, imbalance {f['imbalance_ratio']:g}x ({big} {counts[big]} / {small} "
                     f"{counts[small]}); sizes {sizes} ({f['sizes']['distinct']} distinct); modes {modes}; "
                     f"{f['odd_size']['count']} far from {findings['img_size']} px or square; "
                     f"{f['unreadable']['count']} unreadable; {f['blank']['count']} blank")
    for kind in ("exact", "near"):
        d = findings[f"{kind}_duplicates"]
        head = "exact duplicates" if kind == "exact" else (
            f"near duplicates (pHash <= {d['max_distance']} bits and cosine >= {d['min_cosine']}, exact ones included; "
            f"{d['not_exact_groups']} groups not pixel-identical)")
        within = "; ".join(f"within {s} {_tally(t)}" for s, t in d["within_split"].items() if t["groups"])
        lines.append(f"{head}: {_tally(d)}: {within or 'none within a split'}; "
                     f"across splits {_tally(d['cross_split'])}")
    for s, m in findings["mismatch"].items():
        figs = ", ".join(f"{k} {m[k]['train']['median']:.{p}f} vs {m[k][s]['median']:.{p}f}"
                         for k, p in (("sharpness", 2), ("contrast", 1), ("brightness", 1)))
        lines.append(f"train vs {s} medians: {figs}")
    lines += [f"WARNING: {w}" for w in findings["warnings"]]
    lines.append(f"audit took {findings['seconds']:.1f} s")
    return lines


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fer_core.audit", description="Audit a dataset folder: counts, odd "
                                "files, duplicates within and across splits, and brightness/contrast/sharpness "
                                "mismatch between splits. Writes nothing under DATA.")
    p.add_argument("data", help="dataset root with train/ and val/ (test/ optional), each holding the class folders")
    p.add_argument("--json", action="store_true", help="print the full findings as JSON instead of the summary")
    p.add_argument("--img-size", type=int, default=48, help="training size images are decoded and compared at (48)")
    p.add_argument("--rgb", action="store_true", help="decode in colour, as a run with grayscale: false does")
    p.add_argument("--out", help="also write the findings as JSON to this file")
    p.add_argument("--cache-dir", help="decoded-image cache (default $FER_CACHE_DIR or ~/.cache/fer_core)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of counting it")
    p.add_argument("--examples", type=int, default=5, help="example paths or groups listed per finding (5)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        if args.img_size < 8:
            raise FerError(f"--img-size {args.img_size}: too small to compare images; use the training size (e.g. 48)")
        findings = audit_dataset(args.data, args.img_size, not args.rgb, args.cache_dir, args.strict,
                                 max(args.examples, 0))
        if args.out:
            try:
                Path(args.out).write_text(json.dumps(findings, indent=1) + "\n")
            except OSError as e:
                raise FerError(f"{args.out}: cannot write the findings ({e.strerror}); "
                               "pass a writable --out path") from None
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(findings, indent=1) if args.json else "\n".join(summarize(findings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
