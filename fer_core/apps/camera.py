"""A camera, live: frames from a camera index, device path or stream URL (OpenCV), tracked and classified like
a video's, shown in a window where there is a display and recorded into a results folder.

The loop is ``fer_core.apps.stream.FaceStream``; the folder (annotated.mp4 with the frames' real times, the
tables, timelines and summary) is ``fer_core.apps.video_predict.Recording``, as for a video file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import FerError
from .video import MAX_SIDE
from .video_predict import DETECT_EVERY, SMOOTH_SECONDS, Recording, VideoResult


def open_camera(source: int | str):
    """A camera index (0, 1, ...), device path or stream URL, opened: ``(cv2.VideoCapture, first RGB frame)``.

    Raises:
        FerError: one line naming what was tried.
    """
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(
        cv2.utils.logging.LOG_LEVEL_ERROR
    )  # its own warnings: the line below says it
    try:
        cap = cv2.VideoCapture(source)
        ok, bgr = cap.read() if cap.isOpened() else (False, None)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not ok:
        cap.release()
        where = f"camera {source} (/dev/video{source})" if isinstance(source, int) else f"camera {source}"
        raise FerError(
            f"{where}: cannot be opened or gives no frame (no such device, or another program holds it); "
            "pass another index with --webcam N"
        )
    return cap, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def display_available() -> bool:
    """A window can be shown: a display on Linux, or macOS or Windows."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return sys.platform in ("darwin", "win32")


class _Window:
    """The live view: a matplotlib window (the OpenCV wheel is headless, without windows); q or closing it stops."""

    def __init__(self, title: str):
        import matplotlib

        matplotlib.use(next(b for b in ("TkAgg", "QtAgg", "MacOSX") if _backend_ok(b)), force=True)
        import matplotlib.pyplot as plt

        self.plt, self.closed = plt, False
        self.fig, ax = plt.subplots(num=title)
        ax.axis("off")
        self.image = None
        self.ax = ax
        self.fig.canvas.mpl_connect(
            "key_press_event", lambda e: setattr(self, "closed", e.key == "q" or self.closed)
        )
        self.fig.canvas.mpl_connect("close_event", lambda e: setattr(self, "closed", True))
        plt.show(block=False)

    def show(self, rgb: np.ndarray) -> None:
        if self.image is None:
            self.image = self.ax.imshow(rgb)
        else:
            self.image.set_data(rgb)
        self.fig.canvas.draw_idle()
        self.fig.canvas.flush_events()

    def close(self) -> None:
        self.plt.close(self.fig)


def _backend_ok(name: str) -> bool:
    import matplotlib

    try:
        matplotlib.use(name, force=True)
        return True
    except (ImportError, ValueError):
        return False


def run_camera(
    source: int | str,
    predictor,
    out: str | os.PathLike,
    *,
    detect_every: int = DETECT_EVERY,
    smooth_seconds: float = SMOOTH_SECONDS,
    min_confidence: float = 0.0,
    margin: float = 0.1,
    max_side: int = MAX_SIDE,
    show: bool | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
) -> VideoResult:
    """Track and classify faces live from a camera until q (in the window), Ctrl-C or ``max_seconds``.

    With a display (``show`` None: ``display_available()``) the annotated view is shown in a window; in
    every case the session is recorded into ``out`` like a video file (annotated.mp4 with the frames' real
    times, the tables, timelines and summary), so a machine without a display gets the annotated stream
    as a file.

    Raises:
        FerError: the camera cannot be opened.
    """
    import cv2

    from .stream import FaceStream

    out = Path(out)
    cap, first = open_camera(source)
    h, w = first.shape[:2]
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if 1 <= fps <= 240 else 30.0
    k = min(1.0, max_side / max(w, h, 1))
    size = (max(2, round(w * k / 2) * 2), max(2, round(h * k / 2) * 2))
    stream = FaceStream(predictor, detect_every, smooth_seconds, min_confidence, margin, fps)
    rec = Recording(out, size, w / size[0], fps, predictor.class_names)
    window = _Window(f"fer: camera {source}") if (display_available() if show is None else show) else None
    if progress:
        where = "a window (q to stop) and " if window else ""
        print(
            f"camera {source}: {w}x{h} at {fps:.0f} fps; annotated stream to {where}{out / 'annotated.mp4'}; Ctrl-C stops",
            file=sys.stderr,
        )
    started, grab, index, reason = time.perf_counter(), 0.0, 0, "stopped"
    try:
        while True:
            t0 = time.perf_counter()
            if first is not None:
                rgb, first = first, None
            else:
                ok, bgr = cap.read()
                if not ok:
                    reason = "the camera gave no more frames"
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            grab += time.perf_counter() - t0
            now = time.perf_counter() - started
            if rgb.shape[1] != size[0] or rgb.shape[0] != size[1]:
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            faces = stream.process([rgb], [now])[0]
            annotated = rec.add(index, now, rgb, faces)
            index += 1
            if window:
                window.show(annotated)
                if window.closed:
                    reason = "window closed"
                    break
            if max_seconds is not None and now >= max_seconds:
                reason = f"{max_seconds:g} s recorded"
                break
    except KeyboardInterrupt:
        reason = "Ctrl-C"
    except BaseException:
        rec.discard()
        raise
    finally:
        cap.release()
        if window:
            window.close()
    seconds = {"decode": grab, **stream.seconds, **rec.seconds}
    seconds["other"] = max(0.0, time.perf_counter() - started - sum(seconds.values()))
    return rec.finish(f"camera {source}", seconds, [f"live session, {reason}"])
