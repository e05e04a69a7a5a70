"""The decode-once cache: ``load_split`` decodes a split (``data.decode_split``) once and keeps it on disk.

The cache is ``<cache_dir>/<split>-<key>.npy`` plus ``.json``, keyed by the files' paths, sizes, mtimes,
labels and the target size and colour mode (``CACHE_VERSION`` guards its format). The ``.json`` is also the
entry's record of what its ``.npy`` must be (byte size, dtype, shape, image count, key): an entry that does
not match it (a truncated or replaced file, a full disk, a crafted array) is named in one warning, deleted
and decoded again, never trusted and never unpickled. Concurrency lives here too: a file lock so that
trials on one node decode once, and atomic renames so a reader never sees half a cache. Split from ``data``
along that seam: this module is about persisting and sharing decoded arrays, ``data`` about what the files
are and how they decode.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import write_atomic
from .data import SplitData, SplitFiles, decode_split, odd_sizes, scan_split, skip_warnings
from .errors import DataError

log = logging.getLogger(__name__)

# Bump when the cache's content or format changes, so old caches are never read as new ones.
CACHE_VERSION = 2


class _Damaged(Exception):
    """A cache entry that does not match its record: ``path`` is the file at fault, ``reason`` what is wrong."""

    def __init__(self, path: Path, reason: object):
        super().__init__(path, reason)
        self.path = path
        self.reason = " ".join(str(reason).split())  # one line: it goes into a warning or a DataError


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
    classes: Sequence[str] | None = None,
) -> SplitData:
    """Check, decode (once) and return a split as uint8 arrays.

    The decoded array is cached as ``<cache_dir>/<key>.npy`` plus ``<key>.json``; the key covers every
    file's relative path, size and mtime, the target size and colour mode, so any change re-decodes.
    An exclusive file lock makes two processes (trials on one node) decode once between them, and both
    files are written to temporary names and renamed into place, so a reader never sees half a cache.
    An entry that does not match its ``.json`` record is named in a warning, deleted and decoded again.

    Args:
        root: dataset root.
        split: split folder name.
        img_size: square size to resize to.
        grayscale: decode as 1-channel.
        strict: raise on a corrupt image instead of warning and skipping it.
        cache_dir: cache folder (None: $FER_CACHE_DIR or ~/.cache/fer_core).
        classes: expected class folder names in label order (None: the folders found, sorted).

    Raises:
        DataError: see ``scan_split``; corrupt files when ``strict``; a read-only cache folder without a
            usable entry for the split.
    """
    return load_files(scan_split(root, split, classes), img_size, grayscale, strict, cache_dir)


def load_dataset(
    dataset, split: str, img_size: int, grayscale: bool = True, strict: bool = False, cache_dir=None
):
    """One split of a ``datasets.Dataset``: each dataset's files loaded as ``load_files`` does, then joined in
    the dataset's order, ``source`` saying which dataset each image came from."""
    parts = [
        (i, dataset.files[split][s.name])
        for i, s in enumerate(dataset.sources)
        if s.name in dataset.files[split]
    ]
    loaded = [(i, load_files(f, img_size, grayscale, strict, cache_dir)) for i, f in parts]
    if len(loaded) == 1:
        i, d = loaded[0]
        d.source = np.full(len(d), i, dtype=np.int64)
        return d
    return SplitData(
        split=split,
        classes=dataset.classes,
        images=np.concatenate([np.asarray(d.images) for _, d in loaded]),
        labels=np.concatenate([d.labels for _, d in loaded]),
        paths=[str(dataset.sources[i].root / p) for i, d in loaded for p in d.paths],  # several roots
        skipped=[p for _, d in loaded for p in d.skipped],
        sizes=[z for _, d in loaded for z in d.sizes],
        source=np.concatenate([np.full(len(d), i, dtype=np.int64) for i, d in loaded]),
    )


def load_files(
    files: SplitFiles, img_size: int, grayscale: bool = True, strict: bool = False, cache_dir=None
) -> SplitData:
    """``load_split`` for files already found (``scan_split`` or ``datasets.resolve``)."""
    root, split = files.root, files.split
    cache = cache_folder(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"{cache}: cannot create the image cache folder ({e.strerror}); set cache_dir or $FER_CACHE_DIR to a writable folder"
        ) from None
    key = _cache_key(files, img_size, grayscale)
    npy, meta_path = cache / f"{split}-{key}.npy", cache / f"{split}-{key}.json"
    where = Path(root) / split
    expect = (key, len(files.paths), (img_size, img_size) if grayscale else (img_size, img_size, 3))
    lock = _open_lock(cache / f"{split}-{key}.lock")
    if lock is None:
        # A read-only cache (shared, or on a read-only mount) is fine when it is complete: its files are
        # only ever renamed into place whole, so reading without the lock is safe.
        damage = ""
        if meta_path.exists() and npy.exists():
            try:
                return _read_cache(npy, meta_path, where, img_size, strict, expect)
            except _Damaged as d:  # nowhere to rebuild it: say which file to delete
                damage = f" (its entry is damaged: {d.path.name}: {d.reason})"
        raise DataError(
            f"{cache}: the image cache folder is not writable and holds no finished cache of {where} "
            f"at {img_size} px{damage}; set cache_dir or $FER_CACHE_DIR to a writable folder"
        )
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the with-block ends; released by the OS on crash
        if meta_path.exists() and npy.exists():
            try:
                return _read_cache(npy, meta_path, where, img_size, strict, expect)
            except _Damaged as d:
                # Under the lock no reader of this key is checking it; one that already mapped the old
                # .npy keeps its (unlinked) pages, so deleting is safe, and it keeps the damage from repeating.
                try:
                    npy.unlink(missing_ok=True)
                    meta_path.unlink(missing_ok=True)
                except OSError as e:
                    raise DataError(
                        f"{d.path}: damaged image cache entry ({d.reason}) that cannot be deleted ({e.strerror}); "
                        f"delete it, or set cache_dir or $FER_CACHE_DIR to another folder"
                    ) from None
                warnings.warn(
                    f"{d.path}: damaged image cache entry ({d.reason}); deleted it and decoding {where} again",
                    stacklevel=2,
                )
        # Under the lock no other writer of this key is running: its temporaries are a killed writer's.
        for stale in cache.glob(f".{split}-{key}.*"):
            stale.unlink(missing_ok=True)
        log.info("decoding %d images of %s/%s at %d px into %s", len(files.paths), root, split, img_size, npy)
        data = decode_split(files, img_size, grayscale, strict)
        _warn_odd_sizes(where, data.paths, data.sizes, img_size)
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "dtype": str(data.images.dtype),
            "shape": list(data.images.shape),
            "classes": list(data.classes),
            "labels": data.labels.tolist(),
            "paths": data.paths,
            "skipped": data.skipped,
            "sizes": [list(s) for s in data.sizes],
        }
        meta["nbytes"] = _publish(npy, lambda f: np.save(f, data.images, allow_pickle=False))
        _publish(meta_path, lambda f: f.write(json.dumps(meta).encode()))  # last: it marks a complete entry
        return data


def _publish(target: Path, write) -> int:
    """Write ``target`` atomically (other users' jobs on a shared node read it: mode 0644); returns its size
    in bytes. A full disk is a one-line DataError, and no temporary file is left behind."""
    try:
        return write_atomic(target, write, mode=0o644)
    except OSError as e:  # numpy's short write has no strerror: say the space left
        free = shutil.disk_usage(target.parent).free / 2**20
        raise DataError(
            f"{target.parent}: cannot write the image cache ({e.strerror or e}; {free:.1f} MiB free there); "
            "free space there, or set cache_dir or $FER_CACHE_DIR to a folder with room"
        ) from None


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


def _read_cache(npy: Path, meta_path: Path, where: Path, img_size: int, strict: bool, expect) -> SplitData:
    """A finished cache, checked (``_check_entry``), with the warnings its decode gave repeated.

    Raises:
        _Damaged: the entry does not match its record or the split.
        DataError: the split holds corrupt files and ``strict``.
    """
    meta, images = _check_entry(npy, meta_path, *expect)
    if meta["skipped"]:
        if strict:
            raise DataError(
                f"{meta['skipped'][0]}: corrupt or truncated image; replace or delete it (or set strict: false to skip such files)"
            )
        for line in skip_warnings(where, meta["skipped"]):
            warnings.warn(line, stacklevel=3)
    sizes = [tuple(s) for s in meta["sizes"]]
    _warn_odd_sizes(where, meta["paths"], sizes, img_size)
    return SplitData(
        where.name,
        tuple(meta["classes"]),
        images,
        np.asarray(meta["labels"], dtype=np.int64),
        meta["paths"],
        meta["skipped"],
        sizes,
    )


def _check_entry(
    npy: Path, meta_path: Path, key: str, n_files: int, item_shape: tuple
) -> tuple[dict, np.ndarray]:
    """An entry's record and its images (memory-mapped), checked against each other and the split.

    Args:
        key: the split's cache key; n_files: its image files (kept plus skipped); item_shape: one image's.

    Raises:
        _Damaged: naming the file at fault and what is wrong with it.
    """
    try:
        meta = json.loads(meta_path.read_bytes())
    except (OSError, ValueError) as e:  # a bad UTF-8 or JSON text is a ValueError
        raise _Damaged(meta_path, f"unreadable record: {e}") from None
    problem = _record_problem(meta, key, n_files, item_shape)
    if problem:
        raise _Damaged(meta_path, problem)
    try:
        size = npy.stat().st_size
        if size != meta["nbytes"]:
            raise _Damaged(npy, f"{size} bytes, its record says {meta['nbytes']}")
        # mmap: trials on one node share the page cache instead of each holding a copy. allow_pickle=False:
        # an object array (a crafted file) is refused, never unpickled.
        images = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _Damaged(npy, f"unreadable array: {e}") from None
    shape = tuple(meta["shape"])
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape != shape:
        found = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise _Damaged(npy, f"holds {found}, its record says uint8 {shape}")
    return meta, images


def _record_problem(meta, key: str, n_files: int, item_shape: tuple) -> str | None:
    """What is wrong with a parsed ``.json`` record (None: nothing), checked before any of it is used."""
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        return f"not a version {CACHE_VERSION} cache record"
    if meta.get("key") != key:
        return f"the record of another file list (key {str(meta.get('key'))[:20]}, not {key})"
    try:
        n, classes, skipped = len(meta["labels"]), meta["classes"], meta["skipped"]
        if n + len(skipped) != n_files:
            return f"{n} images and {len(skipped)} skipped, the split has {n_files} files"
        if meta["dtype"] != "uint8" or meta["shape"] != [n, *item_shape]:
            return f"records {meta['dtype']} {meta['shape']}, expected uint8 {[n, *item_shape]}"
        ok = (
            type(meta["nbytes"]) is int
            and all(type(meta[k]) is list for k in ("classes", "labels", "paths", "skipped", "sizes"))
            and len(meta["paths"]) == len(meta["sizes"]) == n
            and all(type(c) is int and 0 <= c < len(classes) for c in meta["labels"])
            and all(type(p) is str for p in classes + meta["paths"] + skipped)
            and all(len(s) == 2 and all(type(v) is int for v in s) for s in meta["sizes"])
        )
    except (KeyError, TypeError) as e:
        return f"a malformed record ({type(e).__name__}: {e})"
    return None if ok else "a malformed record (a field of the wrong type or length)"


def load_args(cfg) -> dict:
    """``load_split``'s keyword arguments for a TrainConfig's splits: its size, colour mode, strictness, cache."""
    return dict(
        img_size=cfg.img_size, grayscale=cfg.grayscale, strict=cfg.strict, cache_dir=cfg.cache_dir or None
    )
