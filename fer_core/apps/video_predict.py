"""Expressions over time for a video file or a camera: the annotated copy, the per-frame table, a timeline per
track and the summary, written into one output folder.

``process_video(path, predictor, out)`` (and ``fer_core.apps.camera.run_camera`` for a camera) feeds frames
to a ``FaceStream`` (``fer_core.apps.stream``) and hands each annotated frame to a ``Recording``, which owns
what lands in the folder:

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
    """Writes one stream's results folder ``out``: into a temporary folder beside it (``folder``), renamed to
    ``out`` by ``finish`` when complete, or removed by ``discard``.

    Args:
        out: the results folder; an earlier result there is replaced, any other folder refused at once.
        size: (width, height) of the frames given to ``add``.
        scale: input pixels per frame pixel (boxes are written in the input's pixels).
        fps: the nominal frame rate of the annotated copy.
        class_names: the predictor's classes.

    Raises:
        FerError: ``out`` is a folder that holds something other than a video result.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        size: tuple[int, int],
        scale: float,
        fps: float,
        class_names: Sequence[str],
    ):
        self.out = Path(out)
        if self.out.exists() and not (self.out / "summary.json").is_file():
            raise FerError(
                f"{self.out}: exists and is not a video result folder; move it or pass another --out"
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.folder = self.out.parent / f".{self.out.name}.partial"
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()
        self.scale, self.fps, self.class_names = scale, fps, list(class_names)
        self.writer = VideoWriter(self.folder / "annotated.mp4", size, fps)
        self._csv_file = open(self.folder / "frames.csv", "w", newline="")
        self._jsonl = open(self.folder / "frames.jsonl", "w")
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

    def discard(self) -> None:
        """Close the files and remove the temporary folder: nothing of the stream is left."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

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
        """Close the files, draw the timelines, write summary.json and put the folder in place as ``out``."""
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
        write_atomic(self.folder / "summary.json", lambda f: f.write(json.dumps(summary, indent=1).encode()))
        if self.out.exists():
            shutil.rmtree(self.out)  # an earlier result (anything else was refused at the start)
        os.replace(self.folder, self.out)
        o = self.out
        return VideoResult(
            o,
            o / "annotated.mp4",
            o / "frames.csv",
            o / "frames.jsonl",
            [o / p.name for p in timelines],
            o / "summary.json",
            summary,
        )


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
        rec = Recording(out, info.size, info.width / info.size[0], info.fps, predictor.class_names)
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
            rec.discard()
            raise
        bar.close()
    if rec.frames == 0:
        rec.discard()
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
    return rec.finish(str(path), seconds, notes)
