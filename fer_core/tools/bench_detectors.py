"""The face-detector comparison: every detector of ``fer_core.apps.faces.DETECTORS`` on the same footage.

    python -m fer_core.tools.bench_detectors VIDEO [--no-face IMAGE_OR_VIDEO] [--sizes native,640x360]
        [--frames 90]

For each detector and frame size it prints the share of the video's frames in which at least one face is
found, the mean number of faces per frame, the boxes reported on the no-face input (total and per frame:
each one is a false detection) and the median milliseconds per frame, with the CPU it ran on. Frames are
decoded with PyAV and resized with OpenCV (INTER_AREA) before timing: only the detector is timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..apps.faces import DETECTORS, make_detector
from ..errors import FerError
from ..runtime import device_name


def read_frames(path: str | Path, limit: int | None = None) -> list[np.ndarray]:
    """RGB frames of a video (``fer_core.apps.video``), at their own size, or the one image of a picture file.

    Raises:
        FerError: the file is missing or cannot be decoded (one line).
    """
    from ..apps.predict_inputs import load_image
    from ..apps.video import VideoReader, is_video

    if not is_video(path):
        return [np.asarray(load_image(path)[0])]
    with VideoReader(path, max_side=1 << 16) as reader:
        return [rgb for _, (_, _, rgb) in zip(range(limit or 1 << 62), reader)]


def resize_all(frames: list[np.ndarray], size: str) -> list[np.ndarray]:
    """``size``: 'native' or WxH."""
    if size == "native":
        return frames
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise FerError(f"--sizes: {size!r} is neither 'native' nor WxH (e.g. 640x360)") from None
    return [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]


def measure(detectors: dict, frames: list[np.ndarray], no_face: list[np.ndarray]) -> dict[str, dict]:
    """Per detector: detection counts on ``frames``, false boxes on ``no_face``, median ms per frame.

    The detectors take turns frame by frame, so a change in the machine's other load slows them alike.
    """
    for det in detectors.values():
        det(frames[0])  # warm-up: first calls allocate
    counts = {name: [] for name in detectors}
    times = {name: [] for name in detectors}
    for f in frames:
        for name, det in detectors.items():
            t0 = time.perf_counter()
            counts[name].append(len(det(f)))
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, det in detectors.items():
        found, false = np.array(counts[name]), [len(det(f)) for f in no_face]
        out[name] = {
            "found_share": float((found > 0).mean()),
            "faces_per_frame": float(found.mean()),
            "false_boxes": int(sum(false)) if no_face else None,
            "false_per_frame": float(np.mean(false)) if no_face else None,
            "ms_median": 1000 * float(np.median(times[name])),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fer_core.tools.bench_detectors",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("video", help="footage with faces")
    p.add_argument("--no-face", help="an image or video with no face: every box on it is a false one")
    p.add_argument("--sizes", default="native,640x360", help="frame sizes, 'native' or WxH, comma-separated")
    p.add_argument("--frames", type=int, default=0, help="use at most this many frames (0: all)")
    p.add_argument("--detectors", default=",".join(DETECTORS), help="detector names, comma-separated")
    args = p.parse_args(argv)
    try:
        video = read_frames(args.video, args.frames or None)
        no_face = read_frames(args.no_face, args.frames or None) if args.no_face else []
        detectors = {name: make_detector(name) for name in args.detectors.split(",")}
        h, w = video[0].shape[:2]
        print(
            f"{args.video}: {len(video)} frames of {w}x{h}; no-face input: "
            f"{f'{args.no_face} ({len(no_face)} frame(s))' if no_face else 'none'}"
        )
        print(
            f"CPU: {device_name(torch.device('cpu'))} (load average "
            f"{os.getloadavg()[0]:.1f} at the start: other processes slow the timings)"
        )
        print(
            f"{'size':>9} {'detector':>8} {'frames with a face':>18} {'faces/frame':>11} "
            f"{'false boxes':>11} {'false/frame':>11} {'ms/frame':>8}"
        )
        for size in args.sizes.split(","):
            frames = resize_all(video, size)
            shown = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
            for name, r in measure(detectors, frames, no_face).items():
                false = "-" if r["false_boxes"] is None else str(r["false_boxes"])
                per = "-" if r["false_per_frame"] is None else f"{r['false_per_frame']:.2f}"
                print(
                    f"{shown:>9} {name:>8} {r['found_share']:>17.0%} {r['faces_per_frame']:>11.2f} "
                    f"{false:>11} {per:>11} {r['ms_median']:>8.1f}"
                )
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
