"""Reading and writing video files: frames streamed out of a file with their times, annotated frames encoded back.

Decoding and encoding use PyAV, the Python binding of FFmpeg whose wheels bundle FFmpeg itself (H.264 and
VP9 encoders included). PyAV rather than OpenCV's ``VideoCapture``: it gives each frame's presentation
time (so variable frame rate files keep their timing), the stream's metadata (frame count, rate, audio-only
files), real exceptions for corrupt or truncated data instead of a silent ``False``, and threaded decoding.
Frames are decoded one at a time and scaled by FFmpeg while converting to RGB, so memory does not grow with
the length or the resolution of the video. A camera is read by ``fer_core.apps.camera.open_camera``
(OpenCV), the usual way to reach one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import DataError

# Inputs ``predict`` sends down the video path. Audio suffixes go there too, so an audio file is refused
# as "no video stream" rather than as a broken image.
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
AUDIO_SUFFIXES = frozenset({".mp3", ".wav", ".m4a", ".aac", ".flac", ".ogg", ".opus"})
# Frames are processed and the annotated copy written at most this large (long side): a face needs far
# fewer pixels to be found and classified at 48 px, and encoding 4K on a laptop CPU is slower than live.
MAX_SIDE = 1280


def is_video(path: str | os.PathLike) -> bool:
    """A file ``predict`` reads as a video (or refuses as audio only), by its suffix."""
    suffix = Path(path).suffix.lower()
    return suffix in VIDEO_SUFFIXES or suffix in AUDIO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What the file's header says: size in pixels, frame rate (average), frame count (0: not stored),
    duration in seconds (0: not stored), codec; ``size`` is the size frames are delivered at (at most
    ``max_side``)."""

    path: str
    width: int
    height: int
    fps: float
    frames: int
    duration: float
    codec: str
    size: tuple[int, int]

    @property
    def expected_frames(self) -> int:
        """The frame count stored, else duration × rate (0 when neither is known)."""
        return self.frames or int(round(self.duration * self.fps))


def _even(v: float) -> int:
    return max(2, int(round(v / 2)) * 2)  # H.264 in yuv420p needs even sides


class VideoReader:
    """A video file's frames, decoded one at a time: ``for index, time, rgb in reader``.

    ``time`` is the frame's presentation time in seconds from the first frame (its timestamp: right for
    variable frame rate too); ``rgb`` an H×W×3 uint8 array of ``info.size``. Use as a context manager.

    Args:
        path: the video file.
        max_side: frames are scaled down (by FFmpeg) to at most this long side.

    Raises:
        DataError: one line naming the file: missing, not a video, no video stream (audio only).
    """

    def __init__(self, path: str | os.PathLike, max_side: int = MAX_SIDE):
        import av

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file; check the path")
        try:
            self.container = av.open(str(self.path))
        except av.error.EOFError:
            raise DataError(
                f"{self.path}: no frame to read (the file ends before its first frame: empty or cut short); "
                "re-export it or pass another file"
            ) from None
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise DataError(
                f"{self.path}: not a readable video ({_reason(e)}): corrupt, truncated or not a video; "
                "re-export it or pass another file"
            ) from None
        if not self.container.streams.video:
            kinds = sorted({s.type for s in self.container.streams}) or ["no streams"]
            self.container.close()
            raise DataError(f"{self.path}: has no video stream ({', '.join(kinds)} only); pass a video file")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps pace on 2 cores
        s = self.stream
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        duration = (
            float(s.duration * s.time_base)
            if s.duration and s.time_base
            else (self.container.duration or 0) / 1e6
        )
        w, h = s.codec_context.width, s.codec_context.height
        if not w or not h:
            self.container.close()
            raise DataError(
                f"{self.path}: its video stream has no frame size; the file is damaged, re-export it"
            )
        k = min(1.0, max_side / max(w, h))
        self.info = VideoInfo(
            str(self.path),
            w,
            h,
            fps or 30.0,
            int(s.frames or 0),
            duration,
            s.codec_context.name,
            (_even(w * k), _even(h * k)) if k < 1 else (w, h),
        )
        self.time_base = s.time_base or Fraction(1, 90000)
        self._start: int | None = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        import av

        w, h = self.info.size
        scale = (w, h) != (self.info.width, self.info.height)
        index, last = 0, -math.inf
        try:
            for frame in self.container.decode(self.stream):
                if frame.pts is not None:
                    self._start = frame.pts if self._start is None else self._start
                    t = float((frame.pts - self._start) * self.time_base)
                else:
                    t = index / self.info.fps
                t = max(t, last + 1e-6)  # broken files repeat timestamps; times stay increasing
                last = t
                rgb = (
                    frame.to_ndarray(format="rgb24", width=w, height=h)
                    if scale or frame.width != w or frame.height != h
                    else frame.to_ndarray(format="rgb24")
                )
                yield index, t, rgb
                index += 1
        except av.error.FFmpegError as e:
            if index == 0:
                raise DataError(
                    f"{self.path}: no frame can be decoded ({_reason(e)}); the file is damaged, re-export it"
                ) from None
            raise DataError(
                f"{self.path}: decoding failed after {index} frame(s) ({_reason(e)}); the file is damaged "
                "or truncated, re-export it"
            ) from None


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.splitlines()[0][:160]


class VideoWriter:
    """Encodes RGB frames into an H.264 MP4 (yuv420p, ``crf`` quality) with the input's timestamps.

    Each frame is written with its own time, so a variable frame rate input keeps its timing and the
    copy has the same frame count; the stream's nominal rate is the input's.

    Args:
        path: the .mp4 to write.
        size: (width, height), even numbers.
        fps: the nominal frame rate.
    """

    TIME_BASE = Fraction(1, 90000)  # MPEG's clock: fine enough for any frame rate's timestamps

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: float):
        import av

        self.path = Path(path)
        self.container = av.open(str(self.path), "w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(30)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = self.stream.codec_context.time_base = self.TIME_BASE
        if codec == "libx264":
            # veryfast: about a third of "medium"'s encoding time for a slightly larger file.
            self.stream.options = {"preset": "veryfast", "crf": "23"}
        self._last_pts = -1
        self.frames = 0

    def write(self, rgb: np.ndarray, time: float) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        pts = max(int(round(time / self.TIME_BASE)), self._last_pts + 1)
        frame.pts, frame.time_base = pts, self.TIME_BASE
        self._last_pts = pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
