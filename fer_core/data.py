"""Dataset layout checks, a decode-once uint8 cache, and the training/evaluation data pipeline.

Flow: ``scan_split`` walks an ImageFolder split and checks its layout (fast, stat only) ->
``load_split`` decodes every image once into a uint8 array cached on disk (keyed by the files' paths,
sizes, mtimes and the target size) -> ``FerDataset`` serves (augmented) uint8 images to a DataLoader.
Normalisation happens later, batched on the device (``preprocess.Preprocess``), because moving uint8 is
4x cheaper than float and the arithmetic is nearly free there.

Every problem is found here, before training: DataLoader workers only index an in-memory array, so they
cannot hit an unreadable file mid-epoch.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError

log = logging.getLogger(__name__)

# Alphabetical, which is also ImageFolder's order: label i is CLASS_NAMES[i].
CLASS_NAMES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
# Bump when the cache's content or format changes, so old caches are never read as new ones.
CACHE_VERSION = 1


@dataclass
class SplitFiles:
    """The image files of one split, as found on disk (nothing decoded yet)."""

    root: Path
    split: str
    classes: tuple[str, ...]
    paths: list[Path]
    labels: list[int]


@dataclass
class SplitData:
    """A decoded split: ``images`` is uint8 N×H×W (gray) or N×H×W×3, ``labels`` int64 N."""

    split: str
    classes: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[str]
    sizes: list | None = None  # (width, height) of each original file, when known (caches before it lack them)

    def __len__(self) -> int:
        return len(self.labels)


def _visible(p: Path) -> bool:
    # Hidden files (.DS_Store, editor swap files, our own cache folders) are never data.
    return not p.name.startswith(".")


def scan_split(root: str | os.PathLike, split: str, classes: Sequence[str] = CLASS_NAMES) -> SplitFiles:
    """Find a split's image files and check the layout.

    Args:
        root: dataset root holding ``split``/<class>/ folders.
        split: "train", "val" or "test".
        classes: the class folder names that must be present, in label order.

    Raises:
        DataError: root or split missing, a class folder missing, unexpected or empty, or a file that is
            not an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; pass --data pointing at a folder with train/ and val/ inside")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder missing; the dataset root needs train/ and val/ (test/ optional), each with the class folders {', '.join(classes)}")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and _visible(p))
    extra = [c for c in found if c not in classes]
    if extra:
        raise DataError(f"{split_dir / extra[0]}: unexpected class folder '{extra[0]}'; only {', '.join(classes)} are allowed: rename or remove it")
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"{split_dir / missing[0]}: class folder missing; create it and put that class's images in it (every split needs all of {', '.join(classes)})")
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not os.access(class_dir, os.R_OK | os.X_OK):  # rglob would see an empty folder
            raise DataError(f"{class_dir}: permission denied (the folder cannot be listed); make it readable, e.g. chmod -R a+rX")
        files = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and _visible(p) and all(_visible(q) for q in p.relative_to(class_dir).parents if str(q) != ".")
        )
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"{p}: not an image file ({p.suffix or 'no extension'}); move it out of the class folder (images must be one of {' '.join(IMAGE_EXTENSIONS)})")
        if not files:
            raise DataError(f"{class_dir}: class folder is empty; add at least one image of '{name}'")
        paths += files
        labels += [label] * len(files)
    return SplitFiles(root, split, tuple(classes), paths, labels)


_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def to_8bit(im: Image.Image) -> Image.Image:
    """Any PIL mode to one that converts cleanly to 8-bit 'L'/'RGB'.

    16/32-bit gray is scaled by its real range instead of clipped to white; transparency (RGBA, LA, PA,
    palette with a transparent colour) is composited onto white rather than turning black.
    """
    if im.mode in _HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float32)
        hi = float(arr.max()) or 1.0
        im = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im


def to_model_array(im: Image.Image, img_size: int, grayscale: bool) -> np.ndarray:
    """A PIL image (any mode, any size) -> uint8 img_size×img_size (×3 when not grayscale).

    The one conversion used for training data and for images at prediction time. Non-square images are
    resized to a square (face crops are near-square already, and a crop would lose chin or brows).
    """
    im = to_8bit(im).convert("L" if grayscale else "RGB")
    if im.size != (img_size, img_size):
        im = im.resize((img_size, img_size), Image.BICUBIC, reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8).copy()


def decode_image(path: str | os.PathLike, img_size: int, grayscale: bool) -> np.ndarray:
    """Decode one image file to a uint8 array of img_size×img_size (×3 when not grayscale).

    Raises:
        OSError, ValueError, SyntaxError, Image.DecompressionBombError: unreadable image (callers decide).
    """
    return decode_with_size(path, img_size, grayscale)[0]


def decode_with_size(path: str | os.PathLike, img_size: int, grayscale: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image`` that also returns the file's own (width, height), read from its header for free."""
    with Image.open(path) as im:
        size = im.size
        # draft() lets the JPEG decoder downscale by powers of two while decoding: far faster for big photos.
        im.draft("L" if grayscale else "RGB", (img_size, img_size))
        return to_model_array(im, img_size, grayscale), size


# An image is "odd" when resizing it to the training square loses or invents most of it: a side under a
# quarter of img_size (a 1x1 file, a thumbnail: upscaled into blur), an aspect ratio over 3:1 (a strip
# squashed into a square), or a side over 40x img_size (a whole photo, not a face crop: the face ends up a
# few pixels wide). Kept, since a user's data may be like that, but named at load time and by the audit.
ODD_UPSCALE, ODD_ASPECT, ODD_DOWNSCALE = 4.0, 3.0, 40.0


def odd_sizes(paths: Sequence[str], sizes: Sequence, img_size: int) -> list[tuple[str, tuple[int, int]]]:
    """The (path, (width, height)) of images far from the training size or shape (see ODD_UPSCALE above).

    Args:
        paths: image paths (as they should be named).
        sizes: their original (width, height).
        img_size: the square training size.
    """
    out = []
    for p, (w, h) in zip(paths, sizes):
        small, large = min(w, h), max(w, h)
        if small * ODD_UPSCALE < img_size or large > ODD_ASPECT * max(small, 1) or large > ODD_DOWNSCALE * img_size:
            out.append((str(p), (int(w), int(h))))
    return out


def _warn_odd_sizes(where: Path, paths: Sequence[str], sizes: Sequence | None, img_size: int) -> None:
    odd = odd_sizes(paths, sizes or [], img_size)
    if odd:
        shown = "; ".join(f"{p} ({w}x{h})" for p, (w, h) in odd[:20]) + (" ..." if len(odd) > 20 else "")
        warnings.warn(f"{where}: {len(odd)} image(s) far from the {img_size}x{img_size} training size or shape, kept and "
                      f"resized to it (check they are face crops): {shown}", stacklevel=3)


def _default_cache_dir() -> Path:
    env = os.environ.get("FER_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fer_core"


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder ``load_split`` caches decoded images in. Args: cache_dir: the config's (None: the default)."""
    return Path(cache_dir) if cache_dir else _default_cache_dir()


def _cache_key(files: SplitFiles, img_size: int, grayscale: bool) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{img_size}|{int(grayscale)}|{','.join(files.classes)}|".encode())
    for p, label in zip(files.paths, files.labels):
        st = p.stat()
        h.update(f"{p.relative_to(files.root)}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return h.hexdigest()[:20]


def _decode_all(files: SplitFiles, img_size: int, grayscale: bool, strict: bool) -> SplitData:
    shape = (img_size, img_size) if grayscale else (img_size, img_size, 3)
    images = np.empty((len(files.paths),) + shape, dtype=np.uint8)
    keep, skipped, sizes = [], [], []
    for i, p in enumerate(files.paths):
        try:
            images[len(keep)], size = decode_with_size(p, img_size, grayscale)
        except PermissionError:
            # Not corrupt, and not skipped: the cache is keyed by size and mtime, which chmod leaves alone, so a
            # skip would outlive the fix.
            raise DataError(f"{p}: permission denied; make the file readable (chmod a+r) or move it out of the class folder") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, UnidentifiedImageError) as e:
            if strict:
                raise DataError(f"{p}: corrupt or truncated image ({e}); replace or delete it (or set strict: false to skip such files)") from None
            skipped.append(str(p))
            continue
        keep.append(i)
        sizes.append(size)
    if skipped:
        shown = "; ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        warnings.warn(f"{files.root / files.split}: skipped {len(skipped)} corrupt or truncated image(s): {shown}", stacklevel=3)
    labels = np.asarray([files.labels[i] for i in keep], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(files.classes))
    for c, n in enumerate(counts):
        if n == 0:
            raise DataError(f"{files.root / files.split / files.classes[c]}: no readable image left after skipping corrupt files; add valid images")
    return SplitData(files.split, files.classes, images[: len(keep)], labels,
                     [str(files.paths[i].relative_to(files.root)) for i in keep], skipped, sizes)


def load_split(
    root: str | os.PathLike,
    split: str,
    img_size: int,
    grayscale: bool = True,
    strict: bool = False,
    cache_dir: str | os.PathLike | None = None,
    classes: Sequence[str] = CLASS_NAMES,
) -> SplitData:
    """Check, decode (once) and return a split as uint8 arrays.

    The decoded array is cached as ``<cache_dir>/<key>.npy`` plus ``<key>.json``; the key covers every
    file's relative path, size and mtime, the target size and colour mode, so any change re-decodes.
    An exclusive file lock makes two processes (trials on one node) decode once between them, and both
    files are written to temporary names and renamed into place, so a reader never sees half a cache.

    Args:
        root: dataset root.
        split: split folder name.
        img_size: square size to resize to.
        grayscale: decode as 1-channel.
        strict: raise on a corrupt image instead of warning and skipping it.
        cache_dir: cache folder (None: $FER_CACHE_DIR or ~/.cache/fer_core).
        classes: expected class folder names in label order.

    Raises:
        DataError: see ``scan_split``; corrupt files when ``strict``.
    """
    files = scan_split(root, split, classes)
    cache = cache_folder(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{cache}: cannot create the image cache folder ({e.strerror}); set cache_dir or $FER_CACHE_DIR to a writable folder") from None
    key = _cache_key(files, img_size, grayscale)
    npy, meta_path = cache / f"{split}-{key}.npy", cache / f"{split}-{key}.json"
    lock = _open_lock(cache / f"{split}-{key}.lock")
    if lock is None:
        # A read-only cache (shared, or on a read-only mount) is fine when it is complete: its files are
        # only ever renamed into place whole, so reading without the lock is safe.
        if meta_path.exists() and npy.exists():
            return _read_cache(npy, meta_path, Path(root) / split, img_size, strict)
        raise DataError(f"{cache}: the image cache folder is not writable and holds no finished cache of {Path(root) / split} "
                        f"at {img_size} px; set cache_dir or $FER_CACHE_DIR to a writable folder")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the with-block ends; released by the OS on crash
        if meta_path.exists() and npy.exists():
            return _read_cache(npy, meta_path, Path(root) / split, img_size, strict)
        # Under the lock no other writer of this key is running: its temporaries are a killed writer's.
        for stale in cache.glob(f".{split}-{key}.*"):
            stale.unlink(missing_ok=True)
        log.info("decoding %d images of %s/%s at %d px into %s", len(files.paths), root, split, img_size, npy)
        data = _decode_all(files, img_size, grayscale, strict)
        _warn_odd_sizes(Path(root) / split, data.paths, data.sizes, img_size)
        meta = {"classes": list(data.classes), "labels": data.labels.tolist(), "paths": data.paths,
                "skipped": data.skipped, "sizes": [list(s) for s in data.sizes]}
        for target, write in ((npy, lambda f: np.save(f, data.images)), (meta_path, lambda f: f.write(json.dumps(meta).encode()))):
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{target.name}.")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users' jobs on a shared node read it too
            os.replace(tmp, target)  # the .json goes last: its presence marks a complete cache
        return data


def _open_lock(path: Path):
    """The lock file opened for writing, or None when the cache folder is read-only to this process."""
    try:
        return open(path, "w")
    except PermissionError:
        return None
    except OSError as e:
        if e.errno == errno.EROFS:
            return None
        raise


def _read_cache(npy: Path, meta_path: Path, where: Path, img_size: int, strict: bool) -> SplitData:
    """A finished cache, with the warnings its decode gave (skipped files, odd sizes) repeated."""
    meta = json.loads(meta_path.read_text())
    if meta["skipped"]:
        if strict:
            raise DataError(f"{meta['skipped'][0]}: corrupt or truncated image; replace or delete it (or set strict: false to skip such files)")
        warnings.warn(f"{where}: skipped {len(meta['skipped'])} corrupt or truncated image(s): {'; '.join(meta['skipped'][:20])}", stacklevel=3)
    sizes = meta.get("sizes")  # absent in caches written before sizes were recorded
    _warn_odd_sizes(where, meta["paths"], sizes, img_size)
    # mmap: trials on one node share the page cache instead of each holding a copy.
    images = np.load(npy, mmap_mode="r")
    return SplitData(where.name, tuple(meta["classes"]), images, np.asarray(meta["labels"], dtype=np.int64), meta["paths"],
                     meta["skipped"], [tuple(s) for s in sizes] if sizes else None)


def stratified_indices(labels: np.ndarray, max_samples: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified subset of at most ``max_samples`` (each class keeps its share, >= 1).

    Args:
        labels: int labels of the full split.
        max_samples: subset size; 0 or >= len(labels) keeps everything.
        seed: the subset is part of the data definition, so it has its own seed (not the training seed).
    """
    n = len(labels)
    if max_samples <= 0 or max_samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    out = []
    for c, count in enumerate(counts):
        if count == 0:
            continue
        take = max(1, int(round(max_samples * count / n)))
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=min(take, count), replace=False))
    return np.sort(np.concatenate(out))


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` pairs in a seeded per-epoch shuffle.

    Carrying the epoch inside each key lets the dataset seed every sample's augmentation from
    (seed, epoch, index): the same run gives the same images whether it was resumed or not, and
    whichever worker process draws the sample.
    """

    def __init__(self, n: int, seed: int, num_samples: int | None = None):
        self.n, self.seed, self.epoch = n, seed, 0
        self.num_samples = num_samples or n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        reps = -(-self.num_samples // self.n)  # ceil: a capped epoch may need more than one pass
        order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(reps)])[: self.num_samples]
        return iter([(self.epoch, int(i)) for i in order])


class FerDataset(torch.utils.data.Dataset):
    """Serves (uint8 image tensor, label) from a decoded split, augmented when a transform is given.

    Args:
        data: the decoded split.
        indices: which rows to use (a subset), default all.
        transform: an albumentations Compose (or None for evaluation).
        seed: base seed of the per-sample augmentation randomness.
    """

    def __init__(self, data: SplitData, indices: np.ndarray | None = None, transform=None, seed: int = 0):
        self.images, self.labels = data.images, data.labels
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        row = int(self.indices[i])
        img = np.asarray(self.images[row])
        if self.transform is not None:
            # Reseeding per sample costs a few microseconds and buys exact reproducibility (see EpochSampler).
            self.transform.set_random_seed((self.seed * 1_000_003 + epoch * 65_537 + row) % (2**32))
            img = self.transform(image=img)["image"]
        # A copy (2 KB at 48 px): a row of the read-only memory-mapped cache must not reach torch as is.
        return torch.from_numpy(np.array(img, dtype=np.uint8, order="C")), int(self.labels[row])


def iter_batches(data: SplitData, indices: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Plain sequential (uint8 images, labels) batches for evaluation: no workers, no per-sample calls."""
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        yield torch.from_numpy(np.ascontiguousarray(data.images[idx])), torch.from_numpy(data.labels[idx])
