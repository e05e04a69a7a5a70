"""Procedural, download-free facial-expression demo dataset.

The product needs data that works out of the box (no downloads, no licences,
no network), so the package *draws* simple cartoon faces showing the seven
basic expressions and this module writes them in the ``ImageFolder`` layout
that the training code consumes::

    root/train/<class>/*.png
    root/val/<class>/*.png
    root/test/<class>/*.png

Every image is an 8-bit grayscale (``'L'``) PNG of ``img_size x img_size``
pixels, like FER2013. The faces vary in identity (face shape, feature spacing,
eye size, hair), in expression intensity, pose (in-plane rotation, shift,
scale), lighting, blur and noise, so a small CNN can learn the task well above
chance without solving it perfectly at once.

This module holds the dataset side: the splits, the per-image seeds, the
atomic cached copy (``ensure_demo_dataset``) and the command line. How one face
is drawn is ``demo_faces.draw_face``.

Command line::

    python -m fer_core.apps.demo OUT_DIR [--train-per-class N] [--val-per-class N]
        [--test-per-class N] [--img-size N] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from ..data import CLASS_NAMES  # the expression classes (folder names), defined once in data.py
from .demo_faces import draw_face

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "SPLITS",
    "make_demo_dataset",
    "ensure_demo_dataset",
    "main",
]

#: Part of every cached copy's name: bump it whenever the drawing (``demo_faces``) changes, so
#: ``ensure_demo_dataset`` never reuses a copy drawn otherwise.
GENERATOR_VERSION = 1

#: Dataset splits, in a fixed order: the index is part of each image's seed.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Name of the marker file written last into a finished cached dataset.
COMPLETE_MARKER = ".complete"

PathLike = Union[str, "os.PathLike[str]"]


def _validate(
    train_per_class: int, val_per_class: int, test_per_class: int, img_size: int, seed: int
) -> None:
    for name, value in (
        ("train_per_class", train_per_class),
        ("val_per_class", val_per_class),
        ("test_per_class", test_per_class),
    ):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if int(img_size) != img_size or img_size < 16:
        raise ValueError(f"img_size must be an integer >= 16, got {img_size!r}")
    # numpy's SeedSequence only accepts non-negative integers.
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def make_demo_dataset(
    root: PathLike,
    train_per_class: int = 200,
    val_per_class: int = 60,
    test_per_class: int = 60,
    img_size: int = 48,
    seed: int = 0,
) -> Path:
    """Write the procedural demo dataset under ``root`` in ImageFolder layout.

    Creates ``root/{train,val,test}/<class>/NNNNN.png`` for every class in
    ``CLASS_NAMES``. Generation is deterministic for a given seed and
    order-independent: each image has its own random generator seeded from
    ``(seed, split index, class index, image index)``.

    Args:
        root: Output directory; created if missing. Existing files with the same
            names are overwritten.
        train_per_class: Number of training images per class.
        val_per_class: Number of validation images per class.
        test_per_class: Number of test images per class.
        img_size: Side length in pixels of the square grayscale images (>= 16).
        seed: Non-negative integer seed.

    Returns:
        ``root`` as a ``pathlib.Path``.

    Raises:
        ValueError: If a count is negative, ``img_size`` < 16 or ``seed`` < 0.
    """
    _validate(train_per_class, val_per_class, test_per_class, img_size, seed)
    root = Path(root)
    counts = dict(zip(SPLITS, (int(train_per_class), int(val_per_class), int(test_per_class))))
    for split_idx, split in enumerate(SPLITS):
        for class_idx, label in enumerate(CLASS_NAMES):
            out_dir = root / split / label
            out_dir.mkdir(parents=True, exist_ok=True)
            for i in range(counts[split]):
                rng = np.random.default_rng([int(seed), split_idx, class_idx, i])
                arr = draw_face(label, rng, int(img_size))
                # Low compression level: files are tiny anyway, and it keeps
                # generation fast.
                Image.fromarray(arr).save(out_dir / f"{i:05d}.png", compress_level=1)
    return root


def _default_cache_dir() -> Path:
    env = os.environ.get("FER_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fer_core" / "demo"


def _cache_name(
    train_per_class: int, val_per_class: int, test_per_class: int, img_size: int, seed: int
) -> str:
    return (
        f"demo-v{GENERATOR_VERSION}-s{img_size}"
        f"-n{train_per_class}-{val_per_class}-{test_per_class}-seed{seed}"
    )


def ensure_demo_dataset(
    cache_dir: PathLike | None = None,
    train_per_class: int = 200,
    val_per_class: int = 60,
    test_per_class: int = 60,
    img_size: int = 48,
    seed: int = 0,
) -> Path:
    """Return the path of a cached copy of the demo dataset, generating it once.

    The cached folder name encodes every parameter and ``GENERATOR_VERSION``
    (e.g. ``demo-v1-s48-n200-60-60-seed0``), so changed settings or another
    ``GENERATOR_VERSION`` never reuse stale data. Safe when several processes call it at
    once: each generates into its own temporary directory beside the target,
    writes the ``.complete`` marker last and atomically renames the directory
    into place; a process that loses the race discards its copy and uses the
    winner's.

    Args:
        cache_dir: Directory holding cached datasets. Defaults to the
            ``FER_DEMO_DIR`` environment variable, else ``~/.cache/fer_core/demo``.
        train_per_class: Number of training images per class.
        val_per_class: Number of validation images per class.
        test_per_class: Number of test images per class.
        img_size: Side length in pixels of the square grayscale images (>= 16).
        seed: Non-negative integer seed.

    Returns:
        Path of the dataset root (containing ``train``, ``val`` and ``test``).

    Raises:
        ValueError: On invalid parameters (see ``make_demo_dataset``).
        OSError: If the dataset cannot be written or moved into place.
    """
    _validate(train_per_class, val_per_class, test_per_class, img_size, seed)
    parent = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    name = _cache_name(
        int(train_per_class), int(val_per_class), int(test_per_class), int(img_size), int(seed)
    )
    target = parent / name
    if (target / COMPLETE_MARKER).is_file():
        return target

    parent.mkdir(parents=True, exist_ok=True)
    # Generate beside the target (same filesystem) so the final rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=str(parent)))
    try:
        make_demo_dataset(tmp, train_per_class, val_per_class, test_per_class, img_size, seed)
        # Marker last: its presence means every image is on disk.
        (tmp / COMPLETE_MARKER).write_text(f"{name}\n", encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process published the target first (ENOTEMPTY/EEXIST on
            # POSIX, FileExistsError on Windows): use its copy if complete.
            if not (target / COMPLETE_MARKER).is_file():
                raise
    finally:
        # Left only when the rename did not happen.
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: write the demo dataset to a directory.

    Args:
        argv: Argument list (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit code (0 on success).
    """
    parser = argparse.ArgumentParser(
        prog="python -m fer_core.apps.demo",
        description="Generate the procedural facial-expression demo dataset (ImageFolder layout).",
    )
    parser.add_argument("out_dir", help="output directory (created if missing)")
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=60)
    parser.add_argument("--test-per-class", type=int, default=60)
    parser.add_argument("--img-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = make_demo_dataset(
            args.out_dir,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            test_per_class=args.test_per_class,
            img_size=args.img_size,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
