"""The predict command line: checkpoint (or exported model) and inputs in, tables, PNGs and video results out.

Run as ``python sweeps/predict.py`` (or ``fer-predict``); ``USAGE`` is its help text. Photos go through
``fer_core.apps.predict`` (expanding the inputs: ``predict_inputs``, the PNGs: ``predict_plots``), videos and
the webcam through ``fer_core.apps.video_predict``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ..errors import FerError
from ..outputs import check_output_folder
from .video_predict import DETECT_EVERY, SMOOTH_SECONDS

USAGE = """Predict expressions with a sweep's retrained winner (or any fer_core checkpoint or exported model).

    python sweeps/predict.py runs/demo photo.jpg                    # a sweep run folder: its report/best.pt
    python sweeps/predict.py runs/demo/report/best.pt photos/ --out preds
    python sweeps/predict.py best.pt "shots/**/*.png" --no-face-detect --json
    python sweeps/predict.py best.pt crops/ --no-face-detect --no-plots   # many crops: the table only
    python sweeps/predict.py model.onnx interview.mp4 --out preds   # an exported model runs on ONNX Runtime
    python sweeps/predict.py runs/demo --webcam                     # camera 0, live, until q or Ctrl-C

INPUT is an image or video file, a folder (searched recursively) or a glob pattern (quote it). Faces are
found in each image (--detector: haar, OpenCV's Haar cascade, the default; dlib, dlib's HOG detector,
fewer false boxes), cropped with a margin and classified; an image with no face found is classified
whole, and the output says so. Use --no-face-detect when the inputs are face crops already.

Videos (mp4, avi, mov, mkv, webm, ...) are streamed frame by frame with a progress bar. Faces are linked
into tracks that keep their id (ByteTrack), every face of a batch of frames is classified in one call,
and each track's probabilities are averaged over --smooth seconds. Each video gets a folder OUT/NAME/ with
annotated.mp4 (same frames and rate, each face's box, track, label and probability bar), frames.csv and
frames.jsonl (one row per face per frame: time, box, all probabilities, the smoothed ones, the label),
timeline_trackN.png per track and summary.json (each track's time on screen and share of time per
expression, the real-time factor and where the time went). --webcam [INDEX] does the same live from a
camera (or a device path or stream URL), into OUT/webcam/, showing a window where there is a display.

The classes are the model's own (its class_names, in that order), whatever it was trained on.
Photos' output: a table on stdout (or JSON with --json), OUT/predictions.csv (one row per face, one
probability column per class), one PNG per image (the image with its face boxes beside the probability
bars; --explain adds each face's map of where the model found its top class) and, for several images,
OUT/contact_sheet.png; --no-plots skips the PNGs and the contact sheet. With --min-confidence P, a face
whose top (smoothed, in videos) probability is under P is labelled "uncertain" instead of a class (its
probabilities are still written). Inputs that cannot be read are listed at the end; the rest are predicted.
Exit status: 0 all inputs predicted, 1 some failed, 2 usage error (bad checkpoint, nothing to predict).
"""


def resolve_checkpoint(target: str) -> Path:
    """A sweep run folder (STORAGE/NAME), its report folder, a fer_core.train output folder or a checkpoint file -> the checkpoint.

    Raises:
        FerError: nothing usable at ``target``.
    """
    p = Path(target).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for candidate in (p / "report" / "best.pt", p / "best.pt", p / "checkpoints" / "best.pt"):
            if candidate.is_file():
                return candidate
        raise FerError(
            f"{p}: no report/best.pt, best.pt or checkpoints/best.pt inside; pass a sweep run folder "
            "(STORAGE/NAME after its retrain), its report folder, or a checkpoint file"
        )
    raise FerError(
        f"{p}: no such checkpoint or run folder; pass a sweep run folder (STORAGE/NAME) or a best.pt"
    )


# predictions.csv's columns besides the one per class.
CSV_FIXED = ("path", "face", "x", "y", "w", "h", "expression", "probability", "note")
# The files every run writes at the top of OUT: no per-image PNG may take (or sit under) these names.
SUMMARY_FILES = ("predictions.csv", "contact_sheet.png")


def _png_name(rel: str, used: set[str]) -> str:
    """OUT-relative PNG path for an input: its relative path with .png, made unique (a.jpg and a.png, or an
    input named contact_sheet.jpg, whose PNG would otherwise be overwritten by the contact sheet).

    Args:
        rel: the input's name relative to the input it came from.
        used: names already taken; start with ``SUMMARY_FILES``. The returned name is added.
    """
    r = Path(rel)
    if len(r.parts) > 1 and r.parts[0] in SUMMARY_FILES:  # a folder named like a summary file
        r = Path(r.parts[0] + "_", *r.parts[1:])
    name = str(r.with_suffix(".png"))
    if name in used:
        name = str(r.with_name(f"{r.stem}_{r.suffix.lstrip('.') or 'file'}.png"))
    base, k = name[:-4], 2
    while name in used:
        name, k = f"{base}-{k}.png", k + 1
    used.add(name)
    return name


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _box(box) -> str:
    return ",".join(map(str, box)) if box else "whole image"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python sweeps/predict.py",
        description=USAGE.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(USAGE.split("\n\n")[1:]),
    )
    p.add_argument(
        "run",
        metavar="RUN_OR_CHECKPOINT",
        help="sweep run folder (STORAGE/NAME: uses report/best.pt), a report folder, a checkpoint file, "
        "or an exported model.onnx",
    )
    p.add_argument(
        "inputs", metavar="INPUT", nargs="*", help="image or video file, folder (recursive) or glob pattern"
    )
    p.add_argument(
        "--out",
        default="predictions",
        help="output folder for PNGs, predictions.csv, the contact sheet and one folder per video "
        "(default: ./predictions)",
    )
    p.add_argument(
        "--webcam",
        nargs="?",
        const="0",
        metavar="INDEX",
        help="predict live from camera INDEX (default 0; or a device path or stream URL) into OUT/webcam/",
    )
    p.add_argument(
        "--no-face-detect", action="store_true", help="inputs are face crops: classify each whole image"
    )
    p.add_argument("--detector", default="haar", help="face detector: haar (default) or dlib")
    p.add_argument(
        "--detect-every",
        type=int,
        default=DETECT_EVERY,
        metavar="K",
        help=f"videos: run the face detector on every K-th frame, the tracker carries the boxes between "
        f"(default {DETECT_EVERY})",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=SMOOTH_SECONDS,
        metavar="SECONDS",
        help=f"videos: time constant of each track's probability average (default {SMOOTH_SECONDS}; 0: off)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="--webcam: stop after S seconds (default: run until q or Ctrl-C)",
    )
    p.add_argument(
        "--no-window", action="store_true", help="--webcam: record to OUT/webcam/ without showing a window"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout instead of the table"
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="draw over each face in its PNG where the model found its top expression (Grad-CAM)",
    )
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="photos: write the table (or JSON) and predictions.csv only: no PNGs, no contact sheet",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=64, help="faces per forward pass (default 64)")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        metavar="P",
        help="label a face 'uncertain' when its top probability is under P, in [0, 1) (default 0: never)",
    )
    return p


def _check_args(args, out: Path) -> None:
    """Every argument's rule, before anything is loaded or written.

    Raises:
        FerError: one line naming the flag and the fix.
    """
    if args.batch_size < 1:
        raise FerError(
            f"--batch-size = {args.batch_size}; give the number of faces per forward pass, at least 1"
        )
    if args.explain and args.no_plots:
        raise FerError("--explain draws its maps in the PNGs, which --no-plots leaves out: drop one of them")
    if not 0.0 <= args.min_confidence < 1.0:
        raise FerError(f"--min-confidence = {args.min_confidence}; give a probability in [0, 1), e.g. 0.5")
    if args.detect_every < 1:
        raise FerError(f"--detect-every = {args.detect_every}; give 1 (every frame) or more")
    if args.smooth < 0:
        raise FerError(f"--smooth = {args.smooth}; give seconds, 0 or more (0: no smoothing)")
    if args.webcam is not None and args.inputs:
        raise FerError("--webcam reads a camera, not INPUT files: give one or the other")
    if args.webcam is None and not args.inputs:
        raise FerError("nothing to predict: give INPUT files, folders or patterns, or --webcam")
    if args.webcam is None and (args.max_seconds is not None or args.no_window):
        raise FerError("--max-seconds and --no-window are for --webcam")
    existing = [Path(raw) for raw in args.inputs if Path(raw).exists()]
    check_output_folder(
        out, holds="the PNGs, predictions.csv, the contact sheet and the video folders", inputs=existing
    )
    for folder in (p for p in existing if p.is_dir()):
        if out.resolve().is_relative_to(folder.resolve()):
            raise FerError(
                f"--out {out}: is inside the input folder {folder}, so a later run would read its own results "
                "as inputs; give a --out outside it"
            )


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    # Imported after parsing: the prediction stack (timm, OpenCV, the model code) doubles the start-up time of --help.
    from .predict import load_predictor
    from .predict_inputs import collect_inputs
    from .video import is_video

    out = Path(args.out)
    try:
        _check_args(args, out)
        checkpoint = resolve_checkpoint(args.run)
        predictor = load_predictor(
            checkpoint, device=args.device, batch_size=args.batch_size, detector=args.detector
        )
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    video_options = dict(
        detect_every=args.detect_every, smooth_seconds=args.smooth, min_confidence=args.min_confidence
    )
    if args.webcam is not None:
        from .camera import run_camera

        source = int(args.webcam) if args.webcam.isdigit() else args.webcam
        try:
            result = run_camera(
                source,
                predictor,
                out / "webcam",
                show=False if args.no_window else None,
                max_seconds=args.max_seconds,
                **video_options,
            )
        except FerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.json:
            record = {"checkpoint": str(checkpoint), "class_names": predictor.class_names}
            json.dump({**record, "webcam": _video_record(args.webcam, result)}, sys.stdout, indent=1)
            print()
        else:
            print(_video_line("webcam", result))
        return 0
    files, problems = collect_inputs(args.inputs, exclude=[out])
    if not files:
        reasons = "; ".join(f"{raw}: {why}" for raw, why in problems) or "no input given"
        print(f"error: nothing to predict ({reasons})", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(
            f"error: {out}: cannot create the output folder ({e.strerror or e}); pass another --out",
            file=sys.stderr,
        )
        return 2
    photos = [(f, rel) for f, rel in files if not is_video(f)]
    videos = [(f, rel) for f, rel in files if is_video(f)]
    failed = list(problems)
    report: dict = {"checkpoint": str(checkpoint), "class_names": predictor.class_names}
    if photos:
        report.update(_predict_photos(args, predictor, checkpoint, photos, out, failed))
    if videos:
        report["videos"] = _predict_videos(args, predictor, videos, out, failed, video_options)
    total = len(files) + len(problems)
    if args.json:
        report["failed"] = [{"input": raw, "error": why} for raw, why in failed]
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print(f"{total - len(failed)} of {total} input(s) predicted; results in {out}")
    if failed:
        print(f"{len(failed)} of {total} input(s) failed:", file=sys.stderr)
        for raw, why in failed:
            # Reasons from the loaders already start with the path; problems from collect_inputs do not.
            print(f"  {why}" if why.startswith(str(raw)) else f"  {raw}: {why}", file=sys.stderr)
        return 1
    return 0


def _video_line(name: str, result) -> str:
    """One line for a processed video: length, tracks, the dominant track's time and expressions, speed."""
    s = result.summary
    head = f"{name}: {s['frames']} frames, {s['duration_seconds']:.1f} s, {len(s['tracks'])} track(s)"
    if s["tracks"]:
        t = s["tracks"][0]
        shares = ", ".join(
            f"{c} {v:.0%}" for c, v in sorted(t["expression_share"].items(), key=lambda kv: -kv[1])[:3]
        )
        head += f"; #{t['track']} on screen {t['seconds_on_screen']:.1f} s: {shares}"
    else:
        head += "; no face found"
    rtf = s["real_time_factor"]
    return head + (f"; {rtf:.2f}x real time" if rtf else "") + f"; results in {result.folder}"


def _video_folder(rel: str, used: set[str]) -> str:
    """OUT-relative folder for a video's results: its relative path without the suffix, made unique."""
    base = str(Path(rel).with_suffix(""))
    name, k = base, 2
    while name in used:
        name, k = f"{base}-{k}", k + 1
    used.add(name)
    return name


def _predict_videos(args, predictor, videos, out: Path, failed: list, options: dict) -> list[dict]:
    """Each video through ``process_video`` into OUT/NAME/; a video that fails is added to ``failed``."""
    from .video_predict import process_video

    done, used = [], set(SUMMARY_FILES)
    for path, rel in videos:
        folder = out / _video_folder(rel, used)
        try:
            result = process_video(path, predictor, folder, progress=not args.json, **options)
        except FerError as e:
            failed.append((str(path), str(e)))
            continue
        if not args.json:
            print(_video_line(rel, result), flush=True)
            for note in result.summary["notes"]:
                print(f"  note: {note}")
        done.append(_video_record(path, result))
    return done


def _video_record(source, result) -> dict:
    """A processed video (or camera session) in the --json document: its source, files and summary."""
    return {
        "path": str(source),
        "folder": str(result.folder),
        "video": str(result.video),
        "csv": str(result.csv),
        "jsonl": str(result.jsonl),
        "timelines": [str(p) for p in result.timelines],
        "summary": result.summary,
    }


def _predict_photos(args, predictor, checkpoint, files, out: Path, failed: list) -> dict:
    """The photos: the table (unless --json), predictions.csv, PNGs and the contact sheet; their records."""
    from .predict import UNCERTAIN
    from .predict_plots import plot_contact_sheet, plot_prediction

    classes = predictor.class_names
    # The table's columns fit the checkpoint's own class names, whatever their length.
    label_w = max(len("expression"), len(UNCERTAIN), *map(len, classes))
    col_w = [max(8, len(c)) for c in classes]
    # One CSV column per class, named after it; "p(name)" for a class named like a fixed column.
    columns = [f"p({c})" if c in CSV_FIXED else c for c in classes]
    if not args.json:
        print(
            f"{checkpoint}: {predictor.preprocess.img_size}px {'gray' if predictor.preprocess.grayscale else 'RGB'}, "
            f"{len(files)} file(s), face detection {'off' if args.no_face_detect else 'on'}"
        )
        print(
            f"{'image':<36} {'face':>4} {'box x,y,w,h':<19} {'expression':<{label_w}} {'prob':>5}  "
            + " ".join(f"{c:>{w}}" for c, w in zip(classes, col_w))
        )
    results, records, used = [], [], set(SUMMARY_FILES)
    rows = []
    for (_path, rel), r in zip(
        files,
        predictor.predict_files(
            [f for f, _ in files],
            detect=not args.no_face_detect,
            min_confidence=args.min_confidence,
            explain=args.explain,
        ),
    ):
        png = None
        if r.ok and not args.no_plots:
            png = out / _png_name(rel, used)
            plot_prediction(r, png, classes)
            r.image = None  # the PNG is written; keep only the thumbnail for the contact sheet
        rec = r.to_dict(classes)
        rec["png"] = str(png) if png else None
        records.append(rec)
        results.append(r)
        for i, f in enumerate(r.faces or [None], 1):
            row = {
                "path": r.path,
                "face": i if f is not None else "",
                "x": "",
                "y": "",
                "w": "",
                "h": "",
                "expression": "",
                "probability": "",
                **{column: "" for column in columns},
                "note": r.note,
            }
            if f is not None:
                if f.box:
                    row.update(zip("xywh", f.box))
                row.update(
                    expression=f.label(classes),
                    probability=f"{f.score:.4f}",
                    **{column: f"{v:.4f}" for column, v in zip(columns, f.probs)},
                )
            rows.append(row)
            if not args.json and f is not None:
                note = "" if f.box else f"  ({r.note})"
                print(
                    f"{_short(rel, 36):<36} {i if f.box else '-':>4} {_box(f.box):<19} {f.label(classes):<{label_w}} {f.score:>5.2f}  "
                    + " ".join(f"{v:>{w}.3f}" for v, w in zip(f.probs, col_w))
                    + note,
                    flush=True,
                )
            elif not args.json:
                print(f"{_short(rel, 36):<36}    - failed (see the summary below)", flush=True)
    with open(out / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sheet = (
        plot_contact_sheet(results, out / "contact_sheet.png", classes)
        if len(results) > 1 and not args.no_plots
        else None
    )

    failed.extend((r.path, r.error) for r in results if not r.ok)
    if not args.json:
        n_faces = sum(len(r.faces) for r in results if r.ok and r.face_found)
        written = "predictions.csv" if args.no_plots else "PNGs, predictions.csv"
        print(
            f"{sum(r.ok for r in results)} of {len(results)} photo(s) predicted, {n_faces} face(s) found; "
            f"{written}{' and contact_sheet.png' if sheet else ''} in {out}"
        )
    return {
        "images": records,
        "csv": str(out / "predictions.csv"),
        "contact_sheet": str(sheet) if sheet else None,
    }
