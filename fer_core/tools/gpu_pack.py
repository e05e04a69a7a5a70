"""The packed data file the GPU check reads: a decoded FER2013 in one numpy archive small enough to travel.

``pack`` decodes an ImageFolder dataset's train and val splits through the project's own path
(``decode_cache.load_split``: 48 px, gray, uint8) and writes one ``np.savez_compressed`` archive under
``MAX_BYTES``; ``load_packed`` reads it back as the (train, val) ``SplitData`` pair that
``Trainer(cfg, splits=...)`` takes, resized once when another input size is asked for.

The archive, readable with numpy alone (``np.load(path)``):

- ``train_sub``, ``val_sub``: uint8 N×48×48, each row stored as differences to its left neighbour modulo 256
  (PNG's "Sub" filter: zlib then packs FER2013 into 80 % of its raw size instead of 96 %);
  ``np.cumsum(a, axis=-1, dtype=np.uint8)`` gives the images back exactly.
- ``train_labels``, ``val_labels``: int64 N; ``classes``: the class names in label order.
- ``meta``: one JSON string: where the data came from, its image counts, and the train subset kept.

FER2013 decoded is 32,298 images × 2,304 B = 74 MB, 60 MB so packed; no lossless numpy-only packing
measured reaches 40 MB (LZMA with a median predictor: 50 MB). So val is kept whole and train is a
class-stratified subset (``dataset.stratified_indices``, seed 0) sized to fit: about 17,800 of 28,709
images, which changes nothing a throughput figure measures.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..data import SplitData
from ..dataset import stratified_indices
from ..decode_cache import load_split
from ..errors import DataError

PACK_SIZE = 48  # FER2013's own size: larger inputs are resized from it on load
MAX_BYTES = 40_000_000  # what the check's data may weigh to travel with the checkout
DEFAULT_PACK = Path(".gpu-check") / "fer2013-48.npz"  # git-ignored
FORMAT = 1


def _write(path: Path, train: SplitData, val: SplitData, train_idx: np.ndarray, meta: dict) -> None:
    def sub(images: np.ndarray) -> np.ndarray:
        return np.diff(images, axis=-1, prepend=np.uint8(0)).astype(np.uint8)

    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        train_sub=sub(train.images[train_idx]),
        train_labels=train.labels[train_idx],
        val_sub=sub(val.images),
        val_labels=val.labels,
        classes=np.array(train.classes),
        meta=np.array(json.dumps({**meta, "format": FORMAT, "train_kept": len(train_idx)})),
    )
    os.replace(tmp, path)


def pack(data: str | os.PathLike, out: str | os.PathLike = DEFAULT_PACK, max_bytes: int = MAX_BYTES) -> dict:
    """Decode ``data``'s train and val splits at 48 px gray and write them to ``out``, under ``max_bytes``.

    All of val is kept; train is cut to the largest class-stratified subset that fits (within 1 %).

    Args:
        data: ImageFolder dataset root holding train/ and val/.
        out: the archive to write (its folder is created).
        max_bytes: the most the archive may weigh.

    Returns:
        {"path", "bytes", "train", "train_total", "val"}: what was written.

    Raises:
        DataError: a bad dataset (as ``load_split``), or val and a few train images do not fit in ``max_bytes``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    train = load_split(root=data, split="train", img_size=PACK_SIZE, grayscale=True)
    val = load_split(root=data, split="val", img_size=PACK_SIZE, grayscale=True)
    meta = {"source": str(data), "img_size": PACK_SIZE, "train_total": len(train), "val": len(val)}
    keep = len(train)
    while keep > 0:
        idx = stratified_indices(train.labels, keep)
        _write(out, train, val, idx, meta)
        size = out.stat().st_size
        if size <= max_bytes:
            return {
                "path": str(out),
                "bytes": size,
                "train": len(idx),
                "train_total": len(train),
                "val": len(val),
            }
        with zipfile.ZipFile(out) as z:
            train_bytes = z.getinfo("train_sub.npy").compress_size
        room = max_bytes - (size - train_bytes)
        # 1 % under: compression varies between subsets; and fewer each time, as a stratified subset may
        # round up to more images than asked for.
        keep = min(keep - 1, int(len(idx) * room / train_bytes * 0.99))
    out.unlink(missing_ok=True)
    raise DataError(
        f"{data}: cannot pack it under {max_bytes / 1e6:g} MB even with few train images; pack less data"
    )


def load_packed(path: str | os.PathLike, img_size: int = PACK_SIZE) -> tuple[SplitData, SplitData]:
    """The (train, val) splits of a packed file, at ``img_size``.

    Another size than 48 px is made once here by bilinear resizing of the 48 px uint8 images with torch
    (``interpolate``, rounded back to uint8): not the decoder's resize from the files, which only matters
    for accuracy, not for the speed this data serves to measure.

    Raises:
        DataError: the file is missing, a folder, or not a packed file of this format.
    """
    path = Path(path)
    make = "make it with python -m fer_core.tools.gpu_check pack --data DATASET --out FILE.npz"
    if path.is_dir():
        raise DataError(f"{path}: is a folder, and the check reads one packed .npz file; {make}")
    if not path.is_file():
        raise DataError(f"{path}: packed data not found; {make}")
    not_packed = f"{path}: not a packed data file (not a numpy .npz archive); {make}"
    try:
        z = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile):  # numpy's message advises allow_pickle: no help here
        raise DataError(not_packed) from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy file: one array
        raise DataError(not_packed)
    try:
        with z:
            meta = json.loads(str(z["meta"]))
            classes = tuple(str(c) for c in z["classes"])
            arrays = {k: z[k] for k in ("train_sub", "train_labels", "val_sub", "val_labels")}
    except (KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a packed data file ({e}); {make}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: packed data format {meta.get('format')}, expected {FORMAT}; pack it again")
    splits = []
    for split in ("train", "val"):
        images = np.cumsum(arrays[f"{split}_sub"], axis=-1, dtype=np.uint8)
        if img_size != images.shape[-1]:
            images = np.concatenate(
                [_resize(images[i : i + 2048], img_size) for i in range(0, len(images), 2048)]
            )
        splits.append(SplitData(split, classes, images, arrays[f"{split}_labels"], [], [], []))
    return splits[0], splits[1]


def _resize(images: np.ndarray, img_size: int) -> np.ndarray:
    x = torch.from_numpy(images).unsqueeze(1).float()
    x = torch.nn.functional.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return x.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
