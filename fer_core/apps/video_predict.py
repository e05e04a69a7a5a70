"""Expressions over time for a video file or a camera: the annotated copy, the per-frame table, a timeline per
track and the summary, written into one output folder.

``process_video(path, predictor, out)`` and ``run_camera(source, predictor, out)`` feed frames to a
``FaceStream`` (``fer_core.apps.stream``) and hand each annotated frame to a ``Recording``, which owns what
lands in the folder:

- ``annotated.mp4``: every input frame, annotated, with its input timestamp (same frame count and rate);
- ``frames.csv`` and ``frames.jsonl``: one row per face per frame (time, frame, track, box in the input's
  pixels, all class probabilities, the smoothed ones, the label), and one row with an empty track for a
  frame without a face, so every frame is accounted for;
- ``timeline_track<N>.png`` for each track on screen at least ``MIN_TIMELINE_SECONDS`` (the smoothed class
  probabilities over time), or ``timeline.png`` saying that no face was found;
- ``summary.json``: each track's time on screen and share of time per expression, the frames with a face,
  where the processing time went (decode, detect, track, classify, draw, encode) and the real-time factor
  (video duration / processing time).

Rows are written as frames are processed; only per-track series (a few floats per frame) are kept for the
timelines, so memory stays flat over long videos. The folder is written under a temporary name next to it
and renamed when complete: a failed or interrupted video leaves no half-written result.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import write_atomic
from ..errors import DataError, FerError
from .video import MAX_SIDE, VideoReader, VideoWriter

if TYPE_CHECKING:  # the stream imports torch and the model code: loaded when a video is processed
    from .stream import TrackedFace

# Detection on every 2nd frame: on the one-face 640x360 footage 2.4x real time instead of 1.7x, with the same
# recall (docs/measured.md), so a CPU half as fast stays live; a carried box is one frame (33 ms) old.
DETECT_EVERY = 2
SMOOTH_SECONDS = 0.5
MIN_TIMELINE_SECONDS = 0.5
BATCH_FRAMES = 8  # frames whose faces share one forward pass
RESULT_FILES = ("annotated.mp4", "frames.csv", "frames.jsonl", "summary.json")


@dataclass
class _Track:
    times: list[float] = field(default_factory=list)
    smoothed: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    area: float = 0.0  # summed box areas: the larger face wins a tie in frames on screen


@dataclass
class VideoResult:
    """Where one video's (or camera session's) results are, and its summary (the content of ``summary_path``)."""

    folder: Path
    video: Path
    csv: Path
    jsonl: Path
    timelines: list[Path]
    summary_path: Path
    summary: dict

    @property
    def frames(self) -> int:
        return self.summary["frames"]


class Recording:
    """Writes one stream's results into ``folder`` (a temporary folder the caller renames when done).

    Args:
        folder: where the files go.
        size: (width, height) of the frames given to ``add``.
        scale: input pixels per frame pixel (boxes are written in the input's pixels).
        fps: the nominal frame rate of the annotated copy.
        class_names: the predictor's classes.
    """

    def __init__(
        self, folder: Path, size: tuple[int, int], scale: float, fps: float, class_names: Sequence[str]
    ):
        self.folder, self.scale, self.fps, self.class_names = folder, scale, fps, list(class_names)
        self.writer = VideoWriter(folder / "annotated.mp4", size, fps)
        self._csv_file = open(folder / "frames.csv", "w", newline="")
        self._jsonl = open(folder / "frames.jsonl", "w")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(
            ["frame", "time", "track", "x", "y", "w", "h", "detected", "label", "score"]
            + [f"p_{c}" for c in self.class_names]
            + [f"smoothed_{c}" for c in self.class_names]
        )
        self.tracks: dict[int, _Track] = {}
        self.frames, self.frames_with_face, self.times = 0, 0, []
        self.seconds = {"draw": 0.0, "encode": 0.0}

    def add(self, index: int, t: float, rgb: np.ndarray, faces: list[TrackedFace]) -> np.ndarray:
        """Record one frame: its rows, its annotated copy (returned), the tracks' series."""
        from .stream import draw_faces

        t0 = time.perf_counter()
        annotated = draw_faces(rgb, faces, self.class_names)
        t1 = time.perf_counter()
        self.writer.write(annotated, t)
        self.seconds["draw"] += t1 - t0
        self.seconds["encode"] += time.perf_counter() - t1
        self.frames += 1
        self.times.append(t)
        self.frames_with_face += bool(faces)
        for f in faces or [None]:
            if f is None:
                row = [index, f"{t:.4f}", "", "", "", "", "", "", "", ""] + [""] * (2 * len(self.class_names))
                self._csv.writerow(row)
                self._jsonl.write(json.dumps({"frame": index, "time": round(t, 4), "track": None}) + "\n")
                continue
            box = [int(round(v * self.scale)) for v in f.box]
            self._csv.writerow(
                [index, f"{t:.4f}", f.track, *box, int(f.detected), f.label, f"{f.score:.4f}"]
                + [f"{v:.4f}" for v in f.probs]
                + [f"{v:.4f}" for v in f.smoothed]
            )
            self._jsonl.write(
                json.dumps(
                    {
                        "frame": index,
                        "time": round(t, 4),
                        "track": f.track,
                        "box": box,
                        "detected": f.detected,
                        "label": f.label,
                        "score": round(f.score, 4),
                        "probabilities": {c: round(float(v), 4) for c, v in zip(self.class_names, f.probs)},
                        "smoothed": {c: round(float(v), 4) for c, v in zip(self.class_names, f.smoothed)},
                    }
                )
                + "\n"
            )
            tr = self.tracks.setdefault(f.track, _Track())
            tr.times.append(t)
            tr.smoothed.append(f.smoothed.astype(np.float32))
            tr.labels.append(f.label)
            tr.area += f.box[2] * f.box[3]
        return annotated

    def close(self) -> None:
        self.writer.close()
        self._csv_file.close()
        self._jsonl.close()

    def frame_seconds(self) -> float:
        """One frame's duration: the median interval between frames (1/fps with fewer than two)."""
        return float(np.median(np.diff(self.times))) if len(self.times) > 1 else 1.0 / self.fps

    def variable_rate(self) -> bool:
        """Intervals between frames differ by more than 10% of the median (on 5% of frames or more)."""
        if len(self.times) < 3:
            return False
        d = np.diff(self.times)
        return bool(np.mean(np.abs(d - np.median(d)) > 0.1 * np.median(d)) >= 0.05)

    def finish(self, source: str, seconds: dict[str, float], notes: list[str]) -> VideoResult:
        """Close the files, draw the timelines and write summary.json."""
        from .predict import UNCERTAIN
        from .predict_plots import plot_no_face_timeline, plot_track_timeline

        self.close()
        dt = self.frame_seconds()
        duration = (self.times[-1] - self.times[0] + dt) if self.times else 0.0
        tracks = []
        for track_id, tr in sorted(self.tracks.items(), key=lambda kv: (-len(kv[1].times), -kv[1].area)):
            labels, n = tr.labels, len(tr.labels)
            shares = {c: labels.count(c) / n for c in [*self.class_names, UNCERTAIN] if labels.count(c)}
            tracks.append(
                {
                    "track": track_id,
                    "frames": n,
                    "seconds_on_screen": round(n * dt, 3),
                    "first_seen": round(tr.times[0], 3),
                    "last_seen": round(tr.times[-1], 3),
                    "expression_share": {c: round(v, 4) for c, v in shares.items()},
                    "dominant_expression": max(shares, key=shares.get),
                    "mean_smoothed": {
                        c: round(float(v), 4) for c, v in zip(self.class_names, np.mean(tr.smoothed, 0))
                    },
                }
            )
        timelines = []
        for t in tracks:
            if t["seconds_on_screen"] >= MIN_TIMELINE_SECONDS or t is tracks[0]:
                tr = self.tracks[t["track"]]
                timelines.append(
                    plot_track_timeline(
                        np.asarray(tr.times),
                        np.stack(tr.smoothed),
                        self.class_names,
                        self.folder / f"timeline_track{t['track']}.png",
                        f"track #{t['track']}: {t['seconds_on_screen']:.1f} s on screen, mostly {t['dominant_expression']}",
                        gap=3 * dt,
                        span=(self.times[0], self.times[-1]) if self.times else (0, 0),
                    )
                )
        if not tracks:
            notes.append("no face found in any frame: the rows have an empty track, the video has no boxes")
            timelines.append(
                plot_no_face_timeline(
                    self.folder / "timeline.png", f"{Path(source).name}: no face found in any frame"
                )
            )
        total = sum(seconds.values())
        summary = {
            "source": source,
            "class_names": self.class_names,
            "frames": self.frames,
            "fps": round(self.fps, 4),
            "duration_seconds": round(duration, 3),
            "variable_frame_rate": self.variable_rate(),
            "frames_with_face": self.frames_with_face,
            "face_share": round(self.frames_with_face / self.frames, 4) if self.frames else 0.0,
            "tracks": tracks,
            "dominant_track": tracks[0]["track"] if tracks else None,
            "processing_seconds": {k: round(v, 3) for k, v in seconds.items()},
            "real_time_factor": round(duration / total, 3) if total > 0 else None,
            "notes": notes,
        }
        path = self.folder / "summary.json"
        write_atomic(path, lambda f: f.write(json.dumps(summary, indent=1).encode()))
        return VideoResult(
            self.folder,
            self.writer.path,
            self.folder / "frames.csv",
            self.folder / "frames.jsonl",
            timelines,
            path,
            summary,
        )


def _staging(out: Path) -> Path:
    """An empty temporary folder beside ``out`` for its files; renamed to ``out`` when they are complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Put a complete result folder in place, replacing an earlier result (never another kind of folder)."""
    if out.exists():
        if not (out / "summary.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise FerError(f"{out}: exists and is not a video result folder; move it or pass another --out")
        shutil.rmtree(out)
    os.replace(tmp, out)


def process_video(
    path: str | os.PathLike,
    predictor,
    out: str | os.PathLike,
    *,
    detect_every: int = DETECT_EVERY,
    smooth_seconds: float = SMOOTH_SECONDS,
    min_confidence: float = 0.0,
    margin: float = 0.1,
    max_side: int = MAX_SIDE,
    progress: bool = True,
    on_frame: Callable[[int, int], None] | None = None,
) -> VideoResult:
    """Track and classify the faces of a video file and write its results folder ``out`` (module docstring).

    Args:
        path: the video.
        predictor: a ``Predictor`` (checkpoint) or ``OnnxPredictor`` (exported model).
        out: the results folder (replaced if it holds an earlier result).
        detect_every, smooth_seconds, min_confidence, margin: as for ``FaceStream``.
        max_side: frames are processed and the annotated copy written at most this large.
        progress: a progress bar on stderr (frames done, frames per second, real-time factor).
        on_frame: called as ``on_frame(frames_done, frames_expected)`` after each batch (the web app's bar).

    Raises:
        DataError: the file is missing, not a video, has no video stream, or no frame decodes.
    """
    from tqdm import tqdm

    from .stream import FaceStream

    out = Path(out)
    started = time.perf_counter()
    with VideoReader(path, max_side) as reader:
        info = reader.info
        stream = FaceStream(predictor, detect_every, smooth_seconds, min_confidence, margin, info.fps)
        tmp = _staging(out)
        rec = Recording(tmp, info.size, info.width / info.size[0], info.fps, predictor.class_names)
        decode = 0.0
        bar = tqdm(
            total=info.expected_frames or None,
            unit="frame",
            desc=Path(path).name[:30],
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            frames = iter(reader)
            while True:
                t0 = time.perf_counter()
                batch = [f for _, f in zip(range(BATCH_FRAMES), frames)]
                decode += time.perf_counter() - t0
                if not batch:
                    break
                faces = stream.process([rgb for _, _, rgb in batch], [t for _, t, _ in batch])
                for (index, t, rgb), fs in zip(batch, faces):
                    rec.add(index, t, rgb, fs)
                bar.update(len(batch))
                elapsed = time.perf_counter() - started
                bar.set_postfix_str(f"{rec.times[-1] / elapsed:.2f}x real time", refresh=False)
                if on_frame:
                    on_frame(rec.frames, info.expected_frames)
        except BaseException:
            bar.close()
            rec.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        bar.close()
    if rec.frames == 0:
        rec.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{path}: has a video stream but no frame in it decodes; re-export the file")
    notes = []
    expected = info.expected_frames
    if expected and rec.frames < 0.98 * expected - 1:
        notes.append(
            f"the file ends after {rec.frames} of the {expected} frames its header announces: truncated? "
            "the results cover the frames decoded"
        )
    if rec.variable_rate():
        notes.append("variable frame rate: times are the frames' own timestamps, kept in annotated.mp4")
    seconds = {"decode": decode, **stream.seconds, **rec.seconds}
    seconds["other"] = max(0.0, time.perf_counter() - started - sum(seconds.values()))
    result = rec.finish(str(path), seconds, notes)
    _publish(tmp, out)
    return _moved(result, out)


def _moved(result: VideoResult, out: Path) -> VideoResult:
    """The same result with its paths in the published folder."""

    def m(p: Path) -> Path:
        return out / p.relative_to(result.folder)

    return VideoResult(
        out,
        m(result.video),
        m(result.csv),
        m(result.jsonl),
        [m(p) for p in result.timelines],
        m(result.summary_path),
        result.summary,
    )


# ---------------------------------------------------------------------------------------------------------
# a camera
# ---------------------------------------------------------------------------------------------------------


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
    tmp = _staging(out)
    rec = Recording(tmp, size, w / size[0], fps, predictor.class_names)
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
    finally:
        cap.release()
        if window:
            window.close()
    if rec.frames == 0:
        rec.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise FerError(
            f"camera {source}: gave no frame; check it with another program, or pass another --webcam N"
        )
    seconds = {"decode": grab, **stream.seconds, **rec.seconds}
    seconds["other"] = max(0.0, time.perf_counter() - started - sum(seconds.values()))
    result = rec.finish(f"camera {source}", seconds, [f"live session, {reason}"])
    _publish(tmp, out)
    return _moved(result, out)
