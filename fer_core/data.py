"""What a dataset is and how one image becomes model input: the ImageFolder layout and the decoding rules.

``scan_split`` walks an ImageFolder split and checks its layout (fast, stat only); ``decode_split`` decodes
every file of it into uint8 arrays (``SplitData``), skipping or refusing corrupt files; ``to_model_array`` /
``decode_image`` are the one conversion of an image to the training size and colour mode, shared with
prediction; ``odd_sizes`` is the one rule for images far from that size or shape, shared with the audit.

Every problem is found here, before training: DataLoader workers only index an in-memory array, so they
cannot hit an unreadable file mid-epoch.

The seam: this module knows files and pixels only (no torch). Keeping decoded splits on disk
(``decode_cache.load_split``) and serving them to training (``dataset``) build on it; prediction needs
nothing but this.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

# Alphabetical, which is also ImageFolder's order: label i is CLASS_NAMES[i].
CLASS_NAMES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


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
    sizes: list[tuple[int, int]]  # (width, height) of each original file

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
        raise DataError(
            f"{root}: dataset folder not found; pass --data pointing at a folder with train/ and val/ inside"
        )
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir}: split folder missing; the dataset root needs train/ and val/ (test/ optional), each with the class folders {', '.join(classes)}"
        )
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and _visible(p))
    extra = [c for c in found if c not in classes]
    if extra:
        raise DataError(
            f"{split_dir / extra[0]}: unexpected class folder '{extra[0]}'; only {', '.join(classes)} are allowed: rename or remove it"
        )
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(
            f"{split_dir / missing[0]}: class folder missing; create it and put that class's images in it (every split needs all of {', '.join(classes)})"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not os.access(class_dir, os.R_OK | os.X_OK):  # rglob would see an empty folder
            raise DataError(
                f"{class_dir}: permission denied (the folder cannot be listed); make it readable, e.g. chmod -R a+rX"
            )
        files = sorted(
            p
            for p in class_dir.rglob("*")
            if p.is_file()
            and _visible(p)
            and all(_visible(q) for q in p.relative_to(class_dir).parents if str(q) != ".")
        )
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{p}: not an image file ({p.suffix or 'no extension'}); move it out of the class folder (images must be one of {' '.join(IMAGE_EXTENSIONS)})"
                )
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


def decode_with_size(
    path: str | os.PathLike, img_size: int, grayscale: bool
) -> tuple[np.ndarray, tuple[int, int]]:
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
        if (
            small * ODD_UPSCALE < img_size
            or large > ODD_ASPECT * max(small, 1)
            or large > ODD_DOWNSCALE * img_size
        ):
            out.append((str(p), (int(w), int(h))))
    return out


def decode_split(files: SplitFiles, img_size: int, grayscale: bool, strict: bool) -> SplitData:
    """Decode every file of a scanned split; corrupt ones are skipped with a warning (or raise when ``strict``).

    Raises:
        DataError: an unreadable (permission) file; a corrupt one when ``strict``; a class left empty.
    """
    shape = (img_size, img_size) if grayscale else (img_size, img_size, 3)
    images = np.empty((len(files.paths),) + shape, dtype=np.uint8)
    keep, skipped, sizes = [], [], []
    for i, p in enumerate(files.paths):
        try:
            images[len(keep)], size = decode_with_size(p, img_size, grayscale)
        except PermissionError:
            # Not corrupt, and not skipped: the cache is keyed by size and mtime, which chmod leaves alone, so a
            # skip would outlive the fix.
            raise DataError(
                f"{p}: permission denied; make the file readable (chmod a+r) or move it out of the class folder"
            ) from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, UnidentifiedImageError) as e:
            if strict:
                raise DataError(
                    f"{p}: corrupt or truncated image ({e}); replace or delete it (or set strict: false to skip such files)"
                ) from None
            skipped.append(str(p))
            continue
        keep.append(i)
        sizes.append(size)
    if skipped:
        shown = "; ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        warnings.warn(
            f"{files.root / files.split}: skipped {len(skipped)} corrupt or truncated image(s): {shown}",
            stacklevel=3,
        )
    labels = np.asarray([files.labels[i] for i in keep], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(files.classes))
    for c, n in enumerate(counts):
        if n == 0:
            raise DataError(
                f"{files.root / files.split / files.classes[c]}: no readable image left after skipping corrupt files; add valid images"
            )
    return SplitData(
        files.split,
        files.classes,
        images[: len(keep)],
        labels,
        [str(files.paths[i].relative_to(files.root)) for i in keep],
        skipped,
        sizes,
    )
