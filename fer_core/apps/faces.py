"""Face detection for prediction on photos, and the margin crop that turns a detection into a model input.

The detector is OpenCV's frontal-face Haar cascade, whose XML ships inside the opencv-python-headless 4.x
wheel (``cv2.data.haarcascades``): nothing is downloaded at run time. It is fast on a CPU and finds
frontal faces of at least ~24 px; profile faces and heavy occlusion are missed (prediction then classifies
the whole image and says so).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import FerError

CASCADE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the image it was found in


class FaceDetector:
    """Frontal-face detector (OpenCV Haar cascade) returning boxes sorted left to right.

    Args:
        scale_factor: image-pyramid step; 1.1 is OpenCV's usual trade-off of recall against speed.
        min_neighbors: overlapping raw detections a face needs; 5 keeps false positives on textured
            backgrounds rare.
        min_face_fraction: smallest face searched for, as a fraction of the image's shorter side (never
            below the cascade's 24 px window). Tiny "faces" in a large photo are mostly false positives and
            would be upscaled far beyond what the model saw anyway.
        max_side: the image is searched at most this large (long side), boxes scaled back; detection
            cost grows with the pixel count and a 4000 px photo gains nothing over 1280 px.

    Raises:
        FerError: the cascade file is missing from the installed OpenCV (e.g. a 5.x wheel).
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.04,
        max_side: int = 1280,
    ):
        path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / CASCADE
        self.cascade = cv2.CascadeClassifier(str(path)) if path.is_file() else None
        if self.cascade is None or self.cascade.empty():
            raise FerError(
                f"{path}: OpenCV's Haar face cascade is missing; install opencv-python-headless>=4.9,<5 "
                "(its 4.x wheels ship the cascades), or pass --no-face-detect for inputs that are face crops"
            )
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_face_fraction, self.max_side = min_face_fraction, max_side

    def __call__(self, image: np.ndarray) -> list[Box]:
        """Find faces.

        Args:
            image: uint8 H×W (gray) or H×W×3 (RGB).

        Returns:
            Boxes (x, y, w, h) in ``image``'s pixels, left to right.
        """
        gray = (
            image
            if image.ndim == 2
            else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
        )
        h, w = gray.shape
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            gray = cv2.resize(
                gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        # Histogram equalisation makes the cascade's light/dark features work in dim or washed-out photos.
        gray = cv2.equalizeHist(np.ascontiguousarray(gray))
        side = max(24, round(self.min_face_fraction * min(gray.shape)))
        if min(gray.shape) < side:
            return []
        found = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        boxes = [tuple(int(round(v / scale)) for v in b) for b in np.asarray(found).reshape(-1, 4)]
        return sorted(_suppress_nested(boxes), key=lambda b: (b[0], b[1]))


def _suppress_nested(boxes: list[Box], overlap: float = 0.5) -> list[Box]:
    """Drop a box that lies mostly (> ``overlap`` of its area) inside a larger kept one.

    The cascade's own grouping merges near-identical hits, but sometimes still reports a mouth-and-nose box
    inside a face: two "faces" for one person would be classified twice.
    """
    kept: list[Box] = []
    for b in sorted(boxes, key=lambda b: b[2] * b[3], reverse=True):
        x, y, w, h = b
        if all(_intersection(b, k) <= overlap * w * h for k in kept):
            kept.append(b)
    return kept


def _intersection(a: Box, b: Box) -> int:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, iw) * max(0, ih)


def margin_box(box: Box, image_shape: tuple[int, ...], margin: float = 0.1) -> Box:
    """Grow a face box by ``margin`` of its size on every side, kept square and inside the image.

    The Haar box runs from brows to chin, close to FER2013's framing, so the margin is small: enough to
    keep the chin and forehead that expressions move, not so much that the face shrinks in the 48 px input.
    A box near the border is shifted inward to stay square; only when the image itself is too small is it
    clipped (and the crop then stretched to a square, the same rule training applies to non-square files).

    Args:
        box: (x, y, w, h).
        image_shape: the image's shape (H, W[, C]).
        margin: fraction of the box size added on each side.

    Returns:
        (x, y, w, h) of the crop, inside the image.
    """
    H, W = image_shape[:2]
    x, y, w, h = box
    side = round(max(w, h) * (1 + 2 * margin))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x0 = min(max(0, x0), max(0, W - side))
    y0 = min(max(0, y0), max(0, H - side))
    return x0, y0, min(side, W - x0), min(side, H - y0)


def crop_face(image: np.ndarray, box: Box, margin: float = 0.1) -> np.ndarray:
    """The face region of ``image`` with a margin (see ``margin_box``).

    Args:
        image: uint8 H×W or H×W×C array.
        box: (x, y, w, h) from ``FaceDetector``.
        margin: fraction of the box size added on each side.
    """
    x, y, w, h = margin_box(box, image.shape, margin)
    return image[y : y + h, x : x + w]
