"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over it.

A process killed at any instant leaves the old file or the new one, never half of one; a failed write
(a full disk) removes its temporary file and leaves the old file as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Temporary files are ".<target name>.<random>.tmp" beside the target (a hidden name no reader lists).
TMP_SUFFIX = ".tmp"


def write_atomic(target: str | os.PathLike, write, mode: int | None = None) -> int:
    """Write ``target`` with ``write(f)`` (a binary file) through a temporary file renamed into place;
    ``mode``: its permission bits (default mkstemp's 0600). Returns the size written in bytes.
    An OSError (e.g. ENOSPC) propagates after the temporary file is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size
