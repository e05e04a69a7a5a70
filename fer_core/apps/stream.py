"""Faces that move: frames in, tracked faces with their (smoothed) expressions out, drawn onto the frames.

``FaceStream`` is the one loop that video files, the webcam and the web app share:

- **detect** every ``detect_every``-th frame with the predictor's face detector (``fer_core.apps.faces``):
  over the whole frame once every ``FULL_SCAN_SECONDS`` (and whenever no face is tracked), otherwise only
  around each tracked face, in a crop scaled so the face is ``ROI_FACE`` px. A whole-frame Haar scan
  costs 47 ms at 640×360 on a 2-core CPU (docs/measured.md), more than the 33 ms a 30 fps frame allows;
  the crops cost a few ms. A face entering the frame is found within ``FULL_SCAN_SECONDS``;
- **track**: supervision's ByteTrack links the detections into tracks whose ids stay stable while a face
  is on screen (and for ``LOST_SECONDS`` after it is missed). On frames without detection each track keeps
  its last box; what that costs in recall is measured in docs/measured.md;
- **classify**: every face of every frame in a batch goes through the model in one ``predict_batch`` call
  (PyTorch or ONNX Runtime, whichever the predictor is);
- **smooth** each track's probabilities over time with an exponential average whose time constant is
  ``smooth_seconds`` (0: off), so the same setting means the same at 15 and at 60 fps;
- **label** a face with its smoothed top class, or ``uncertain`` under ``min_confidence``.

``draw_faces`` annotates a frame (box, track id, label, a bar of the class probabilities). Where the frames
come from and where the results go (files, tables, the summary) is ``fer_core.apps.video_predict``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data import to_model_array
from .faces import Box, crop_face
from .predict import UNCERTAIN

# A track missed by the detector for longer than this is closed; a face found again later gets a new id.
LOST_SECONDS = 1.0
FULL_SCAN_SECONDS = 1.0
ROI_FACE = (
    64  # px: a tracked face's size in its search crop, well above the detectors' smallest (Haar: 24 px)
)
ROI_GROW = 0.5  # the search crop: the face box grown by this fraction of its size on every side


@dataclass
class TrackedFace:
    """One face in one frame: ``track`` its stable id (1, 2, ... in order of appearance), ``box`` (x, y, w,
    h) in the frame's pixels, ``probs`` this frame's probabilities, ``smoothed`` the track's average up to
    this frame, ``label`` the smoothed top class or ``UNCERTAIN``, ``detected`` False when the box was
    carried from the last detection."""

    track: int
    box: Box
    probs: np.ndarray
    smoothed: np.ndarray
    label: str
    detected: bool

    @property
    def score(self) -> float:
        return float(self.smoothed.max())


class FaceStream:
    """Tracks, classifies and smooths the faces of consecutive frames of one video or camera.

    Args:
        predictor: a ``fer_core.apps.predict.Predictor`` (or its ONNX subclass): its detector, classes,
            preprocessing and model are used as they are.
        detect_every: run the face detector on every k-th frame; 1: every frame.
        smooth_seconds: time constant of the exponential average of each track's probabilities; 0: off.
        min_confidence: a face whose smoothed top probability is under this is labelled ``UNCERTAIN``.
        margin: fraction of a face box added on each side before cropping (as for photos).
        fps: the stream's nominal frame rate (sets how long the tracker keeps a missed face).

    Attributes:
        seconds: time spent so far in ``detect``, ``track`` and ``classify``.
    """

    def __init__(
        self,
        predictor,
        detect_every: int = 1,
        smooth_seconds: float = 0.5,
        min_confidence: float = 0.0,
        margin: float = 0.1,
        fps: float = 30.0,
    ):
        with warnings.catch_warnings():
            # supervision announces ByteTrack's move to its `trackers` package, which needs the non-headless
            # opencv-python; the pinned supervision (pyproject.toml) still ships and maintains it.
            warnings.simplefilter("ignore", FutureWarning)
            import supervision as sv

            self._sv = sv
            rate = max(1.0, fps / max(1, detect_every))  # detections per second: the tracker's clock
            self.tracker = sv.ByteTrack(frame_rate=rate, lost_track_buffer=round(30 * LOST_SECONDS))
        self.predictor = predictor
        self.detect_every = max(1, int(detect_every))
        self.smooth_seconds, self.min_confidence, self.margin = smooth_seconds, min_confidence, margin
        self.seconds = {"detect": 0.0, "track": 0.0, "classify": 0.0}
        self._full_every = max(1, round(FULL_SCAN_SECONDS * fps / self.detect_every))  # in detections
        self._count = 0
        self._detections = 0
        self._rescan = False
        self._current: list[tuple[int, Box]] = []  # the tracks of the last detection frame
        self._ids: dict[int, int] = {}  # ByteTrack's id -> ours
        self._smooth: dict[int, tuple[float, np.ndarray]] = {}  # track -> (time, average)

    @property
    def class_names(self) -> list[str]:
        return self.predictor.class_names

    def _detect(self, rgb: np.ndarray) -> tuple[list[Box], bool]:
        """(boxes, whether the whole frame was scanned): the whole frame when a scan is due, nothing is
        tracked or the last scan found a face not yet tracked; else a search around each tracked face."""
        full = not self._current or self._rescan or self._detections % self._full_every == 0
        self._detections += 1
        if full:
            return self.predictor.detector(rgb), True
        H, W = rgb.shape[:2]
        boxes: list[Box] = []
        for _, (x, y, w, h) in self._current:
            g = ROI_GROW * max(w, h)
            x0, y0 = max(0, int(x - g)), max(0, int(y - g))
            x1, y1 = min(W, int(x + w + g)), min(H, int(y + h + g))
            k = ROI_FACE / max(w, h, 1)
            crop = Image.fromarray(rgb[y0:y1, x0:x1])
            crop = crop.resize((max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k))), Image.BILINEAR)
            for bx, by, bw, bh in self.predictor.detector(np.asarray(crop)):
                box = (round(x0 + bx / k), round(y0 + by / k), round(bw / k), round(bh / k))
                if all(_iou(box, b) < 0.5 for b in boxes):  # two tracks' crops overlap: one face once
                    boxes.append(box)
        return boxes, False

    def _track(self, rgb: np.ndarray) -> list[tuple[int, Box]]:
        t0 = time.perf_counter()
        boxes, full = self._detect(rgb)
        t1 = time.perf_counter()
        sv = self._sv
        if boxes:
            xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=np.float32)
            dets = sv.Detections(xyxy=xyxy, confidence=np.ones(len(boxes), np.float32))
        else:
            dets = sv.Detections.empty()
        dets = self.tracker.update_with_detections(dets)
        tracks = []
        for (x0, y0, x1, y1), tid in zip(dets.xyxy, dets.tracker_id):
            track = self._ids.setdefault(int(tid), len(self._ids) + 1)
            tracks.append((track, (int(x0), int(y0), int(round(x1 - x0)), int(round(y1 - y0)))))
        # ByteTrack confirms a new face on its second detection in a row, and only a whole-frame scan finds
        # new faces: scan again while one is unconfirmed, or a face entering mid-video would never be tracked.
        self._rescan = full and len(tracks) < len(boxes)
        self.seconds["detect"] += t1 - t0
        self.seconds["track"] += time.perf_counter() - t1
        return sorted(tracks)

    def _smoothed(self, track: int, t: float, probs: np.ndarray) -> np.ndarray:
        last = self._smooth.get(track)
        if last is None or self.smooth_seconds <= 0 or t <= last[0]:
            avg = probs if last is None or self.smooth_seconds <= 0 else last[1]
        else:
            a = 1.0 - math.exp(-(t - last[0]) / self.smooth_seconds)
            avg = last[1] + a * (probs - last[1])
        self._smooth[track] = (t, avg)
        return avg

    def process(self, frames: Sequence[np.ndarray], times: Sequence[float]) -> list[list[TrackedFace]]:
        """Faces of a batch of consecutive frames; keeps the tracks between calls.

        Args:
            frames: RGB uint8 H×W×3 arrays.
            times: each frame's time in seconds (increasing across calls).

        Returns:
            For each frame, its faces ordered by track id.
        """
        found: list[list[tuple[int, Box, bool]]] = []
        for rgb in frames:
            detect = self._count % self.detect_every == 0
            if detect:
                self._current = self._track(rgb)
            self._count += 1
            found.append([(track, box, detect) for track, box in self._current])
        pre = self.predictor.preprocess
        crops = [
            to_model_array(Image.fromarray(crop_face(rgb, box, self.margin)), pre.img_size, pre.grayscale)
            for rgb, faces in zip(frames, found)
            for _, box, _ in faces
        ]
        t0 = time.perf_counter()
        probs = iter(
            self.predictor.predict_batch(np.stack(crops))
            if crops
            else np.zeros((0, len(self.class_names)), np.float32)
        )
        self.seconds["classify"] += time.perf_counter() - t0
        out = []
        for t, faces in zip(times, found):
            row = []
            for track, box, detected in faces:
                p = next(probs)
                avg = self._smoothed(track, float(t), p)
                label = UNCERTAIN if avg.max() < self.min_confidence else self.class_names[int(avg.argmax())]
                row.append(TrackedFace(track, box, p, avg, label, detected))
            out.append(row)
        return out


def _iou(a: Box, b: Box) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, iw) * max(0, ih)
    return inter / max(1, a[2] * a[3] + b[2] * b[3] - inter)


# ---------------------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def class_colors(n: int) -> tuple[tuple[int, int, int], ...]:
    """One RGB colour per class, the same in the annotated frames and the timeline figures (made once:
    every frame is drawn with them)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return tuple(tuple(int(round(255 * c)) for c in cmap(i % cmap.N)[:3]) for i in range(n))


TRACK_COLORS = [(255, 212, 0), (0, 200, 255), (255, 80, 160), (120, 255, 90), (255, 140, 0), (180, 120, 255)]


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's own fonts (any class name's letters), Pillow's default otherwise."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (OSError, ValueError, ImportError):
        return ImageFont.load_default(size)


def draw_faces(rgb: np.ndarray, faces: Sequence[TrackedFace], class_names: Sequence[str]) -> np.ndarray:
    """An annotated copy of a frame: per face its box (solid when detected on this frame, thin when
    carried), ``#track label pct``, and under the box a bar of the smoothed class probabilities in the
    classes' colours."""
    im = Image.fromarray(rgb)
    if not faces:
        return np.asarray(im)
    d = ImageDraw.Draw(im)
    H, W = rgb.shape[:2]
    size = max(11, round(min(H, W) / 28))
    font, colors = _font(size), class_colors(len(class_names))
    for f in faces:
        x, y, w, h = f.box
        color = TRACK_COLORS[(f.track - 1) % len(TRACK_COLORS)]
        d.rectangle([x, y, x + w, y + h], outline=color, width=max(2, size // 6) if f.detected else 1)
        text = f"#{f.track} {f.label} {f.score:.0%}"
        tw = d.textlength(text, font=font)
        ty = y - size - 4 if y - size - 4 >= 0 else y + h + size // 2 + 4
        d.rectangle([x, ty, x + tw + 6, ty + size + 3], fill=(0, 0, 0))
        d.text((x + 3, ty + 1), text, fill=color, font=font)
        bar_y, bar_h = min(H - 1, y + h + 2), max(4, size // 2)
        left = float(x)
        for p, c in zip(f.smoothed, colors):
            right = left + float(p) * w
            if right - left >= 0.5:
                d.rectangle([left, bar_y, right, min(H - 1, bar_y + bar_h)], fill=c)
            left = right
    return np.asarray(im)
