"""Face detection for prediction on photos and video frames, and the margin crop that turns a detection into a model input.

Two detectors, chosen by name with ``make_detector`` (``DETECTORS``); both return boxes framed alike, so
``margin_box``/``crop_face`` crop the same way whichever found the face:

- ``haar`` (default, ``FaceDetector``): OpenCV's frontal-face Haar cascade, whose XML ships inside the
  opencv-python-headless 4.x wheel (``cv2.data.haarcascades``). It searches faces down to 4 % of the image
  (24 px at least), so it also finds the small faces in the background, but it is the weaker detector: of
  220 FER2013 val faces pasted at 60, 100 and 160 px into a grey 640×480 frame it found 43-49 %, and on the
  test clip's lower part (tests/data/video_01.mp4 rows 260-480: hands, clothes, badges, no face) it reports
  0.86 false boxes per frame.
- ``dlib`` (``DlibDetector``): dlib's HOG + linear SVM frontal-face detector (``dlib-bin`` wheel; the model
  is compiled into the library: nothing to download). It found 77 % of the same FER2013 faces at each size
  and no false box on the clip's lower part. Its 80 px window sets its cost: by default the image is rescaled so a face
  of 10 % of the shorter side fills it, which misses the clip's smaller background faces (6-7 %) that Haar
  finds; ``min_face_fraction=0.06, max_side=2200`` finds some of them (2.40 faces per frame instead of 2.00)
  at 2.8 times the time.
  ``fer_core.tools.bench_detectors`` measures both on any footage (speed included).

Profile faces and heavy occlusion are missed by both (prediction then classifies the whole image and says so).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import FerError

CASCADE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the image it was found in

DETECTORS = ("haar", "dlib")


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
        gray = _gray(image)
        scale = min(1.0, self.max_side / max(gray.shape))
        gray = _resized(gray, scale)
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


def _gray(image: np.ndarray) -> np.ndarray:
    """uint8 H×W (gray) or H×W×3/4 (RGB[A]) -> contiguous H×W gray."""
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` scaled by ``scale`` (area averaging to shrink, bilinear to enlarge)."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


# dlib's frontal-face HOG filter is an 80×80 window: the smallest face it finds is ~80 px in the searched image.
DLIB_WINDOW = 80
# dlib's box -> the box Haar draws on the same face, so that ``margin_box`` frames both alike: Haar's square is
# 1.1 times as wide and its centre 0.1 of dlib's side higher (dlib's box is tighter, its top edge near the
# brows). Medians of the pairs both detectors found: 288 FER2013 val faces pasted at 60, 100 and 160 px into
# a grey frame, 1.11 and 0.10; the 176 faces of the test clip, 1.03 and 0.12 (IoU with Haar's box: median
# 0.75 unconverted, 0.86 converted).
DLIB_TO_HAAR_SIDE = 1.1
DLIB_TO_HAAR_RAISE = 0.1


class DlibDetector:
    """Frontal-face detector (dlib's HOG) returning Haar-framed boxes sorted left to right.

    The image is rescaled once so that the smallest face asked for fills dlib's 80 px window, then searched
    without dlib's own upsampling: a face of ``min_face_fraction`` of the shorter side is found whatever the
    resolution, and a large photo is reduced rather than searched at full size. Measured on every 3rd frame
    of the 640×480 test clip (two faces of ~67 and ~45 px; 2 busy EPYC cores): dlib's upsample 0 found 0.87 faces per frame
    (23 ms), its upsample 1 (doubling) 2.03 (97 ms), this rescale by 1.67 2.00 (63 ms). Each box is
    converted to the Haar framing (``DLIB_TO_HAAR_SIDE``, ``DLIB_TO_HAAR_RAISE``) so ``margin_box`` crops as
    training saw faces.

    Args:
        min_face_fraction: smallest face searched for, as a fraction of the image's shorter side (at least
            ``min_face_px``). dlib's cost grows with the square of the rescale, so this sets the speed:
            0.1 on a 640×360 frame searches it at 1280×720 (capped by ``max_side``).
        min_face_px: faces smaller than this are not searched for (they would be upscaled far beyond what
            the model saw anyway).
        max_side: the searched image's long side is at most this (the smallest face found then grows).
        threshold: dlib's ``adjust_threshold``: above 0 fewer, surer faces; below 0 more.
    """

    def __init__(
        self,
        min_face_fraction: float = 0.1,
        min_face_px: int = 24,
        max_side: int = 1280,
        threshold: float = 0.0,
    ):
        import dlib  # only this detector needs it

        self.detector = dlib.get_frontal_face_detector()
        self.min_face_fraction, self.min_face_px = min_face_fraction, min_face_px
        self.max_side, self.threshold = max_side, threshold

    def search_scale(self, shape: tuple[int, ...]) -> float:
        """The factor the image of ``shape`` (H, W[, C]) is resized by before dlib searches it."""
        h, w = shape[:2]
        smallest = max(self.min_face_px, self.min_face_fraction * min(h, w))
        return min(DLIB_WINDOW / smallest, self.max_side / max(h, w))

    def __call__(self, image: np.ndarray) -> list[Box]:
        """Find faces.

        Args:
            image: uint8 H×W (gray) or H×W×3 (RGB).

        Returns:
            Boxes (x, y, w, h) in ``image``'s pixels, Haar-framed, inside the image, left to right.
        """
        # Colour, not gray: dlib's HOG takes each pixel's strongest channel gradient; on frame 40 of the test
        # clip both faces scored 0.2-0.5 higher in colour at every rescale tried (1 to 2), and at 1 and 1.5 the
        # gray frame missed one of them.
        rgb = np.ascontiguousarray(image if image.ndim == 2 else image[..., :3])
        H, W = rgb.shape[:2]
        scale = self.search_scale(rgb.shape)
        rects, _, _ = self.detector.run(_resized(rgb, scale), 0, self.threshold)
        boxes = []
        for r in rects:
            side = max(r.width(), r.height()) / scale
            cx = (r.left() + r.right() + 1) / 2 / scale
            cy = (r.top() + r.bottom() + 1) / 2 / scale - DLIB_TO_HAAR_RAISE * side
            side *= DLIB_TO_HAAR_SIDE
            x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
            x1, y1 = min(W, round(cx + side / 2)), min(H, round(cy + side / 2))
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1 - x0, y1 - y0))
        return sorted(_suppress_nested(boxes), key=lambda b: (b[0], b[1]))


def make_detector(name: str = "haar", **options) -> FaceDetector | DlibDetector:
    """The face detector called ``name`` (one of ``DETECTORS``), built with ``options``.

    Both return ``__call__(image) -> list[Box]`` with the same framing (see the module's docstring for what
    each is good and bad at).

    Raises:
        FerError: an unknown name, or the detector's files or package are missing.
    """
    if detector_name(name) == "haar":
        return FaceDetector(**options)
    try:
        return DlibDetector(**options)
    except ImportError:
        raise FerError(
            "face detector 'dlib': python package dlib is missing; pip install dlib-bin (or use the haar detector)"
        ) from None


def detector_name(name: str) -> str:
    """``name`` if it is one of ``DETECTORS``.

    Raises:
        FerError: an unknown name, with the choices.
    """
    if name not in DETECTORS:
        raise FerError(f"face detector {name!r} is unknown; choose one of: {', '.join(DETECTORS)}")
    return name


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
        box: (x, y, w, h) from a detector of ``make_detector``.
        margin: fraction of the box size added on each side.
    """
    x, y, w, h = margin_box(box, image.shape, margin)
    return image[y : y + h, x : x + w]
