"""Face detectors by name: both find real and drawn faces, report nothing on no-face images, frame alike.

The real faces are frame 40 of tests/data/video_01.mp4 (see tests/data/NOTICE.md): a woman in front (Haar box
about 95,144 67×67) and a man behind her to the right (about 229,187 45×45); its no-face image is the frame's
upper right (columns and ceiling).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fer_core.apps.faces import DETECTORS, DlibDetector, FaceDetector, make_detector
from fer_core.apps.predict import Predictor
from fer_core.errors import FerError
from fer_core.tools.bench_detectors import main as bench

from .test_predict import SCENE_FACES, drawn_face, iou, scene

CLIP = Path(__file__).parent / "data" / "video_01.mp4"
WOMAN, MAN = (95, 144, 67, 67), (229, 187, 45, 45)


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """The clip's 90 frames, RGB 640×480."""
    with av.open(str(CLIP)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 90 and frames[0].shape == (480, 640, 3), (len(frames), frames[0].shape)
    return frames


@pytest.fixture(scope="module")
def frame(clip) -> np.ndarray:
    return clip[40]


@pytest.fixture(scope="module")
def clip_frames(clip) -> list[np.ndarray]:
    """Every 9th frame (0, 9, ..., 81)."""
    return clip[::9]


@pytest.fixture(scope="module", params=DETECTORS)
def detector(request):
    return make_detector(request.param)


def best_match(boxes, target) -> tuple[float, tuple]:
    return max(((iou(b, target), b) for b in boxes), default=(0.0, None))


def test_the_names(detector):
    assert isinstance(detector, {"haar": FaceDetector, "dlib": DlibDetector}[_name(detector)])
    with pytest.raises(FerError, match=r"'yunet' is unknown; choose one of: haar, dlib$"):
        make_detector("yunet")
    # Checked before the checkpoint is even read: the missing file is not what is reported.
    with pytest.raises(FerError, match="'hog' is unknown"):
        Predictor.from_checkpoint("no_such.pt", device="cpu", detector="hog")


def _name(detector) -> str:
    return "dlib" if isinstance(detector, DlibDetector) else "haar"


def test_real_faces_found(detector, frame):
    boxes = detector(frame)
    assert boxes == sorted(boxes), boxes  # left to right
    for target in (WOMAN, MAN):
        overlap, box = best_match(boxes, target)
        assert overlap > 0.7, (_name(detector), target, boxes)
    assert all(0 <= x and 0 <= y and x + w <= 640 and y + h <= 480 for x, y, w, h in boxes), boxes


def test_dlib_boxes_framed_like_haar(clip_frames):
    """Over 10 frames of the clip, each dlib box overlaps Haar's box of the same face closely.

    Unconverted, dlib's box (narrower, lower) gives a median IoU of 0.75; converted, 0.86."""
    haar, dlib = make_detector("haar"), make_detector("dlib")
    overlaps = []
    for image in clip_frames:
        overlaps += [best_match(haar(image), b)[0] for b in dlib(image)]
    assert len(overlaps) >= 15 and np.median(overlaps) > 0.8, overlaps


def test_drawn_faces_and_grayscale(detector):
    photo = np.asarray(scene([(drawn_face(s), x, y) for x, y, s in SCENE_FACES]))
    for image in (photo, photo.mean(-1).astype(np.uint8)):
        boxes = detector(image)
        assert len(boxes) == 2, boxes
        for box, (x, y, s) in zip(boxes, SCENE_FACES):
            assert iou(box, (x, y, s, s)) > 0.6, (box, (x, y, s))


def test_no_face_no_box(detector, frame):
    gradient = np.asarray(scene([]))
    ceiling = frame[:170, 190:]
    assert detector(gradient) == [] and detector(ceiling) == []
    assert detector(np.zeros((10, 10, 3), np.uint8)) == []  # smaller than any face searched for


def test_dlib_search_scale():
    d = DlibDetector()
    assert d.search_scale((480, 640, 3)) == pytest.approx(80 / 48)  # a face of 10 % of 480 px -> 80 px
    assert d.search_scale((360, 640)) == 2.0  # 80/36 would exceed max_side 1280: capped
    assert d.search_scale((2160, 3840, 3)) == pytest.approx(1 / 3)  # a 4K frame: reduced to max_side


def test_bench_detectors(frame, tmp_path, capsys):
    no_face = tmp_path / "ceiling.png"
    Image.fromarray(frame[:170, 190:]).save(no_face)
    argv = [str(CLIP), "--no-face", str(no_face), "--frames", "3", "--sizes", "native,320x240"]
    assert bench(argv) == 0
    rows = [
        line.split()
        for line in capsys.readouterr().out.splitlines()
        if line.split()[1:2] in (["haar"], ["dlib"])
    ]
    assert [r[:2] for r in rows] == [[s, d] for s in ("640x480", "320x240") for d in DETECTORS], rows
    assert rows[0][2] == "100%" and rows[0][4:6] == ["0", "0.00"], rows  # haar, native: found, no false box

    assert bench([str(tmp_path / "none.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.mp4: no such file" in err, err
