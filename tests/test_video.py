"""Video prediction end to end: a real recorded clip (tests/data/video_01.mp4, CC BY 2.0, see NOTICE.md) and
videos made here for the bad cases (no face, audio only, zero frames, truncated, variable frame rate, 4K),
through ``process_video`` and through sweeps/predict.py.

The clip: 90 frames at 29.97 fps, 640×480, a woman in front facing the camera (the largest face, on
screen all along), a man beside her, three people further back.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from fer_core.apps.predict import Predictor
from fer_core.apps.stream import FaceStream
from fer_core.apps.video import VideoReader, VideoWriter, is_video
from fer_core.apps.video_predict import process_video
from fer_core.errors import DataError, FerError
from fer_core.train import train

from .conftest import REPO, tiny_config

CLIP = REPO / "tests" / "data" / "video_01.mp4"
WOMAN_X = 200  # the woman's face centre stays left of this (640 px wide frames); the man's is right of it


@pytest.fixture(scope="module")
def checkpoint(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "run"
    # Trained enough that its probabilities differ from face to face and frame to frame (smoothing shows).
    train(tiny_config(demo_root, out, epochs=3, steps_per_epoch=6, lr=3e-3))
    return out / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def clip_result(predictor, tmp_path_factory):
    return process_video(CLIP, predictor, tmp_path_factory.mktemp("clip") / "video_01", progress=False)


def frame_times(path: Path) -> list[float]:
    """Each frame's presentation time, from the first frame's."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
    return [float((p - pts[0]) * s.time_base) for p in pts]


def write_video(path: Path, frames, times, size=None):
    size = size or (frames[0].shape[1], frames[0].shape[0])
    with VideoWriter(path, size, 30.0) as w:
        for rgb, t in zip(frames, times):
            w.write(rgb, t)
    return path


def noise_frames(n: int, size=(320, 240), seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(40, 200, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    return [(base + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8) for _ in range(n)]


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------------
# the clip, end to end
# ---------------------------------------------------------------------------------------------------------


def test_reader_streams_every_frame_with_its_time():
    with VideoReader(CLIP) as r:
        assert (r.info.width, r.info.height, r.info.frames) == (640, 480, 90)
        assert r.info.fps == pytest.approx(29.97, abs=0.01)
        times = [t for _, t, rgb in r]
    assert len(times) == 90 and times[0] == 0 and np.all(np.diff(times) > 0)
    assert times[-1] == pytest.approx(89 / 29.97, abs=0.01)
    with VideoReader(CLIP, max_side=320) as r:
        assert r.info.size == (320, 240)
        assert next(iter(r))[2].shape == (240, 320, 3)


def test_clip_gives_annotated_copy_tables_timeline_and_summary(clip_result, predictor):
    r = clip_result
    s = r.summary
    # the annotated copy: every frame, the same rate and timing
    with av.open(str(r.video)) as c:
        st = c.streams.video[0]
        assert float(st.average_rate) == pytest.approx(29.97, abs=0.01)
    assert frame_times(r.video) == pytest.approx(frame_times(CLIP), abs=1e-3)
    assert s["frames"] == 90 and s["duration_seconds"] == pytest.approx(3.0, abs=0.02)
    # one dominant track: the woman in front, on screen the whole clip under one id
    dom = s["tracks"][0]
    assert s["dominant_track"] == dom["track"] and dom["frames"] >= 85
    table = rows(r.csv)
    dom_rows = [x for x in table if x["track"] == str(dom["track"])]
    centres = [int(x["x"]) + int(x["w"]) / 2 for x in dom_rows]
    assert max(centres) < WOMAN_X, "the dominant track is not the woman in front"
    woman = [x for x in table if x["x"] and int(x["x"]) + int(x["w"]) / 2 < WOMAN_X and int(x["w"]) > 50]
    assert len({x["track"] for x in woman}) == 1, "the woman's face changed track id"
    assert dom["seconds_on_screen"] == pytest.approx(dom["frames"] / 29.97, rel=0.02)
    assert sum(dom["expression_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert set(dom["expression_share"]) <= {*predictor.class_names, "uncertain"}
    # every frame is in the table; probabilities sum to 1; JSON lines match the CSV
    assert {int(x["frame"]) for x in table} == set(range(90))
    p = np.array([[float(x[f"p_{c}"]) for c in predictor.class_names] for x in dom_rows])
    assert np.allclose(p.sum(1), 1, atol=2e-3)
    lines = [json.loads(line) for line in open(r.jsonl)]
    assert len(lines) == len(table) and lines[0]["probabilities"].keys() == set(predictor.class_names)
    # a timeline per lasting track, the summary on disk
    assert r.timelines[0].name == f"timeline_track{dom['track']}.png" and r.timelines[0].stat().st_size > 5000
    assert json.loads(r.summary_path.read_text())["tracks"][0]["track"] == dom["track"]
    assert set(s["processing_seconds"]) >= {"decode", "detect", "track", "classify", "draw", "encode"}
    assert s["real_time_factor"] > 0


def test_a_face_entering_mid_video_gets_tracked(predictor, tmp_path):
    """The woman is hidden for the first second while the man is tracked: she must get a track of her own
    within about a second of appearing (new faces are found by whole-frame scans, and confirmed on a second)."""
    with VideoReader(CLIP) as r:
        frames = [(t, rgb.copy()) for _, t, rgb in r]
    for _, rgb in frames[:30]:
        rgb[:, :WOMAN_X] = 128
    video = write_video(tmp_path / "enters.mp4", [f for _, f in frames], [t for t, _ in frames])
    table = rows(process_video(video, predictor, tmp_path / "out", progress=False).csv)
    woman = [x for x in table if x["x"] and int(x["x"]) + int(x["w"]) / 2 < WOMAN_X and int(x["w"]) > 50]
    first = min(int(x["frame"]) for x in woman)
    assert 30 <= first <= 30 + 40, f"the woman was first tracked at frame {first}"
    assert len({x["track"] for x in woman}) == 1 and max(int(x["frame"]) for x in woman) == 89


def test_smoothing_is_an_exponential_average_in_seconds(clip_result, predictor):
    table = rows(clip_result.csv)
    dom = str(clip_result.summary["dominant_track"])
    mine = [x for x in table if x["track"] == dom]
    c = predictor.class_names
    avg, last = None, None
    for x in mine:
        p = np.array([float(x[f"p_{k}"]) for k in c])
        t = float(x["time"])
        avg = p if avg is None else avg + (1 - math.exp(-(t - last) / 0.5)) * (p - avg)
        last = t
        assert np.allclose(avg, [float(x[f"smoothed_{k}"]) for k in c], atol=3e-3)
    raw = np.array([[float(x[f"p_{k}"]) for k in c] for x in mine])
    smooth = np.array([[float(x[f"smoothed_{k}"]) for k in c] for x in mine])
    assert np.abs(np.diff(smooth, axis=0)).mean() < np.abs(np.diff(raw, axis=0)).mean()


def test_smoothing_off_and_detection_every_third_frame(predictor, tmp_path):
    r = process_video(CLIP, predictor, tmp_path / "k3", detect_every=3, smooth_seconds=0, progress=False)
    table = [x for x in rows(r.csv) if x["track"]]
    assert all(x[f"p_{c}"] == x[f"smoothed_{c}"] for x in table for c in predictor.class_names)
    detected = {int(x["frame"]) for x in table if x["detected"] == "1"}
    carried = {int(x["frame"]) for x in table if x["detected"] == "0"}
    assert detected <= set(range(0, 90, 3)) and carried and not carried & set(range(0, 90, 3))


def test_faces_of_a_batch_share_one_forward_pass(predictor):
    calls = []
    real = predictor.predict_batch
    predictor.predict_batch = lambda batch: calls.append(len(batch)) or real(batch)
    try:
        with VideoReader(CLIP) as r:
            frames = [(t, rgb) for _, (_, t, rgb) in zip(range(8), r)]
        faces = FaceStream(predictor).process([f for _, f in frames], [t for t, _ in frames])
    finally:
        del predictor.predict_batch
    assert calls == [sum(len(f) for f in faces)] and calls[0] >= 8


# ---------------------------------------------------------------------------------------------------------
# bad and unusual input: one line each, nothing half-written
# ---------------------------------------------------------------------------------------------------------


def test_no_face_video_says_so(predictor, tmp_path):
    video = write_video(tmp_path / "wall.mp4", noise_frames(12), [i / 30 for i in range(12)])
    r = process_video(video, predictor, tmp_path / "out", progress=False)
    assert r.summary["tracks"] == [] and r.summary["frames_with_face"] == 0
    assert any("no face found" in n for n in r.summary["notes"])
    assert [p.name for p in r.timelines] == ["timeline.png"]
    assert len(rows(r.csv)) == 12 and all(x["track"] == "" for x in rows(r.csv))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: text_file(d / "text.mp4"), "not a readable video"),
        (lambda d: audio_only(d / "speech.m4a"), "no video stream"),
        (lambda d: zero_frames(d / "empty.mkv"), "no frame"),
    ],
    ids=["missing", "not-a-video", "audio-only", "zero-frames"],
)
def test_unusable_video_is_one_line_and_leaves_nothing(predictor, tmp_path, make, message):
    video = make(tmp_path)
    with pytest.raises(DataError, match=message) as e:
        process_video(video, predictor, tmp_path / "out", progress=False)
    assert "\n" not in str(e.value) and str(video) in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def text_file(path: Path) -> Path:
    path.write_text("not a video")
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def zero_frames(path: Path) -> Path:
    with av.open(str(path), "w", format="matroska") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()  # the header with its video stream, and not one frame
    return path


def test_out_holding_something_else_is_refused_before_any_frame(predictor, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(FerError, match="not a video result folder"):
        process_video(CLIP, predictor, tmp_path / "out", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "notes.txt").exists()
    first = process_video(CLIP, predictor, tmp_path / "again", progress=False)
    second = process_video(CLIP, predictor, tmp_path / "again", progress=False)  # an earlier result: replaced
    assert second.summary["frames"] == first.summary["frames"] == 90


def test_truncated_video_is_processed_up_to_where_it_ends(predictor, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(CLIP.read_bytes()[: CLIP.stat().st_size // 2])
    try:
        r = process_video(cut, predictor, tmp_path / "out", progress=False)
    except DataError as e:  # FFmpeg may refuse the broken tail outright: then one line, nothing written
        assert "\n" not in str(e) and not (tmp_path / "out").exists()
        return
    assert 0 < r.summary["frames"] < 90
    assert any("truncated" in n for n in r.summary["notes"])
    assert len(frame_times(r.video)) == r.summary["frames"]


def test_variable_frame_rate_keeps_each_frames_time(predictor, tmp_path):
    times = [0.0, 0.033, 0.1, 0.133, 0.3, 0.333, 0.366, 0.5, 0.7, 0.733]
    video = write_video(tmp_path / "vfr.mp4", noise_frames(len(times)), times)
    r = process_video(video, predictor, tmp_path / "out", progress=False)
    assert frame_times(r.video) == pytest.approx(times, abs=1e-3)
    assert [float(x["time"]) for x in rows(r.csv)] == pytest.approx(times, abs=1e-3)
    assert r.summary["variable_frame_rate"] is True


def test_4k_video_is_streamed_at_a_bounded_size_with_boxes_in_its_pixels(predictor, tmp_path):
    from PIL import Image

    with VideoReader(CLIP) as r:
        small = [rgb for _, (_, _, rgb) in zip(range(6), r)]
    big = [np.asarray(Image.fromarray(f).resize((3840, 2880), Image.BILINEAR)) for f in small]
    video = write_video(tmp_path / "uhd.mp4", big, [i / 30 for i in range(6)])
    r = process_video(video, predictor, tmp_path / "out", progress=False)
    with av.open(str(r.video)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (1280, 960)
    faces = [x for x in rows(r.csv) if x["track"]]
    assert faces and max(int(x["x"]) + int(x["w"]) for x in faces) > 1280  # input pixels, not 1280-wide


def test_is_video_by_suffix():
    assert is_video("a/b.MP4") and is_video("x.webm") and is_video("talk.m4a")
    assert not is_video("face.jpg") and not is_video("notes")


# ---------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------


def predict(*args, cwd=None):
    return subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "predict.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_cli_predicts_photos_and_videos_together(checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "clip.mp4").write_bytes(CLIP.read_bytes())
    with VideoReader(CLIP) as r:
        from PIL import Image

        Image.fromarray(next(iter(r))[2]).save(inputs / "still.jpg")
    (inputs / "speech.wav").write_bytes(b"RIFF0000WAVEfmt ")
    out = tmp_path / "out"
    res = predict(checkpoint, inputs, "--out", out, "--detect-every", "2", "--smooth", "0.3")
    assert res.returncode == 1, res.stderr  # the broken .wav fails, the rest is predicted
    assert "speech.wav" in res.stderr and "frame/s" in res.stderr  # the progress bar
    assert "clip.mp4: 90 frames" in res.stdout
    assert (out / "clip" / "annotated.mp4").is_file() and (out / "still.png").is_file()
    assert (out / "predictions.csv").is_file()
    summary = json.loads((out / "clip" / "summary.json").read_text())
    assert summary["frames"] == 90 and summary["tracks"]


def test_cli_refuses_out_inside_the_input_folder_and_a_missing_camera(checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "clip.mp4").write_bytes(CLIP.read_bytes())
    res = predict(checkpoint, inputs, "--out", inputs / "preds")
    assert res.returncode == 2 and "inside the input folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (inputs / "preds").exists()
    res = predict(checkpoint, "--webcam", "7", "--out", tmp_path / "cam")
    assert res.returncode == 2 and "camera 7" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_webcam_loop_records_a_stream(checkpoint, tmp_path):
    """--webcam takes a device path or stream URL too; a file stands in for the camera here."""
    out = tmp_path / "cam"
    res = predict(checkpoint, "--webcam", CLIP, "--out", out, "--no-window", "--max-seconds", "60", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "webcam" / "summary.json").read_text())
    assert json.loads(res.stdout)["webcam"]["summary"] == summary
    assert summary["frames"] == 90 and summary["tracks"]
    assert len(frame_times(out / "webcam" / "annotated.mp4")) == 90


def test_cli_runs_an_exported_model(checkpoint, tmp_path):
    onnx = tmp_path / "model.onnx"
    exp = subprocess.run(
        [sys.executable, "-m", "fer_core.apps.export", str(checkpoint), "--onnx", str(onnx)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert exp.returncode == 0, exp.stderr
    res = predict(onnx, CLIP, "--out", tmp_path / "out", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["videos"][0]["summary"]["frames"] == 90
    assert doc["class_names"] == Predictor.from_checkpoint(checkpoint, device="cpu").class_names
