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
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).is_absolute()
    ):
        raise FerError(
            f"{source} = {name!r}: give a plain folder name (no '/', not '..' or empty); the experiment "
            "goes to STORAGE/NAME and must stay inside --storage"
        )


def check_writable(folder: str, what: str) -> None:
    """Create ``folder`` and write a probe file in it; for a URI, write and delete a probe object.

    Args:
        folder: a local path or a URI (``s3://bucket/prefix``).
        what: the folder's role, named in the message.

    Raises:
        FerError: it cannot be created or written (for a URI: no bucket, no server, no credentials).
    """
    if "://" in folder:
        # Ray would only find out at the first checkpoint, with a traceback per trial.
        from sweeps.storage import check_uri_writable

        check_uri_writable(folder, what)
        return
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise FerError(
            f"{path}: {what} is not a writable folder ({e.strerror or e}); pass a writable folder"
        ) from None


def check_cache(settings, data: str) -> None:
    """The decoded-image cache must be writable, or (read-only) already hold the splits the trials read.

    Args:
        settings: the sweep settings (their ``train`` config names the cache, size and colour mode).
        data: the dataset root.

    Raises:
        FerError: neither (load_split's one-line DataError names the folder and the fix).
    """
    from fer_core.decode_cache import cache_folder, load_split

    t = settings.train
    try:
        check_writable(
            str(cache_folder(t.cache_dir or None)), "the image cache (cache_dir or $FER_CACHE_DIR)"
        )
    except FerError:
        for split in (
            "train",
            "val",
        ):  # finished caches load at once; a missing one gives the one-line reason
            load_split(data, split, t.img_size, t.grayscale, cache_dir=t.cache_dir or None)


def storage_uri(storage: str) -> str:
    """Ray wants an absolute local path or a URI."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def experiment_uri(settings) -> str:
    """STORAGE/NAME: the experiment folder (a path or a URI) the sweep, the retrain and the report share."""
    return f"{storage_uri(settings.storage)}/{settings.name}"
