"""Procedural, download-free facial-expression demo dataset.

The product needs data that works out of the box (no downloads, no licences,
no network), so this module *draws* simple cartoon faces showing the seven
basic expressions and writes them in the ``ImageFolder`` layout that the
training code consumes::

    root/train/<class>/*.png
    root/val/<class>/*.png
    root/test/<class>/*.png

Every image is an 8-bit grayscale (``'L'``) PNG of ``img_size x img_size``
pixels, like FER2013. The faces vary in identity (face shape, feature spacing,
eye size, hair), in expression intensity, pose (in-plane rotation, shift,
scale), lighting, blur and noise, so a small CNN can learn the task well above
chance without solving it perfectly at once.

Command line::

    python -m fer_core.demo OUT_DIR [--train-per-class N] [--val-per-class N]
        [--test-per-class N] [--img-size N] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "SPLITS",
    "make_demo_dataset",
    "ensure_demo_dataset",
    "main",
]

# The expression classes (folder names), defined once in data.py.
from .data import CLASS_NAMES  # noqa: E402

#: Bump whenever the drawing changes, so cached copies made by an older
#: generator are not silently reused by ``ensure_demo_dataset``.
GENERATOR_VERSION = 1

#: Dataset splits, in a fixed order: the index is part of each image's seed.
SPLITS: Tuple[str, ...] = ("train", "val", "test")

#: Name of the marker file written last into a finished cached dataset.
COMPLETE_MARKER = ".complete"

# We draw at 4x the target resolution and downsample with LANCZOS: PIL's
# ImageDraw has no anti-aliasing, so drawing directly at 48x48 would give
# jagged, 1-pixel-quantised strokes where small expression cues (a slight
# smile, a brow tilt) would be lost or aliased.
_SUPERSAMPLE = 4

PathLike = Union[str, "os.PathLike[str]"]

# Expression parameters at full intensity. Each image interpolates between
# neutral and its class's values with a random intensity, and adds per-identity
# jitter, so weak expressions drift towards neutral and classes overlap a bit.
#   curve   : mouth curvature, + smile (corners up), - frown (corners down)
#   open    : mouth opening (0 closed line, 1 wide open)
#   width   : mouth width factor
#   brow    : brow height (+ raised)
#   tilt    : brow tilt, + inner ends raised (sad/fear), - inner lowered (angry)
#   pull    : brows pulled together towards the nose
#   eye     : eye opening factor (1 normal, <1 narrowed, >1 wide)
#   snarl   : disgust: one-sided raised upper lip, lowered brow, wavy mouth
#   wrinkle : nose wrinkles (disgust)
_NEUTRAL: Dict[str, float] = {
    "curve": 0.0,
    "open": 0.0,
    "width": 1.0,
    "brow": 0.0,
    "tilt": 0.0,
    "pull": 0.0,
    "eye": 1.0,
    "snarl": 0.0,
    "wrinkle": 0.0,
}

_EXPRESSIONS: Dict[str, Dict[str, float]] = {
    "neutral": dict(_NEUTRAL),
    "happy": dict(_NEUTRAL, curve=1.0, open=0.35, width=1.2, brow=0.1, eye=0.7),
    "sad": dict(_NEUTRAL, curve=-0.8, width=0.9, brow=0.05, tilt=1.0, pull=0.4, eye=0.8),
    "angry": dict(_NEUTRAL, curve=-0.15, width=0.8, brow=-0.7, tilt=-1.0, pull=0.8, eye=0.8),
    "surprise": dict(_NEUTRAL, open=1.0, width=0.5, brow=1.0, eye=1.45),
    "fear": dict(_NEUTRAL, curve=-0.3, open=0.35, width=1.2, brow=0.6, tilt=0.8, pull=0.8, eye=1.35),
    "disgust": dict(_NEUTRAL, curve=-0.3, width=0.95, brow=-0.2, eye=0.65, snarl=1.0, wrinkle=1.0),
}

# Per-identity jitter (standard deviation) added to every expression parameter:
# real people's resting faces differ, which makes low-intensity images of
# different classes genuinely ambiguous.
_JITTER: Dict[str, float] = {
    "curve": 0.12,
    "open": 0.04,
    "width": 0.07,
    "brow": 0.15,
    "tilt": 0.15,
    "pull": 0.15,
    "eye": 0.08,
    "snarl": 0.05,
    "wrinkle": 0.0,
}


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


def _expression_params(label: str, rng: np.random.Generator) -> Dict[str, float]:
    """Sample the expression parameters of one image of class ``label``."""
    target = _EXPRESSIONS[label]
    # Continuous intensity: weak expressions look close to neutral, which gives
    # the classes a small, realistic overlap.
    intensity = rng.uniform(0.35, 1.0)
    params = {}
    for key, neutral_value in _NEUTRAL.items():
        value = neutral_value + intensity * (target[key] - neutral_value)
        value += rng.normal(0.0, _JITTER[key])
        params[key] = value
    params["open"] = max(0.0, params["open"])
    params["snarl"] = max(0.0, params["snarl"])
    params["eye"] = max(0.35, params["eye"])
    params["width"] = max(0.4, params["width"])
    return params


def _polyline(draw: ImageDraw.ImageDraw, pts: Sequence[Tuple[float, float]], fill: int, width: float) -> None:
    draw.line([tuple(p) for p in pts], fill=fill, width=max(1, int(round(width))), joint="curve")
    # Round caps: PIL lines have square ends that look odd on thick strokes.
    r = width / 2.0
    for x, y in (pts[0], pts[-1]):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _draw_face(label: str, rng: np.random.Generator, img_size: int) -> np.ndarray:
    """Draw one face and return it as a uint8 array of shape (img_size, img_size)."""
    big = img_size * _SUPERSAMPLE
    p = _expression_params(label, rng)

    # --- Identity, framing and colours --------------------------------------
    scale = rng.uniform(0.9, 1.1)
    a = big * rng.uniform(0.27, 0.33) * scale  # face half-width
    b = a * rng.uniform(1.1, 1.28)  # face half-height
    cx = big / 2 + rng.uniform(-0.05, 0.05) * big
    cy = big / 2 + rng.uniform(-0.04, 0.05) * big

    skin = rng.uniform(105, 205)
    bg = rng.uniform(15, 240)
    while abs(bg - skin) < 30:  # keep the face outline visible
        bg = rng.uniform(15, 240)
    ink = int(np.clip(skin - rng.uniform(95, 140), 0, 255))  # feature strokes
    lw = a * rng.uniform(0.05, 0.07)  # base stroke width

    # Face layer + mask, so the face can be rotated on its own and composited
    # over a background gradient without rotation fill artefacts.
    face = Image.new("L", (big, big), int(skin))
    mask = Image.new("L", (big, big), 0)
    fd = ImageDraw.Draw(face)
    md = ImageDraw.Draw(mask)

    if rng.random() < 0.6:  # hair: a darker/lighter cap peeking out behind the face
        hair = int(np.clip(skin + rng.choice([-1, 1]) * rng.uniform(40, 90), 0, 255))
        ha, hb = a * rng.uniform(1.02, 1.12), b * rng.uniform(0.95, 1.05)
        hy = cy - b * rng.uniform(0.08, 0.2)
        box = [cx - ha, hy - hb, cx + ha, hy + hb]
        fd.ellipse(box, fill=hair)
        md.ellipse(box, fill=255)
    box = [cx - a, cy - b, cx + a, cy + b]
    fd.ellipse(box, fill=int(skin), outline=ink, width=max(1, int(lw * 0.6)))
    md.ellipse(box, fill=255)

    # --- Eyes ---------------------------------------------------------------
    eye_y = cy - b * rng.uniform(0.10, 0.22)
    eye_dx = a * rng.uniform(0.36, 0.46)
    eye_w = a * rng.uniform(0.15, 0.2)
    eye_h0 = eye_w * rng.uniform(0.45, 0.6)
    eye_h = eye_h0 * p["eye"]
    sclera = int(np.clip(skin + rng.uniform(30, 70), 0, 255))
    for side in (-1, 1):
        ex = cx + side * eye_dx
        if eye_h < lw * 0.9:  # nearly closed: just a lid line
            _polyline(fd, [(ex - eye_w, eye_y), (ex, eye_y - eye_h * 0.5), (ex + eye_w, eye_y)], ink, lw)
            continue
        fd.ellipse([ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h], fill=sclera, outline=ink,
                   width=max(1, int(lw * 0.7)))
        # Pupil size tracks the eye size, not the opening, so wide eyes show
        # more white around it (surprise/fear) and narrow eyes crop it.
        pr = min(eye_h0 * 0.85, eye_w * 0.5)
        gaze = rng.uniform(-0.25, 0.25) * eye_w
        fd.ellipse([ex + gaze - pr, eye_y - min(pr, eye_h), ex + gaze + pr, eye_y + min(pr, eye_h)], fill=ink)

    # --- Brows ----------------------------------------------------------------
    brow_len = a * rng.uniform(0.17, 0.23)
    brow_w = lw * rng.uniform(1.1, 1.6)
    brow_gap = a * rng.uniform(0.10, 0.16)
    snarl_side = 1 if rng.random() < 0.5 else -1
    for side in (-1, 1):
        bx = cx + side * (eye_dx - p["pull"] * a * 0.07)
        by = eye_y - eye_h0 - brow_gap - p["brow"] * a * 0.13
        tilt = p["tilt"]
        if side == snarl_side:  # disgust lowers one brow
            by += p["snarl"] * a * 0.08
            tilt -= p["snarl"] * 0.4
        inner = (bx - side * brow_len, by - tilt * a * 0.09)
        outer = (bx + side * brow_len, by + tilt * a * 0.04)
        mid = (bx, (inner[1] + outer[1]) / 2 - a * 0.03)  # slight natural arch
        _polyline(fd, [inner, mid, outer], ink, brow_w)
    if p["pull"] > 0.5 and p["tilt"] < -0.4:  # angry frown line between the brows
        fy = eye_y - eye_h0 - brow_gap * 0.6
        _polyline(fd, [(cx, fy - a * 0.08), (cx, fy + a * 0.02)], ink, lw * 0.5)

    # --- Nose and disgust wrinkles --------------------------------------------
    ny = cy + b * rng.uniform(0.12, 0.2)
    nw = a * rng.uniform(0.07, 0.11)
    _polyline(fd, [(cx - nw, ny), (cx, ny + nw * 0.5), (cx + nw, ny)], ink, lw * 0.7)
    n_wrinkles = int(round(p["wrinkle"] * 2.2 * rng.uniform(0.6, 1.0)))
    for k in range(n_wrinkles):
        for side in (-1, 1):
            x0 = cx + side * a * (0.10 + 0.05 * k)
            y0 = eye_y + eye_h0 + a * (0.06 + 0.06 * k)
            _polyline(fd, [(x0, y0), (x0 + side * a * 0.10, y0 + a * 0.05)], ink, lw * 0.55)

    # --- Mouth ------------------------------------------------------------------
    my = cy + b * rng.uniform(0.40, 0.50)
    mw = a * rng.uniform(0.27, 0.35) * p["width"]
    amp = a * 0.20 * p["curve"]  # >0: centre lower than corners (smile)
    h0 = a * 0.25 * p["open"]  # half-height of the opening
    u = np.linspace(-1.0, 1.0, 25)
    xs = cx + mw * u
    arch = 1.0 - u ** 2
    mid_line = my + amp * arch
    # Disgust: one-sided sneer (upper lip lifted on one side), tilted, wavy line.
    mid_line = mid_line - p["snarl"] * a * 0.05 * u * snarl_side
    mid_line = mid_line + p["snarl"] * a * 0.03 * np.sin(2 * np.pi * u)
    lift = p["snarl"] * a * 0.13 * np.clip(u * snarl_side, 0, 1) * np.sqrt(arch)
    # A smiling open mouth has a flatter upper lip than lower lip ("D" shape).
    upper_bend = 0.45 if amp > 0 else 1.0
    upper = my + amp * upper_bend * arch - h0 * np.sqrt(arch) - lift
    upper = upper - p["snarl"] * a * 0.05 * u * snarl_side
    lower = mid_line + h0 * np.sqrt(arch)
    if np.max(lower - upper) < lw * 1.2:
        _polyline(fd, list(zip(xs, mid_line)), ink, lw * 1.1)
    else:
        outline = list(zip(xs, upper)) + list(zip(xs[::-1], lower[::-1]))
        cavity = int(np.clip(ink * rng.uniform(0.3, 0.7), 0, 255))
        fd.polygon(outline, fill=cavity)
        _polyline(fd, outline + [outline[0]], ink, lw)

    # --- Pose: in-plane rotation about the face centre ---------------------------
    angle = rng.uniform(-15, 15)
    face = face.rotate(angle, resample=Image.BICUBIC, center=(cx, cy))
    mask = mask.rotate(angle, resample=Image.BICUBIC, center=(cx, cy))

    # --- Background: a linear gradient in a random direction ----------------------
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    grad = rng.uniform(0, 60)
    back = bg + grad * (np.cos(theta) * xx + np.sin(theta) * yy)
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    canvas = alpha * np.asarray(face, dtype=np.float32) + (1 - alpha) * back
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))

    # --- Downsample (anti-aliasing) and photometric degradations -------------------
    img = img.resize((img_size, img_size), resample=Image.LANCZOS)
    blur = rng.uniform(0.0, 0.8)
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(radius=blur))
    arr = np.asarray(img, dtype=np.float32)
    # Lighting: global contrast/brightness plus a multiplicative side-light gradient.
    contrast = rng.uniform(0.7, 1.2)
    arr = (arr - arr.mean()) * contrast + arr.mean() + rng.uniform(-25, 25)
    sy, sx = np.mgrid[0:img_size, 0:img_size].astype(np.float32) / img_size - 0.5
    phi = rng.uniform(0, 2 * np.pi)
    arr = arr * (1.0 + rng.uniform(0.0, 0.5) * (np.cos(phi) * sx + np.sin(phi) * sy))
    arr = arr + rng.normal(0.0, rng.uniform(2.0, 8.0), size=arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


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
                arr = _draw_face(label, rng, int(img_size))
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
    cache_dir: Optional[PathLike] = None,
    train_per_class: int = 200,
    val_per_class: int = 60,
    test_per_class: int = 60,
    img_size: int = 48,
    seed: int = 0,
) -> Path:
    """Return the path of a cached copy of the demo dataset, generating it once.

    The cached folder name encodes every parameter and ``GENERATOR_VERSION``
    (e.g. ``demo-v1-s48-n200-60-60-seed0``), so changed settings or a newer
    generator never reuse stale data. Safe when several processes call it at
    once: each generates into its own temporary directory beside the target,
    writes the ``.complete`` marker last and atomically renames the directory
    into place; a process that loses the race discards its copy and uses the
    winner's. A target without the marker (left by a crash of an older version)
    is removed and regenerated.

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
    name = _cache_name(int(train_per_class), int(val_per_class), int(test_per_class), int(img_size), int(seed))
    target = parent / name
    if (target / COMPLETE_MARKER).is_file():
        return target

    parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / COMPLETE_MARKER).is_file():
        # Our renames only ever publish complete folders, so a marker-less
        # target is debris from a crash (e.g. an older, non-atomic version).
        # Move it aside atomically first so a concurrent caller never sees a
        # half-deleted target, then delete it at leisure.
        trash = Path(tempfile.mkdtemp(prefix=f".{name}.trash-", dir=str(parent)))
        try:
            os.rename(target, trash / "old")
        except OSError:
            pass  # another caller moved or replaced it first
        shutil.rmtree(trash, ignore_errors=True)

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
        # After a successful rename tmp no longer exists; otherwise clean up.
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point: write the demo dataset to a directory.

    Args:
        argv: Argument list (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit code (0 on success).
    """
    parser = argparse.ArgumentParser(
        prog="python -m fer_core.demo",
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
