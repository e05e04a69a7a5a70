"""Duplicate finding: exact (pixel-identical) and near (perceptual hash + cosine) copies, grouped.

``perceptual_hash`` gives every image a 64-bit DCT pHash and its unit AC coefficients; ``_near_pairs`` finds
the pairs within ``PHASH_MAX_DISTANCE`` bits and ``PHASH_MIN_COSINE``; ``exact_duplicate_groups`` and
``near_duplicate_groups`` turn ids and pairs into groups for the audit's report, and
``cross_split_duplicates`` lists the train images that leak into val/test (what ``dedupe: cross_split``
leaves out; ``dedupe_dropped`` applies that to a training config). Its own module because training needs it without the audit's report and CLI, and because the
hashing, with the measurements behind its thresholds, is one piece of work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import SplitData
from .datasets import resolve
from .decode_cache import load_args, load_dataset
from .errors import DataError
from .image_stats import BLANK_STD, CHUNK, image_stats, to_gray

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
    for s in range(0, len(images), CHUNK):
        x = to_gray(np.asarray(images[s : s + CHUNK])).astype(np.float32)
        c = (rows @ x @ cols.T).reshape(len(x), 64)
        bits = c > np.median(c[:, 1:], axis=1, keepdims=True)  # DC excluded: brightness does not matter
        hashes.append(np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64))
        ac = c[:, 1:]
        coefs.append(ac / np.maximum(np.linalg.norm(ac, axis=1, keepdims=True), 1e-6))
    return np.concatenate(hashes), np.concatenate(coefs).astype(np.float32)


def _near_pairs(
    h1, c1, h2=None, c2=None, max_distance=PHASH_MAX_DISTANCE, min_cosine=PHASH_MIN_COSINE
) -> np.ndarray:
    """Index pairs (i, j) within Hamming ``max_distance`` and cosine ``min_cosine``: all pairs i < j of one
    set when ``h2`` is None, else pairs i of set 1 × j of set 2. Chunked brute force, ~3e8 pairs/s."""
    same = h2 is None
    h2, c2 = (h1, c1) if same else (h2, c2)
    rows = max(1, 2**20 // max(len(h2), 1))  # 1M-pair slabs in reused buffers: cache-sized, no page faults
    xor, count, hit = (np.empty(rows * len(h2), t) for t in (np.uint64, np.uint8, bool))
    found = [np.zeros((0, 2), np.int64)]
    for s in range(0, len(h1), rows):
        start = s if same else 0
        shape = (min(rows, len(h1) - s), len(h2) - start)
        size = shape[0] * shape[1]
        x, n, m = xor[:size].reshape(shape), count[:size].reshape(shape), hit[:size].reshape(shape)
        np.bitwise_xor(h1[s : s + shape[0], None], h2[None, start:], out=x)
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


def _groups(ids: np.ndarray, valid: np.ndarray) -> list[np.ndarray]:
    """Positions sharing an id, as groups of two or more (only positions where ``valid``)."""
    order = np.flatnonzero(valid)
    order = order[np.argsort(ids[order], kind="stable")]
    return [g for g in np.split(order, np.flatnonzero(np.diff(ids[order])) + 1) if len(g) > 1]


def exact_duplicate_groups(images: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pixel-identical images: a group id per image, and the groups of two or more among ``valid`` positions.

    Args:
        images: uint8 N×H×W or N×H×W×3 decoded images.
        valid: bool N, the images that may be grouped (blank ones are left out).
    """
    ids = _exact_ids(images)
    return ids, _groups(ids, valid)


def near_duplicate_groups(
    images: np.ndarray, valid: np.ndarray, exact_groups: list[np.ndarray]
) -> list[np.ndarray]:
    """Near duplicates (pHash within ``PHASH_MAX_DISTANCE`` and cosine ``PHASH_MIN_COSINE``), as groups of
    positions among ``valid``; the ``exact_groups`` are joined in, so a near group always contains them.

    Args:
        images: uint8 N×H×W or N×H×W×3 decoded images.
        valid: bool N, the images that may be grouped.
        exact_groups: ``exact_duplicate_groups``'s groups.
    """
    idx = np.flatnonzero(valid)
    pairs = [idx[_near_pairs(*perceptual_hash(images[idx]))]]
    # Exact groups are joined in too, so near groups always contain them (even one without low-frequency content).
    pairs += [np.stack([g[:-1], g[1:]], axis=1) for g in exact_groups]
    return _groups(_union(len(images), np.concatenate(pairs)), valid)


def cross_split_duplicates(
    train: SplitData,
    others: Sequence[SplitData],
    max_distance: int = PHASH_MAX_DISTANCE,
    min_cosine: float = PHASH_MIN_COSINE,
) -> np.ndarray:
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
    hit = np.isin(ids[: len(timg)], ids[len(timg) :])
    (h1, c1), (h2, c2) = perceptual_hash(timg), perceptual_hash(oimg)
    hit[_near_pairs(h1, c1, h2, c2, max_distance, min_cosine)[:, 0]] = True
    return ti[hit].astype(np.int64)


def dedupe_dropped(cfg, train: SplitData | None = None, val: SplitData | None = None) -> np.ndarray:
    """The train rows ``dedupe: cross_split`` leaves out (none with ``dedupe: none``) for the TrainConfig ``cfg``: duplicates of a val or
    test image, which would leak the answer to the evaluation; the splits not given are loaded. DataError: a
    class would keep no training image (such splits overlap; dedupe cannot fix them)."""
    if cfg.dedupe != "cross_split":
        return np.empty(0, np.int64)
    common = load_args(cfg)
    dataset = resolve(cfg)
    train = train if train is not None else load_dataset(dataset, "train", **common)
    others = [val if val is not None else load_dataset(dataset, "val", **common)]
    if "test" in dataset.splits:
        others.append(load_dataset(dataset, "test", **common))
    dropped = np.asarray(cross_split_duplicates(train, others), dtype=np.int64)
    kept = np.bincount(np.delete(train.labels, dropped), minlength=len(train.classes))
    empty = [c for c, n in zip(train.classes, kept) if n == 0]
    if empty:
        raise DataError(
            f"{', '.join(str(src.root) for src in dataset.sources)}: dedupe: cross_split leaves no training image of {', '.join(empty)} "
            f"({len(dropped)} of {len(train)} train images duplicate val or test: the splits overlap); give "
            "train and val different images, or set dedupe: none"
        )
    return dropped
