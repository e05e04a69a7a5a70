"""The decode-once cache: ``load_split`` decodes a split (``data.decode_split``) once and keeps it on disk.

The cache is ``<cache_dir>/<split>-<key>.npy`` plus ``.json``, keyed by the files' paths, sizes, mtimes,
labels and the target size and colour mode (``CACHE_VERSION`` guards its format). Concurrency lives here
too: a file lock so that trials on one node decode once, and atomic renames so a reader never sees half a
cache. Split from ``data`` along that seam: this module is about persisting and sharing decoded arrays,
``data`` about what the files are and how they decode.
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data import CLASS_NAMES, SplitData, SplitFiles, decode_split, odd_sizes, scan_split
from .errors import DataError

log = logging.getLogger(__name__)

# Bump when the cache's content or format changes, so old caches are never read as new ones.
CACHE_VERSION = 1


def _warn_odd_sizes(where: Path, paths: Sequence[str], sizes: Sequence, img_size: int) -> None:
    odd = odd_sizes(paths, sizes, img_size)
    if odd:
        shown = "; ".join(f"{p} ({w}x{h})" for p, (w, h) in odd[:20]) + (" ..." if len(odd) > 20 else "")
        warnings.warn(
            f"{where}: {len(odd)} image(s) far from the {img_size}x{img_size} training size or shape, kept and "
            f"resized to it (check they are face crops): {shown}",
            stacklevel=3,
        )


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
        raise DataError(
            f"{cache}: cannot create the image cache folder ({e.strerror}); set cache_dir or $FER_CACHE_DIR to a writable folder"
        ) from None
    key = _cache_key(files, img_size, grayscale)
    npy, meta_path = cache / f"{split}-{key}.npy", cache / f"{split}-{key}.json"
    lock = _open_lock(cache / f"{split}-{key}.lock")
    if lock is None:
        # A read-only cache (shared, or on a read-only mount) is fine when it is complete: its files are
        # only ever renamed into place whole, so reading without the lock is safe.
        if meta_path.exists() and npy.exists():
            return _read_cache(npy, meta_path, Path(root) / split, img_size, strict)
        raise DataError(
            f"{cache}: the image cache folder is not writable and holds no finished cache of {Path(root) / split} "
            f"at {img_size} px; set cache_dir or $FER_CACHE_DIR to a writable folder"
        )
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the with-block ends; released by the OS on crash
        if meta_path.exists() and npy.exists():
            return _read_cache(npy, meta_path, Path(root) / split, img_size, strict)
        # Under the lock no other writer of this key is running: its temporaries are a killed writer's.
        for stale in cache.glob(f".{split}-{key}.*"):
            stale.unlink(missing_ok=True)
        log.info("decoding %d images of %s/%s at %d px into %s", len(files.paths), root, split, img_size, npy)
        data = decode_split(files, img_size, grayscale, strict)
        _warn_odd_sizes(Path(root) / split, data.paths, data.sizes, img_size)
        meta = {
            "classes": list(data.classes),
            "labels": data.labels.tolist(),
            "paths": data.paths,
            "skipped": data.skipped,
            "sizes": [list(s) for s in data.sizes],
        }
        for target, write in (
            (npy, lambda f: np.save(f, data.images)),
            (meta_path, lambda f: f.write(json.dumps(meta).encode())),
        ):
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
            raise DataError(
                f"{meta['skipped'][0]}: corrupt or truncated image; replace or delete it (or set strict: false to skip such files)"
            )
        warnings.warn(
            f"{where}: skipped {len(meta['skipped'])} corrupt or truncated image(s): {'; '.join(meta['skipped'][:20])}",
            stacklevel=3,
        )
    sizes = [tuple(s) for s in meta["sizes"]]
    _warn_odd_sizes(where, meta["paths"], sizes, img_size)
    # mmap: trials on one node share the page cache instead of each holding a copy.
    images = np.load(npy, mmap_mode="r")
    return SplitData(
        where.name,
        tuple(meta["classes"]),
        images,
        np.asarray(meta["labels"], dtype=np.int64),
        meta["paths"],
        meta["skipped"],
        sizes,
    )
