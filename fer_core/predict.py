"""Prediction: images or photos in, the seven expression probabilities (and charts) out.

Two layers:

- ``Predictor.from_checkpoint(path).predict(images)``: face crops (paths, PIL images or uint8 arrays) in,
  an N×7 probability array out, batched. Each image goes through the checkpoint's stored preprocessing
  contract (size, grayscale, normalisation): a path is decoded by ``fer_core.data.decode_image``, the very
  function that built the training and validation caches, and an in-memory image by ``data.to_model_array``,
  which repeats its conversions.
- ``Predictor.predict_files(paths)``: photos in, one ``ImageResult`` per file: the file is loaded robustly
  (any mode, EXIF orientation, very large images reduced), faces are found (``fer_core.faces``), each is
  cropped with a margin and classified; with no face found the whole image is classified and the result
  says so. A file that cannot be read becomes a result with ``error`` set, never an exception, so one bad
  file does not stop a folder.

``plot_prediction`` and ``plot_contact_sheet`` draw the per-image PNG (photo with boxes beside the
probability bars) and a folder's overview. The command line is ``sweeps/predict.py``.
"""

from __future__ import annotations

import glob
import math
import os
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import CLASS_NAMES, decode_image, to_8bit, to_model_array
from .errors import CheckpointError, DataError
from .evaluate import load_model
from .faces import Box, FaceDetector, crop_face
from .preprocess import Preprocess
from .runtime import Runtime, resolve_runtime

# Photos are reduced to this long side before detection: a face needs far fewer pixels than that to be
# found and classified at 48 px, and a 50-megapixel RGB array would cost 150 MB per image in flight.
MAX_SIDE = 4096
# The copy kept for the per-image PNG (and, smaller, for the contact sheet).
DISPLAY_SIDE = 1024
THUMB_SIDE = 256


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
        raise DataError(f"array of shape {a.shape}: not an image; pass H×W (gray), H×W×3 (RGB) or H×W×4 (RGBA)")
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


def load_image(path: str | os.PathLike, max_side: int = MAX_SIDE) -> tuple[Image.Image, tuple[int, int], bool]:
    """Read a photo for detection and display, whatever its mode, orientation or size.

    JPEGs are downscaled while decoding (``draft``), anything else after it, to ``max_side`` at most; EXIF
    orientation is applied; 16-bit, CMYK, palette and transparent images become 8-bit RGB (transparency on
    white, as in training).

    Args:
        path: image file.
        max_side: longest side kept.

    Returns:
        (RGB image, (width, height) of the upright original, whether an EXIF rotation was applied).

    Raises:
        DataError: a one-line reason naming the file (missing, not an image, corrupt or truncated, too
            large to decode safely).
    """
    p = Path(path)
    try:
        with warnings.catch_warnings():
            # Between Pillow's warning and error limits (89-179 MP) decoding is safe here: we shrink at once.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if max(w, h) > max_side:
                    r = max_side / max(w, h)
                    im.draft(None, (math.ceil(w * r), math.ceil(h * r)))
                try:
                    orientation = im.getexif().get(0x0112, 1)
                except Exception:  # noqa: BLE001 - EXIF parsers raise assorted types; a broken tag must not cost the image
                    orientation = 1
                im.load()  # decode now: truncation and corruption show up here
                out = ImageOps.exif_transpose(im) if orientation in range(2, 9) else im.copy()
                if orientation in (5, 6, 7, 8):
                    w, h = h, w
                out = to_8bit(out)
                # 32-bit float (some TIFFs) has no direct RGB conversion; 'L' clips it as training's decoder does.
                out = (out.convert("L") if out.mode == "F" else out).convert("RGB")
                if max(out.size) > max_side:
                    out.thumbnail((max_side, max_side), Image.BICUBIC)
                return out, (w, h), orientation in range(2, 9)
    except FileNotFoundError:
        raise DataError(f"{p}: no such file; check the path") from None
    except (IsADirectoryError, PermissionError) as e:
        raise DataError(f"{p}: cannot read the file ({e.strerror}); check its permissions") from None
    except UnidentifiedImageError:
        raise DataError(f"{p}: not a readable image (Pillow cannot identify this {p.suffix or 'extension-less'} file: "
                        "corrupt, or not an image); pass JPEG, PNG, BMP, TIFF, WebP or GIF files") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{p}: image too large to decode safely ({str(e).split(',')[0]}); downscale it first") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"{p}: corrupt or truncated image ({str(e) or type(e).__name__}); re-export or replace the file") from None


# ---------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FacePrediction:
    """One classified region: ``box`` (x, y, w, h) in the upright original's pixels, None for the whole image."""

    box: Box | None
    probs: np.ndarray

    @property
    def index(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def score(self) -> float:
        return float(np.max(self.probs))


@dataclass
class ImageResult:
    """The prediction for one file.

    ``faces`` holds one entry per face found, or a single whole-image entry (box None) when detection was
    off or found nothing. ``image`` is an RGB copy at most ``DISPLAY_SIDE`` px for plotting and
    ``thumbnail`` one of ``THUMB_SIDE`` px; both are scaled copies of the original of ``size`` (w, h).
    """

    path: str
    size: tuple[int, int] | None = None
    faces: list[FacePrediction] = field(default_factory=list)
    detected: bool = False
    error: str | None = None
    image: np.ndarray | None = None
    thumbnail: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def face_found(self) -> bool:
        return any(f.box is not None for f in self.faces)

    @property
    def note(self) -> str:
        if self.error:
            return self.error
        if not self.detected:
            return "face detection off: whole image classified"
        return f"{len(self.faces)} face(s) found" if self.face_found else "no face found: whole image classified"

    def to_dict(self, class_names: Sequence[str] = CLASS_NAMES) -> dict:
        """JSON-ready: path, size, faces (box, expression, probability, all probabilities), note, error."""
        return {
            "path": self.path, "ok": self.ok, "size": list(self.size) if self.size else None,
            "face_found": self.face_found, "note": self.note, "error": self.error,
            "faces": [{"box": list(f.box) if f.box else None, "expression": class_names[f.index],
                       "probability": round(f.score, 6),
                       "probabilities": {c: round(float(v), 6) for c, v in zip(class_names, f.probs)}}
                      for f in self.faces],
        }


# ---------------------------------------------------------------------------------------------------------
# the predictor
# ---------------------------------------------------------------------------------------------------------


class Predictor:
    """A trained checkpoint ready to classify face crops and photos.

    Args:
        model: the network in eval mode on ``runtime.device``.
        preprocess: the checkpoint's preprocessing contract.
        class_names: class names in output order.
        runtime: device and precision.
        batch_size: images per forward pass.
        checkpoint: where the model came from (for messages).
    """

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess, class_names: Sequence[str], runtime: Runtime,
                 batch_size: int = 64, checkpoint: str | None = None):
        self.model, self.preprocess, self.runtime = model, preprocess, runtime
        self.class_names, self.batch_size, self.checkpoint = list(class_names), max(1, int(batch_size)), checkpoint
        self._detector: FaceDetector | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", batch_size: int = 64) -> "Predictor":
        """Rebuild the model and preprocessing a fer_core checkpoint was trained with.

        Args:
            path: best.pt / last.pt written by fer_core.
            device: auto, cpu, cuda or cuda:N.
            batch_size: images per forward pass.

        Raises:
            CheckpointError: not a fer_core checkpoint, weights that do not fit its model, or a class set other
                than the seven expressions.
            ConfigError: an unknown or unavailable device.
        """
        runtime = resolve_runtime(device)
        model, pre, classes, _ = load_model(path, runtime)
        if tuple(classes) != CLASS_NAMES:
            raise CheckpointError(f"{path}: trained on classes {', '.join(classes)}, not the seven expressions "
                                  f"({', '.join(CLASS_NAMES)}); pass a checkpoint trained on those")
        return cls(model, pre, classes, runtime, batch_size, str(path))

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector()
        return self._detector

    # -- crops -> probabilities -----------------------------------------------------------------------------

    def prepare(self, image) -> np.ndarray:
        """One image (path, PIL image or numpy array) -> the uint8 model input.

        Raises:
            DataError: unreadable file or unusable array.
        """
        s, gray = self.preprocess.img_size, self.preprocess.grayscale
        if isinstance(image, (str, os.PathLike)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    return decode_image(image, s, gray)  # exactly training's decoder
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                load_image(image)  # raises the one-line reason for the usual failures
                raise DataError(f"{image}: cannot decode the image ({e}); re-export or replace the file") from None
        if isinstance(image, Image.Image):
            return to_model_array(image, s, gray)
        return to_model_array(array_to_image(image), s, gray)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Prepared uint8 inputs (N×S×S or N×S×S×3) -> N×C float32 probabilities, ``batch_size`` at a time."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                x = self.preprocess(torch.from_numpy(np.ascontiguousarray(batch[start:start + self.batch_size])), self.runtime)
                with self.runtime.autocast():
                    logits = self.model(x).float()
                out.append(logits.softmax(1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, images) -> np.ndarray:
        """Classify face crops.

        Args:
            images: one image or a sequence of them; each a path, a PIL image or a numpy array (H×W, H×W×3,
                H×W×4; any size, resized like training). An N×H×W or N×H×W×3 uint8 array is a batch.

        Returns:
            N×7 float32 probabilities, rows in input order, columns in ``class_names`` order.

        Raises:
            DataError: an image cannot be read (use ``predict_files`` to collect per-file errors instead).
        """
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        elif isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (3, 4))):
            images = [images]  # one H×W or H×W×C image, not a batch
        elif not isinstance(images, np.ndarray):
            images = list(images)
        return self.predict_batch(np.stack([self.prepare(im) for im in images]) if len(images) else np.zeros((0,)))

    # -- photos -> results ----------------------------------------------------------------------------------

    def _load_file(self, path, detect: bool, margin: float) -> tuple[ImageResult, list[np.ndarray]]:
        """Load, detect and crop one file: (result without probabilities, model inputs)."""
        result = ImageResult(str(path), detected=detect)
        try:
            im, result.size, rotated = load_image(path)
        except DataError as e:
            result.error = str(e)
            return result, []
        rgb = np.asarray(im)
        scale = result.size[0] / rgb.shape[1]  # loaded pixels -> original pixels
        boxes = self.detector(rgb) if detect else []
        s, gray = self.preprocess.img_size, self.preprocess.grayscale
        if boxes:
            inputs = [to_model_array(Image.fromarray(crop_face(rgb, b, margin)), s, gray) for b in boxes]
            result.faces = [FacePrediction(tuple(int(round(v * scale)) for v in b), None) for b in boxes]
        else:
            # No crop: the file itself is the input, so take training's decoder on it (unless EXIF turned it,
            # which that decoder ignores).
            try:
                inputs = [to_model_array(im, s, gray) if rotated else self.prepare(path)]
            except DataError as e:
                result.error = str(e)
                return result, []
            result.faces = [FacePrediction(None, None)]
        disp = im.copy()
        disp.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.BICUBIC)
        result.image = np.asarray(disp)
        disp.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BICUBIC)
        result.thumbnail = np.asarray(disp)
        return result, inputs

    def predict_files(self, paths: Iterable[str | os.PathLike], detect: bool = True, margin: float = 0.1,
                      chunk: int = 16) -> Iterator[ImageResult]:
        """Classify every face in every file; yields one ``ImageResult`` per path, in order.

        Files are read ``chunk`` at a time and all their faces classified in shared batches. A file that
        cannot be read yields a result whose ``error`` names it and the reason; the rest go on.

        Args:
            paths: image files.
            detect: find faces (False: each file is already a face crop).
            margin: fraction of a face box added on each side before cropping.
            chunk: files held in memory at once.
        """
        paths = list(paths)
        for start in range(0, len(paths), max(1, chunk)):
            loaded = [self._load_file(p, detect, margin) for p in paths[start:start + chunk]]
            inputs = [x for _, xs in loaded for x in xs]
            probs = iter(self.predict_batch(np.stack(inputs)) if inputs else [])
            for result, xs in loaded:
                for face in result.faces:
                    face.probs = next(probs)
                yield result

    def predict_file(self, path: str | os.PathLike, detect: bool = True, margin: float = 0.1) -> ImageResult:
        """``predict_files`` for one file."""
        return next(self.predict_files([path], detect, margin))


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------


def collect_inputs(inputs: Sequence[str], exclude: Sequence[str | os.PathLike] = ()) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
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
            problems.append((raw, f"is inside the output folder {inside_out(p)}; move it out or pass another --out"))
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
                problems.append((raw, f"matches only files inside the output folder {inside_out(Path(inside[0]))}; pass another --out"
                                 if inside else "no file matches this pattern"))
        else:
            problems.append((raw, "no such file or folder; check the path"))
    return files, problems


# ---------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------

_BOX = "#ffd400"


def _draw_boxes(ax, result: ImageResult, shape: tuple[int, ...], class_names: Sequence[str], labels: bool = True,
                fontsize: float = 8.0) -> None:
    """Face boxes (scaled from original pixels to the shown copy) with their number and top expression."""
    from matplotlib import patches, patheffects

    if not result.size:
        return
    k = shape[1] / result.size[0]
    outline = [patheffects.withStroke(linewidth=3.2, foreground="black")]
    for i, f in enumerate(result.faces, 1):
        if f.box is None:
            continue
        x, y, w, h = (v * k for v in f.box)
        rect = patches.Rectangle((x, y), w, h, fill=False, edgecolor=_BOX, linewidth=2.0)
        rect.set_path_effects(outline)
        ax.add_patch(rect)
        if labels:
            ax.text(x, max(y - 3, 0), f"{i}: {class_names[f.index]} {f.score:.2f}", color=_BOX, fontsize=fontsize,
                    fontweight="bold", va="bottom", ha="left", path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")])


def plot_prediction(result: ImageResult, path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES,
                    max_faces: int = 6) -> Path:
    """The image with its face boxes beside one probability bar chart per face.

    Args:
        result: a successful ``ImageResult`` (with ``image``).
        path: PNG to write (folders are created).
        class_names: names in probability order.
        max_faces: charts drawn at most (every face is boxed; the rest are in the table/CSV).

    Returns:
        The PNG path.
    """
    from . import viz  # matplotlib only when plotting: the API stays light for servers that never plot
    import matplotlib.pyplot as plt

    faces = result.faces[:max_faces]
    n = max(1, len(faces))
    img = result.image
    aspect = img.shape[1] / img.shape[0]
    img_w = min(6.0, max(3.0, 3.6 * aspect))
    fig = plt.figure(figsize=(img_w + 3.4, max(3.2, 1.75 * n + 0.6)), layout="constrained")
    gs = fig.add_gridspec(n, 2, width_ratios=[img_w, 3.4])
    ax_img = fig.add_subplot(gs[:, 0])
    ax_img.imshow(img)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    _draw_boxes(ax_img, result, img.shape, class_names)
    for i, f in enumerate(faces):
        ax = fig.add_subplot(gs[i, 1])
        viz.draw_probability_bars(ax, f.probs, list(class_names))
        who = f"face {i + 1}" if f.box is not None else "whole image"
        ax.set_title(f"{who}: {class_names[f.index]} ({f.score:.0%})", fontsize=9, loc="left", fontweight="bold")
    more = f"; {len(result.faces) - len(faces)} more face(s) in the table" if len(result.faces) > len(faces) else ""
    fig.suptitle(f"{Path(result.path).name}: {result.note}{more}", fontsize=10)
    return viz._save(fig, path)  # the module's one save rule (tight box, white background, figure closed)


def plot_contact_sheet(results: Sequence[ImageResult], path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES,
                       max_items: int = 60, cols: int = 6) -> Path:
    """One overview of many predictions: each image with its boxes and top expression; failures greyed.

    Args:
        results: ``ImageResult`` objects (with ``thumbnail`` when successful).
        path: PNG to write.
        class_names: names in probability order.
        max_items: images shown at most (the first ones).
        cols: images per row.

    Returns:
        The PNG path.
    """
    from . import viz
    import matplotlib.pyplot as plt

    items = list(results)[:max_items]
    cols = max(1, min(cols, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.55 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, items):
        name = Path(r.path).name
        name = name if len(name) <= 28 else name[:12] + "…" + name[-15:]
        if not r.ok or r.thumbnail is None:
            # The reason without the path (it is the title) and without the fix (the summary has it).
            why = (r.error or "").removeprefix(f"{r.path}: ").split(";")[0].split(" (")[0]
            ax.text(0.5, 0.5, "failed\n" + textwrap.fill(why, 24), ha="center", va="center", color="#c62828",
                    fontsize=8, transform=ax.transAxes)
            ax.set_title(name, fontsize=7.5, color="0.4")
            continue
        ax.imshow(r.thumbnail)
        _draw_boxes(ax, r, r.thumbnail.shape, class_names, labels=len(r.faces) > 1, fontsize=6)
        top = r.faces[0]
        extra = f" +{len(r.faces) - 1} face(s)" if len(r.faces) > 1 else ("" if r.face_found else " (whole)")
        ax.set_title(f"{name}\n{class_names[top.index]} {top.score:.2f}{extra}", fontsize=7.5)
    total = len(list(results))
    fig.suptitle(f"{total} image(s)" + (f", first {len(items)} shown" if total > len(items) else ""), fontsize=10)
    return viz._save(fig, path)
