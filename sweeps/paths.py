"""Checks of where a sweep writes, run by the driver before Ray starts so that each problem is one line:
the experiment name stays inside the storage folder, and the storage and image-cache folders are usable."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fer_core.errors import FerError


def check_name(name: str, source: str) -> None:
    """The experiment folder is STORAGE/NAME: a name must stay one folder inside STORAGE.

    Args:
        name: the experiment name.
        source: where it came from ("--name" or the YAML file), named in the message.

    Raises:
        FerError: empty, '.', '..', absolute, or holding a path separator.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        raise FerError(f"{source} = {name!r}: give a plain folder name (no '/', not '..' or empty); the experiment "
                       "goes to STORAGE/NAME and must stay inside --storage")


def check_writable(folder: str, what: str) -> None:
    """Create ``folder`` and write a probe file in it (a URI is left to Ray).

    Args:
        folder: a local path or a URI.
        what: the folder's role, named in the message.

    Raises:
        FerError: it cannot be created or written.
    """
    if "://" in folder:
        return
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise FerError(f"{path}: {what} is not a writable folder ({e.strerror or e}); pass a writable folder") from None


def check_cache(settings, data: str) -> None:
    """The decoded-image cache must be writable, or (read-only) already hold the splits the trials read.

    Args:
        settings: the sweep settings (their ``train`` config names the cache, size and colour mode).
        data: the dataset root.

    Raises:
        FerError: neither (load_split's one-line DataError names the folder and the fix).
    """
    from fer_core.data import cache_folder, load_split

    t = settings.train
    try:
        check_writable(str(cache_folder(t.cache_dir or None)), "the image cache (cache_dir or $FER_CACHE_DIR)")
    except FerError:
        for split in ("train", "val"):  # finished caches load at once; a missing one gives the one-line reason
            load_split(data, split, t.img_size, t.grayscale, cache_dir=t.cache_dir or None)
