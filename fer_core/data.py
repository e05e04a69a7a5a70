"""What a dataset is and how one image becomes model input: the ImageFolder layout and the decoding rules.

``scan_split`` walks an ImageFolder split and checks its layout (fast, stat only); ``decode_split`` decodes
every file of it into uint8 arrays (``SplitData``), skipping or refusing corrupt files and files over the
pixel limit; ``open_image`` (``image_info``: its header read alone) is how training, the audit and prediction
read any file: upright (EXIF), refused unread over ``MAX_PIXELS``, Pillow's warnings made ``ImageWarning``s;
``to_model_array`` / ``decode_image`` are the one conversion of an image to the training size and colour
mode, shared with prediction; ``odd_sizes`` is the one rule for images far from that size or shape.

Every problem is found here, before training: DataLoader workers only index an in-memory array, so they
cannot hit an unreadable file mid-epoch.

The seam: this module knows files and pixels only (no torch). Keeping decoded splits on disk
(``decode_cache.load_split``) and serving them to training (``dataset``) build on it; prediction needs
nothing but this.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError

Size = tuple[int, int]  # (width, height) in pixels

# FER2013's seven expressions, in its folders' sorted order (the demo data draws them). Any other dataset's
# classes come from its own folders or the config (``fer_core.datasets``).
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
    source: np.ndarray | None = None  # per image, the index of its dataset (``datasets.Dataset.sources``)

    def __len__(self) -> int:
        return len(self.labels)


def _visible(p: Path) -> bool:
    # Hidden files (.DS_Store, editor swap files, our own cache folders) are never data.
    return not p.name.startswith(".")


def visible_folders(folder: Path) -> list[str]:
    """The sorted names of ``folder``'s visible sub-folders (its class folders, in a dataset)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p))


def list_images(class_dir: Path) -> list[Path]:
    """A class folder's image files (sub-folders included, hidden ones not), sorted.

    Raises:
        DataError: the folder cannot be listed, or holds a file that is not an image.
    """
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
    return files


def scan_split(root: str | os.PathLike, split: str, classes: Sequence[str] | None = None) -> SplitFiles:
    """Find a split's image files and check the layout: one folder per class, label i for ``classes[i]``.

    Args:
        root: dataset root holding ``split``/<class>/ folders.
        split: "train", "val" or "test".
        classes: the class folder names that must be present, in label order (None: the folders found,
            sorted). A mapping of folders onto other names is ``fer_core.datasets``'.

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
            f"{split_dir}: split folder missing; the dataset root needs train/ and val/ (test/ optional), each with the class folders"
        )
    found = visible_folders(split_dir)
    classes = tuple(classes) if classes is not None else tuple(found)
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
        files = list_images(split_dir / name)
        if not files:
            raise DataError(f"{split_dir / name}: class folder is empty; add at least one image of '{name}'")
        paths += files
        labels += [label] * len(files)
    return SplitFiles(root, split, classes, paths, labels)


# The most pixels a file may have to be read: 8000x8000, or a 45-50 MP camera's full frame; 192 MB as RGB.
# A larger file is named with its size and skipped without decoding a pixel (one 144 MP file decoded whole
# costs over 400 MB). Under Pillow's own threshold (89 MP), so Pillow never warns about a file read here.
MAX_PIXELS = 64_000_000

# EXIF orientation (tag 0x0112) -> the transpose that shows the file as a viewer does (ImageOps.exif_transpose's).
_T = Image.Transpose
_UPRIGHT = dict(enumerate((_T.FLIP_LEFT_RIGHT, _T.ROTATE_180, _T.FLIP_TOP_BOTTOM, _T.TRANSPOSE), 2))
_UPRIGHT.update(enumerate((_T.ROTATE_270, _T.TRANSVERSE, _T.ROTATE_90), 6))
_PILLOW_LIMIT = threading.Lock()  # serialises the rare header read with Pillow's bomb check switched off


class ImageTooLarge(DataError):
    """A file over the pixel limit, named with its ``size`` and the limit; no pixel of it was decoded."""

    def __init__(self, path, size: Size, limit: int):
        super().__init__(str(path), size, limit)  # the args rebuild it (pickle)
        self.size = size

    def __str__(self) -> str:
        path, (w, h), limit = self.args
        return (
            f"{path}: too large to decode: {w}x{h} pixels ({w * h / 1e6:.1f} MP) is over the pixel limit of "
            f"{limit / 1e6:g} MP (fer_core.data.MAX_PIXELS); downscale it"
        )


class ImageWarning(UserWarning):
    """What Pillow warned about while reading a file that was read all the same: one line naming the file."""


@dataclass(frozen=True)
class ImageInfo:
    """A file as a viewer shows it: (width, height) after EXIF ``orientation`` (1: none), its stored ``mode``."""

    size: Size
    mode: str
    orientation: int


def _info(im: Image.Image, stored: Size, decoded: bool) -> ImageInfo:
    o = 1
    if decoded or im.format != "PNG" or "exif" in im.info:  # a PNG's EXIF after its pixels needs a decode
        try:
            o = im.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - EXIF parsers raise assorted types; a broken tag must not cost the image
            pass
    o = o if o in _UPRIGHT else 1
    return ImageInfo(stored[::-1] if o in (5, 6, 7, 8) else stored, im.mode, o)


@contextmanager
def _own_warnings(path) -> Iterator[None]:
    """Pillow's warnings while reading ``path`` as ``ImageWarning``s naming it; none when the read fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    texts = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):  # about code: as it was
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        elif issubclass(w.category, Image.DecompressionBombWarning):
            texts.append(f"over Pillow's decompression-bomb threshold ({str(w.message).split(',')[0]})")
        else:
            texts.append(" ".join(str(w.message).split()))
    for text in dict.fromkeys(texts):
        warnings.warn(f"{path}: {text}; read all the same", ImageWarning, stacklevel=2)


@contextmanager
def _opened(path) -> Iterator[tuple[Image.Image, ImageInfo]]:
    """The file opened lazily (header read, no pixel decoded), checked against the pixel limit."""
    with _own_warnings(path):
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:  # past Pillow's hard limit: read the header without its check
            with _PILLOW_LIMIT:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    with Image.open(path) as im:
                        info = _info(im, im.size, decoded=False)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
            raise ImageTooLarge(path, info.size, min(MAX_PIXELS, 2 * saved)) from None
        with im:
            info = _info(im, im.size, decoded=False)
            if info.size[0] * info.size[1] > MAX_PIXELS:
                raise ImageTooLarge(path, info.size, MAX_PIXELS)
            yield im, info


def image_info(path: str | os.PathLike) -> ImageInfo:
    """``open_image``'s header read alone (nothing decoded). Raises: as ``open_image``."""
    with _opened(path) as (_, info):
        return info


def open_image(
    path: str | os.PathLike, draft: tuple[str | None, tuple[int, int]] | None = None
) -> tuple[Image.Image, ImageInfo]:
    """Read an image file as a viewer shows it: the one way training, the audit and prediction read files.

    The header is read first and a file over ``MAX_PIXELS`` refused before any pixel is decoded; the pixels
    are then decoded and turned upright by the EXIF orientation. Pillow's warnings become ``ImageWarning``s.
    Returns the upright image (detached from its file) and the ``ImageInfo`` of the original file.

    Args:
        path: image file.
        draft: (mode, (width, height)) for Pillow's ``draft``: a JPEG decodes at the largest power-of-two
            reduction that keeps at least that (upright) size, in ``mode`` when given; other formats ignore it.

    Raises:
        ImageTooLarge: over the pixel limit (a ``DataError`` naming the file, its size and the limit);
        OSError, ValueError, SyntaxError, EOFError: a missing, unreadable, corrupt or truncated file.
    """
    with _opened(path) as (im, info):
        stored = info.size[::-1] if info.orientation in (5, 6, 7, 8) else info.size
        if draft is not None:  # its size is upright: the file's own sides are the other way when turned
            im.draft(draft[0], draft[1][::-1] if info.orientation in (5, 6, 7, 8) else draft[1])
        im.load()  # corruption and truncation surface here
        info = _info(im, stored, decoded=True)  # a PNG's EXIF may follow its pixel data
        return (im.transpose(_UPRIGHT[info.orientation]) if info.orientation != 1 else im.copy()), info


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
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
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
    """One file read by ``open_image`` as uint8 img_size×img_size (×3 when not grayscale); raises as it does."""
    return decode_with_size(path, img_size, grayscale)[0]


def decode_with_size(path: str | os.PathLike, img_size: int, grayscale: bool) -> tuple[np.ndarray, Size]:
    """``decode_image`` that also returns the file's own (width, height), as a viewer shows it."""
    # The draft lets the JPEG decoder downscale by powers of two while decoding: far faster for big photos.
    im, info = open_image(path, draft=("L" if grayscale else "RGB", (img_size, img_size)))
    return to_model_array(im, img_size, grayscale), info.size


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


def skipped_reasons(skipped: Sequence[str]) -> tuple[list[str], list[tuple[str, Size]]]:
    """Skipped files told apart by their headers: (unreadable ones, [(one over the pixel limit, its size)])."""
    unreadable, too_large = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageWarning)  # said when the file was decoded
        for p in skipped:
            try:
                image_info(p)
                unreadable.append(p)  # a readable header: its pixels are corrupt or truncated
            except ImageTooLarge as e:
                too_large.append((p, e.size))
            except (OSError, ValueError, SyntaxError, EOFError):
                unreadable.append(p)
    return unreadable, too_large


def skip_warnings(where: str | os.PathLike, skipped: Sequence[str]) -> list[str]:
    """The warnings naming a split's skipped files: the corrupt ones, and those over the pixel limit."""
    unreadable, too_large = skipped_reasons(skipped)
    big = [f"{p} ({w}x{h})" for p, (w, h) in too_large]
    limit = f"over the pixel limit of {MAX_PIXELS / 1e6:g} MP (fer_core.data.MAX_PIXELS), not decoded"
    kinds = {"corrupt or truncated image(s)": unreadable, f"image(s) {limit}; downscale them": big}
    return [
        f"{where}: skipped {len(v)} {k}: " + "; ".join(v[:20]) + (" ..." if len(v) > 20 else "")
        for k, v in kinds.items()
        if v
    ]


def decode_split(files: SplitFiles, img_size: int, grayscale: bool, strict: bool) -> SplitData:
    """Decode every file of a scanned split, skipping (refusing when ``strict``) corrupt files and those over
    the pixel limit, each kind named in one warning, as are Pillow's warnings about the files kept.

    Raises:
        DataError: an unreadable (permission) file; a corrupt or over-limit one when ``strict``; an empty class.
    """
    shape = (img_size, img_size) if grayscale else (img_size, img_size, 3)
    images = np.empty((len(files.paths),) + shape, dtype=np.uint8)
    keep, skipped, sizes = [], [], []
    where = files.root / files.split
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageWarning)
        for i, p in enumerate(files.paths):
            try:
                images[len(keep)], size = decode_with_size(p, img_size, grayscale)
            except PermissionError:
                # Not corrupt, and not skipped: the cache key (size, mtime) ignores chmod, so a skip would stay.
                raise DataError(
                    f"{p}: permission denied; make the file readable (chmod a+r) or move it out of the class folder"
                ) from None
            except (ImageTooLarge, OSError, ValueError, SyntaxError, EOFError) as e:
                too_large = isinstance(e, ImageTooLarge)
                why = f"{e} or" if too_large else f"{p}: corrupt or truncated image ({e}); replace or"
                if strict:
                    raise DataError(f"{why} delete it (or set strict: false to skip such files)") from None
                skipped.append(str(p))
                continue
            keep.append(i)
            sizes.append(size)
    for message in skip_warnings(where, skipped):
        warnings.warn(message, stacklevel=3)
    said = [w.message for w in caught if issubclass(w.category, ImageWarning)]
    if said:  # one warning, not one per file: a data set may hold thousands of such files
        said = f"{where}: {len(said)} image(s) read despite Pillow warnings, e.g. {said[0]}"
        warnings.warn(said, ImageWarning, stacklevel=3)
    for w in (w for w in caught if not issubclass(w.category, ImageWarning)):  # not about files: as they were
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    labels = np.asarray([files.labels[i] for i in keep], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(files.classes))
    listed = np.bincount(np.asarray(files.labels, dtype=np.int64), minlength=len(files.classes))
    for c, n in enumerate(counts):
        if n == 0 and listed[c]:
            raise DataError(
                f"{files.root / files.split}: class '{files.classes[c]}' has no readable image left after skipping corrupt or over-limit files; add valid images"
            )
    paths = [str(files.paths[i].relative_to(files.root)) for i in keep]
    return SplitData(files.split, files.classes, images[: len(keep)], labels, paths, skipped, sizes)
