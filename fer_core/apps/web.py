"""The web app: a local Gradio page to try a checkpoint on photos, a video and the browser's webcam.

``fer-app RUN_OR_CHECKPOINT`` (or ``python -m fer_core.apps.web``) loads the checkpoint (or an exported .onnx,
then without saliency maps) once with ``predict.load_predictor`` and serves three
tabs on 127.0.0.1 (a public share link only with ``--share``):

- Photo: one or several photos -> each drawn with its face boxes beside its probability bars (optionally
  with the saliency maps), one label per face and a table of every face's probabilities.
- Video: one video -> ``video_predict.process_video``'s annotated video, timelines, summary and tables.
- Webcam: the browser's camera streamed to the server; one ``FaceStream`` per browser session keeps the
  tracks, and each frame comes back annotated with the current labels.

The page is built from Gradio's own components and events only. Everything the model needs (classes,
temperature, preprocessing, detector) comes from the ``Predictor``; this module adds only the page.
"""

from __future__ import annotations

import argparse
import atexit
import html
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import FerError

USAGE = """Try a checkpoint in the browser: photos, a video or the webcam, on a local page.

    fer-app runs/demo                      # a sweep run folder: its report/best.pt
    fer-app best.pt --port 8000
    fer-app model.onnx --detector dlib     # an exported model (no saliency maps)
    python -m fer_core.apps.web best.pt --device cpu

The page is served on 127.0.0.1 only (--host to change it, --share for a temporary public Gradio link);
open the URL it prints. The classes, temperature and preprocessing are the checkpoint's own.
"""

# Faces given their own label on the Photo tab; every face is in the table.
MAX_FACE_LABELS = 12
# Seconds between two webcam frames sent to the server: about what one frame costs on 2 CPU cores.
WEBCAM_EVERY = 0.2
# Seconds the files the app serves are kept (its own and Gradio's copies).
KEEP_SECONDS = 3600
# What the Video tab offers for download, besides the annotated video.
VIDEO_DOWNLOADS = ("frames.csv", "frames.jsonl", "summary.json")


def _shown(message: str, upload: str | None = None) -> str:
    """A message for the page: an upload's temporary path replaced by its file name, HTML escaped (Gradio
    renders its alerts as HTML, and file names are the user's)."""
    if upload:
        message = message.replace(str(upload), Path(upload).name)
    return html.escape(message)


def _error(message: str, upload: str | None = None):
    """The ``gr.Error`` to raise for a bad upload: one line on the page, no traceback in the server's log."""
    import gradio as gr

    return gr.Error(_shown(message, upload), print_exception=False)


@dataclass
class WebcamSession:
    """One browser tab's webcam: its ``FaceStream`` (the tracks) and when its first frame came."""

    stream: object
    start: float


class App:
    """The handlers behind the page, bound to one predictor and a scratch folder for the files it serves."""

    def __init__(self, predictor, checkpoint: str, work: Path):
        self.predictor, self.checkpoint, self.work = predictor, checkpoint, work

    # -- photo -----------------------------------------------------------------------------------------------

    def photos(self, files, min_confidence: float, saliency: bool):
        """Uploaded photos -> (gallery items, per-face labels, table rows)."""
        import gradio as gr
        from PIL import Image

        from .predict_plots import plot_prediction

        if not files:
            raise _error("Upload one or more photos first (JPEG, PNG, WebP, ...).")
        paths = [str(f) for f in files]
        classes = self.predictor.class_names
        gallery, faces, rows, failed = [], [], [], []
        folder = Path(tempfile.mkdtemp(dir=self.work, prefix="photos-"))
        try:
            results = self.predictor.predict_files(paths, min_confidence=min_confidence, explain=saliency)
            for i, r in enumerate(results):
                name = Path(r.path).name
                if not r.ok:
                    failed.append((r.error, r.path))
                    continue
                png = plot_prediction(r, folder / f"{i}.png", classes)
                with Image.open(png) as im:
                    gallery.append((im.copy(), f"{name}: {r.note}"))
                for k, f in enumerate(r.faces, 1):
                    who = f"face {k}" if f.box is not None else "whole image"
                    if len(faces) < MAX_FACE_LABELS:
                        faces.append(
                            {
                                "title": f"{name}, {who}: {classes[f.index]} {f.score:.2f}",
                                "value": _label_value(f.label(classes), f.probs, classes),
                            }
                        )
                    rows.append(
                        [name, who, ",".join(map(str, f.box)) if f.box else "", f.label(classes)]
                        + [round(float(p), 4) for p in f.probs]
                    )
        except FerError as e:  # saliency asked of an ONNX model through the API
            raise _error(str(e)) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if not gallery:
            more = f" (and {len(failed) - 1} more unreadable file(s))" if len(failed) > 1 else ""
            raise _error(failed[0][0] + more, failed[0][1])
        for message, upload in failed:
            gr.Warning(_shown(message, upload))
        return gallery, faces, rows

    # -- video -----------------------------------------------------------------------------------------------

    def video(self, path, min_confidence: float, progress=None):
        """An uploaded video -> (annotated video, timelines, a line on the run, summary rows, downloads)."""
        from .video_predict import process_video

        if not path:
            raise _error("Upload a video first (mp4, avi, mov, mkv or webm).")
        self._drop_old_videos()
        out = Path(tempfile.mkdtemp(dir=self.work, prefix="video-")) / Path(path).stem
        try:
            result = process_video(
                path,
                self.predictor,
                out,
                min_confidence=min_confidence,
                progress=False,
                on_frame=(lambda done, total: progress((done, total or None), unit="frames"))
                if progress
                else None,
            )
        except FerError as e:
            shutil.rmtree(out.parent, ignore_errors=True)
            raise _error(str(e), path) from None
        summary = result.summary
        rtf = f", {summary['real_time_factor']:.2f}x real time" if summary.get("real_time_factor") else ""
        line = (
            f"{summary['frames']} frames, {summary['duration_seconds']:.1f} s, "
            f"face on {summary['face_share']:.0%} of frames{rtf}"
        ) + "".join(f"\n- {html.escape(n)}" for n in summary["notes"])
        downloads = [str(result.folder / name) for name in VIDEO_DOWNLOADS]
        return str(result.video), [str(t) for t in result.timelines], line, _summary_rows(summary), downloads

    def _drop_old_videos(self) -> None:
        """Remove the result folders of videos processed over ``KEEP_SECONDS`` ago: Gradio has served its own
        copies of them by then (and drops those on the same schedule), so a long-running app's disk stays
        bounded."""
        limit = time.time() - KEEP_SECONDS
        for folder in self.work.glob("video-*"):
            if folder.stat().st_mtime < limit:
                shutil.rmtree(folder, ignore_errors=True)

    # -- webcam ----------------------------------------------------------------------------------------------

    def webcam(self, frame, session: WebcamSession | None, min_confidence: float):
        """One webcam frame -> (annotated frame, the current labels as text, the first face's probabilities,
        the session)."""
        from .stream import FaceStream, draw_faces

        if frame is None:
            return None, "", {}, session
        if session is None:
            session = WebcamSession(FaceStream(self.predictor, fps=1 / WEBCAM_EVERY), time.monotonic())
        session.stream.min_confidence = min_confidence  # the slider acts at once, the tracks kept
        faces = session.stream.process([frame], [time.monotonic() - session.start])[0]
        classes = self.predictor.class_names
        text = "; ".join(f"face {f.track}: {f.label} ({f.score:.2f})" for f in faces)
        first = _label_value(faces[0].label, faces[0].smoothed, classes) if faces else {}
        return draw_faces(frame, faces, classes), text or "no face found", first, session


def _label_value(label: str, probs, classes) -> dict[str, float] | str:
    """What a ``gr.Label`` shows for one face: its probabilities (the top class is the heading), or just
    ``uncertain`` for a face under the minimum confidence (a ``gr.Label`` heads its bars with their top)."""
    from .predict import UNCERTAIN

    if label == UNCERTAIN:
        return UNCERTAIN
    return {c: float(p) for c, p in zip(classes, probs)}


def _summary_rows(summary: dict) -> list[list]:
    """``process_video``'s summary -> one row per track: id, seconds on screen, dominant expression, the
    share of time per class (and uncertain)."""
    from .predict import UNCERTAIN

    classes = [*summary["class_names"], UNCERTAIN]
    return [
        [t["track"], t["seconds_on_screen"], t["dominant_expression"]]
        + [round(t["expression_share"].get(c, 0.0), 3) for c in classes]
        for t in summary["tracks"]
    ]


def build(app: App):
    """The page (a ``gr.Blocks``) for ``app``'s predictor."""
    import gradio as gr

    from .predict import UNCERTAIN, OnnxPredictor

    p = app.predictor
    classes = p.class_names
    pre = p.preprocess
    explains = not isinstance(p, OnnxPredictor)  # saliency needs the network's layers
    about = (
        f"**{html.escape(app.checkpoint)}** · classes: {', '.join(map(html.escape, classes))} · "
        f"{pre.img_size}px {'gray' if pre.grayscale else 'RGB'} · temperature {p.temperature:.2f} · "
        f"face detector {p.detector_name}"
    )

    def confidence(tab: str):
        return gr.Slider(
            0.0,
            0.95,
            value=0.0,
            step=0.05,
            label="Minimum confidence",
            info="a face whose top probability is under this is labelled 'uncertain'",
            elem_id=f"{tab}-confidence",
        )

    with gr.Blocks(
        title="Facial expressions", analytics_enabled=False, delete_cache=(KEEP_SECONDS, KEEP_SECONDS)
    ) as page:
        gr.Markdown(f"## Facial expressions\n{about}")
        with gr.Tab("Photo", id="photo"):
            with gr.Row():
                with gr.Column(scale=1):
                    photos = gr.File(
                        label="Photos", file_count="multiple", file_types=["image"], type="filepath"
                    )
                    photo_conf = confidence("photo")
                    saliency = gr.Checkbox(
                        label="Show where the model looks (saliency map of the top class)",
                        value=False,
                        interactive=explains,
                        info=None if explains else "needs the checkpoint (.pt), not an ONNX model",
                    )
                    photo_go = gr.Button("Predict", variant="primary")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(
                        label="Result", columns=1, height=640, object_fit="contain", elem_id="photo-result"
                    )
            faces = gr.State([])

            @gr.render(inputs=faces)
            def face_labels(items):
                with gr.Row(equal_height=False):
                    for item in items:
                        gr.Label(
                            item["value"],
                            label=item["title"],
                            num_top_classes=3,
                            min_width=220,
                            elem_classes="face-label",
                        )

            table = gr.Dataframe(
                headers=["photo", "face", "box x,y,w,h", "expression", *classes],
                label="Every face",
                interactive=False,
            )
            photo_go.click(app.photos, [photos, photo_conf, saliency], [gallery, faces, table])

        with gr.Tab("Video", id="video"):
            with gr.Row():
                with gr.Column(scale=1):
                    video_in = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
                    video_conf = confidence("video")
                    video_go = gr.Button("Process", variant="primary")
                with gr.Column(scale=2):
                    video_out = gr.Video(label="Annotated video", interactive=False, elem_id="video-result")
                    video_line = gr.Markdown(elem_id="video-line")
            timelines = gr.Gallery(
                label="Timelines (smoothed probabilities per track)",
                columns=2,
                height=360,
                object_fit="contain",
            )
            summary = gr.Dataframe(
                headers=["track", "seconds on screen", "mostly", *classes, UNCERTAIN],
                label="Summary: share of time per expression",
                interactive=False,
                elem_id="video-summary",
            )
            downloads = gr.File(
                label="Per-frame tables and summary", file_count="multiple", interactive=False
            )

            def video(path, conf, progress=gr.Progress()):  # noqa: B008  (Gradio's idiom: the bar, injected)
                return app.video(path, conf, progress)

            video_go.click(
                video, [video_in, video_conf], [video_out, timelines, video_line, summary, downloads]
            )

        with gr.Tab("Webcam", id="webcam"):
            with gr.Row():
                with gr.Column():
                    camera = gr.Image(
                        label="Camera",
                        sources=["webcam"],
                        streaming=True,
                        type="numpy",
                        # Unmirrored, as the frames the app receives and annotates are: both views agree.
                        webcam_options=gr.WebcamOptions(mirror=False),
                    )
                    cam_conf = confidence("webcam")
                with gr.Column():
                    live = gr.Image(label="Live", interactive=False)
                    current = gr.Textbox(label="Current label", interactive=False, elem_id="current-label")
                    live_probs = gr.Label(
                        label="Probabilities (first face, smoothed)", num_top_classes=3, elem_id="live-probs"
                    )
            session = gr.State(None)
            camera.stream(
                app.webcam,
                [camera, session, cam_conf],
                [live, current, live_probs, session],
                stream_every=WEBCAM_EVERY,
                show_progress="hidden",
            )
    return page


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="fer-app",
        description=USAGE.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(USAGE.split("\n\n")[1:]),
    )
    ap.add_argument(
        "run",
        metavar="RUN_OR_CHECKPOINT",
        help="sweep run folder (STORAGE/NAME: uses report/best.pt), a report folder, a checkpoint file, "
        "or an exported model.onnx",
    )
    ap.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    ap.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)"
    )
    ap.add_argument(
        "--share", action="store_true", help="also open a temporary public link through Gradio's servers"
    )
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ap.add_argument("--detector", default="haar", help="face detector: haar (default) or dlib")
    args = ap.parse_args(argv)

    # Imported after parsing: torch, the model code and Gradio make --help slow otherwise.
    from .predict import load_predictor
    from .predict_cli import resolve_checkpoint

    try:
        import gradio  # noqa: F401  (an optional dependency: said here, before the model loads)
    except ImportError:
        print('error: the web app needs Gradio: pip install -e ".[app]"', file=sys.stderr)
        return 2
    try:
        if not 0 < args.port < 65536:
            raise FerError(f"--port {args.port}: give a port in 1..65535, e.g. 7860")
        checkpoint = resolve_checkpoint(args.run)
        predictor = load_predictor(checkpoint, device=args.device, detector=args.detector)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fer-app-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    page = build(App(predictor, str(checkpoint), work))
    try:
        page.queue().launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            ssr_mode=False,
            footer_links=[],
            quiet=True,
            prevent_thread_lock=True,
        )
    except OSError as e:
        print(f"error: cannot serve on {args.host}:{args.port} ({e}); pass another --port", file=sys.stderr)
        return 2
    print(
        f"fer-app: {checkpoint} on {page.local_url}" + (f" and {page.share_url}" if page.share_url else ""),
        flush=True,
    )
    # SIGTERM (a service manager, the tests) stops it as Ctrl-C does: the server closed, the scratch folder removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        page.block_thread()
    finally:
        page.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
