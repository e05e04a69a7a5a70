"""Video prediction's speed: the real-time factor and where the time goes, for detection every k-th frame.

    python -m fer_core.tools.bench_video CHECKPOINT_OR_ONNX [VIDEO] [--every 1 2 3] [--repeat 2] [--long N]

Without VIDEO it makes the issue's reference footage from the test clip (tests/data/video_01.mp4, CC BY
2.0): a 640×360, 29.97 fps video of one face, cut around the woman in front and scaled up. Each setting
runs ``process_video`` ``--repeat`` times, in turn, in this process; the figures are medians. Printed per
setting: the real-time factor (video duration / processing time), the seconds per stage (decode, detect,
track, classify, draw, encode, other) per frame, and the recall against detection on every frame: the share
of the frames where k=1 finds a face in which this setting also has one, and the share of those whose
label agrees with k=1's. ``--long N`` then processes the reference footage played N/4 and N times over
(3 s each) and prints the process's peak memory before and after each: flat when frames are streamed.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

TEST_CLIP = Path(__file__).resolve().parents[2] / "tests" / "data" / "video_01.mp4"
# The woman's face region of the test clip (x0, y0, x1, y1 in its 640×480 pixels), 16:9.
ONE_FACE_CROP = (0, 100, 224, 226)


def make_one_face_clip(path: Path, source: Path = TEST_CLIP, size=(640, 360), times: int = 1) -> Path:
    """The reference footage: ``source`` cut to ``ONE_FACE_CROP`` and scaled to ``size``, H.264, same timing;
    played ``times`` times over."""
    from PIL import Image

    from ..apps.video import VideoReader, VideoWriter

    x0, y0, x1, y1 = ONE_FACE_CROP
    with VideoReader(source) as reader:
        fps = reader.info.fps
        frames = [
            (t, np.asarray(Image.fromarray(rgb[y0:y1, x0:x1]).resize(size, Image.BICUBIC)))
            for _, t, rgb in reader
        ]
    period = frames[-1][0] + 1 / fps
    with VideoWriter(path, size, fps) as writer:
        for k in range(times):
            for t, rgb in frames:
                writer.write(rgb, k * period + t)
    return path


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _labels(csv_path: Path) -> dict[int, str]:
    """frame -> label of its largest face ('' for a frame without a face)."""
    out: dict[int, tuple[int, str]] = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            frame = int(row["frame"])
            area = int(row["w"]) * int(row["h"]) if row["w"] else -1
            if area > out.get(frame, (-2, ""))[0]:
                out[frame] = (area, row["label"])
    return {k: v[1] for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fer_core.tools.bench_video", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("model", help="a checkpoint (.pt) or an exported model (.onnx)")
    p.add_argument(
        "video", nargs="?", help="the footage (default: the one-face clip made from the test clip)"
    )
    p.add_argument("--every", type=int, nargs="+", default=[1, 2, 3], help="detect every k-th frame")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--detector", default="haar")
    p.add_argument(
        "--long", type=int, default=0, metavar="N", help="also run the footage played N times over"
    )
    args = p.parse_args(argv)

    import torch

    from ..apps.predict import load_predictor
    from ..apps.video_predict import process_video
    from ..runtime import device_name

    predictor = load_predictor(args.model, device="cpu", detector=args.detector)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else make_one_face_clip(Path(tmp) / "one_face_640x360.mp4")
        runs: dict[int, list[dict]] = {k: [] for k in args.every}
        labels: dict[int, dict[int, str]] = {}
        for r in range(args.repeat):
            for k in args.every:
                res = process_video(video, predictor, Path(tmp) / f"k{k}-{r}", detect_every=k, progress=False)
                runs[k].append(res.summary)
                labels[k] = _labels(res.csv)
        first = runs[args.every[0]][0]
        print(
            f"{video.name}: {first['frames']} frames, {first['duration_seconds']:.2f} s at {first['fps']:.2f} fps; "
            f"model {Path(args.model).name} ({type(predictor).__name__}), detector {args.detector}, "
            f"torch threads {torch.get_num_threads()}; {device_name(torch.device('cpu'))}"
        )
        stages = list(first["processing_seconds"])
        print(
            f"{'every':>5} {'RTF':>6} "
            + " ".join(f"{s:>8}" for s in stages)
            + "  (ms per frame)  recall  agree"
        )
        base = labels.get(1)
        for k in args.every:
            rtf = statistics.median(s["real_time_factor"] for s in runs[k])
            ms = [
                1000 * statistics.median(s["processing_seconds"][st] for s in runs[k]) / first["frames"]
                for st in stages
            ]
            recall = agree = float("nan")
            if base:
                with_face = [f for f, lab in base.items() if lab]
                found = [f for f in with_face if labels[k].get(f)]
                recall = len(found) / max(1, len(with_face))
                agree = sum(labels[k][f] == base[f] for f in found) / max(1, len(found))
            print(
                f"{k:>5} {rtf:>6.2f} "
                + " ".join(f"{v:>8.1f}" for v in ms)
                + f"  {recall:>14.3f} {agree:>6.3f}"
            )
        for times in (max(1, args.long // 4), args.long) if args.long else ():
            before = peak_rss_mb()
            long = make_one_face_clip(Path(tmp) / f"long{times}.mp4", times=times)
            res = process_video(long, predictor, Path(tmp) / f"long{times}", progress=False).summary
            print(
                f"long x{times}: {res['frames']} frames ({res['duration_seconds']:.0f} s), "
                f"{res['real_time_factor']:.2f}x real time; peak memory {before:.0f} MB before, "
                f"{peak_rss_mb():.0f} MB after"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
