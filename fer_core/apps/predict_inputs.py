"""What prediction reads: input arguments expanded to files, and photos or arrays turned into images.

``collect_inputs`` expands the files, folders and glob patterns a user typed into the files to predict;
``load_image`` reads one photo robustly (``data.open_image``: upright, refused over the pixel limit; any
mode; large images reduced) and turns every failure into a one-line ``DataError``; ``array_to_image``
accepts the numpy images callers pass. They sit apart from ``predict`` because none of them needs the
model, torch or the face detector: this is the file-system and decoding edge, the ``Predictor`` is the
inference.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data import image_info, open_image, to_8bit
from ..errors import DataError

# Photos are reduced to this long side before detection: a face needs far fewer pixels than that to be
# found and classified at 48 px, and a 50-megapixel RGB array would cost 150 MB per image in flight.
MAX_SIDE = 4096


# ---------------------------------------------------------------------------------------------------------
# images -> model input
# ---------------------------------------------------------------------------------------------------------


def array_to_image(a: np.ndarray) -> Image.Image:
    """A numpy image (H×W, H×W×1, H×W×3 or H×W×4; uint8, 16-bit, float 0..1 or bool) as a PIL image.

    Raises:
        DataError: any other shape.
    """
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise DataError(
            f"array of shape {a.shape}: not an image; pass H×W (gray), H×W×3 (RGB) or H×W×4 (RGBA)"
        )
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float32))
        a = (a * 255.0 if a.max() <= 1.0 else a).clip(0, 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        hi = float(a.max())
        # 16-bit data is scaled by its range as decode_image does; small integers are taken as 8-bit values.
        a = (a.astype(np.float32) * (255.0 / hi) if hi > 255 else a).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))  # uint8 H×W -> L, H×W×3 -> RGB, H×W×4 -> RGBA


def load_image(
    path: str | os.PathLike, max_side: int = MAX_SIDE
) -> tuple[Image.Image, tuple[int, int], bool]:
    """Read a photo for detection and display, whatever its mode, orientation or size.

    Read by ``data.open_image``, as training reads files: upright (EXIF orientation), refused unread over
    the pixel limit. JPEGs are downscaled while decoding (``draft``), anything else after it, to
    ``max_side`` at most; 16-bit, CMYK, palette and transparent images become 8-bit RGB (transparency on
    white, as in training).

    Args:
        path: image file.
        max_side: longest side kept.

    Returns:
        (RGB image, (width, height) of the upright original, whether an EXIF rotation was applied).

    Raises:
        DataError: a one-line reason naming the file (missing, not an image, corrupt or truncated, over
            the pixel limit).
    """
    p = Path(path)
    try:
        w, h = image_info(p).size
        r = max_side / max(w, h, 1)
        im, info = open_image(p, draft=(None, (math.ceil(w * r), math.ceil(h * r))) if r < 1 else None)
        out = to_8bit(im)
        # 32-bit float (some TIFFs) has no direct RGB conversion; 'L' clips it as training's decoder does.
        out = (out.convert("L") if out.mode == "F" else out).convert("RGB")
        if max(out.size) > max_side:
            out.thumbnail((max_side, max_side), Image.BICUBIC)
        return out, info.size, info.orientation != 1
    except FileNotFoundError:
        raise DataError(f"{p}: no such file; check the path") from None
    except (IsADirectoryError, PermissionError) as e:
        raise DataError(f"{p}: cannot read the file ({e.strerror}); check its permissions") from None
    except UnidentifiedImageError:
        raise DataError(
            f"{p}: not a readable image (Pillow cannot identify this {p.suffix or 'extension-less'} file: "
            "corrupt, or not an image); pass JPEG, PNG, BMP, TIFF, WebP or GIF files"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(
            f"{p}: corrupt or truncated image ({str(e) or type(e).__name__}); re-export or replace the file"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------


def collect_inputs(
    inputs: Sequence[str], exclude: Sequence[str | os.PathLike] = ()
) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Expand files, folders (recursive) and glob patterns into the files to predict.

    Every visible file in a folder is taken, not only known image suffixes: a stray file there is reported
    as "not an image" rather than silently skipped, so a user sees why it got no prediction.

    Args:
        inputs: paths or patterns as typed.
        exclude: folders never to read from (the output folder, so a re-run does not predict its own PNGs);
            an input given inside one is reported in the problems, not skipped in silence.

    Returns:
        ([(file, name relative to the input it came from)], [(input, reason) for inputs that gave nothing]).
    """
    skip = [Path(e).resolve() for e in exclude]
    files: list[tuple[Path, str]] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def inside_out(p: Path) -> Path | None:
        r = p.resolve()
        return next((s for s in skip if r.is_relative_to(s)), None)

    def add(p: Path, name: str) -> None:
        r = p.resolve()
        if r not in seen and not inside_out(p):
            seen.add(r)
            files.append((p, name))

    def add_folder(d: Path, prefix: str) -> int:
        n = len(files)
        for f in sorted(d.rglob("*")):
            rel = f.relative_to(d)
            if f.is_file() and not any(part.startswith(".") for part in rel.parts):
                add(f, str(Path(prefix) / rel) if prefix else str(rel))
        return len(files) - n

    for raw in inputs:
        p = Path(raw).expanduser()
        if p.exists() and inside_out(p):  # said, not skipped in silence: it would be read and overwritten
            problems.append(
                (raw, f"is inside the output folder {inside_out(p)}; move it out or pass another --out")
            )
        elif p.is_dir():
            if not add_folder(p, ""):
                problems.append((raw, "folder holds no files to predict"))
        elif p.is_file():
            add(p, p.name)
        elif glob.has_magic(raw):
            matches = sorted(glob.glob(os.path.expanduser(raw), recursive=True))
            n = len(files)
            for m in map(Path, matches):
                if m.is_dir():
                    add_folder(m, m.name)
                elif m.is_file():
                    add(m, m.name)
            if len(files) == n:
                inside = [m for m in matches if inside_out(Path(m))]
                problems.append(
                    (
                        raw,
                        f"matches only files inside the output folder {inside_out(Path(inside[0]))}; pass another --out"
                        if inside
                        else "no file matches this pattern",
                    )
                )
        else:
            problems.append((raw, "no such file or folder; check the path"))
    return files, problems
