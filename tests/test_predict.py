"""Prediction: a folder of crops, a photo with faces in a scene and broken files, through sweeps/predict.py.

The "photo" is synthetic: a drawn face (skin-toned oval, hair, dark eyes and brows, nose shadow, mouth,
blurred) pasted into a noisy gradient scene. The demo set's cartoon faces are not found by the Haar
cascade, these are (checked in the setup, so a detector change fails loudly there rather than later). A
second test pastes real FER2013 faces from ../shared when present.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from fer_core.apps.faces import FaceDetector, margin_box
from fer_core.apps.predict import Predictor
from fer_core.apps.predict_inputs import load_image
from fer_core.checkpoint import load_checkpoint, save_checkpoint
from fer_core.data import CLASS_NAMES, decode_image, to_model_array
from fer_core.errors import CheckpointError, DataError
from fer_core.train import train

from .conftest import FER2013, REPO, tiny_config


@pytest.fixture(scope="module")
def checkpoint(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    train(tiny_config(demo_root, out, epochs=1))
    return out / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_checkpoint(checkpoint, device="cpu")


def drawn_face(size: int) -> Image.Image:
    """A face the Haar cascade finds: its features are the light/dark bands the cascade looks for."""
    s, skin, dark = size, 185, 40
    im = Image.new("L", (s, s), 90)
    d = ImageDraw.Draw(im)
    d.ellipse([0.12 * s, 0.02 * s, 0.88 * s, 1.0 * s], fill=skin)
    d.chord([0.1 * s, -0.05 * s, 0.9 * s, 0.45 * s], 180, 360, fill=50)  # hair
    for cx in (0.33, 0.67):
        d.ellipse([(cx - 0.11) * s, 0.36 * s, (cx + 0.11) * s, 0.46 * s], fill=dark)  # eyes
        d.rectangle([(cx - 0.13) * s, 0.29 * s, (cx + 0.13) * s, 0.32 * s], fill=dark + 20)  # brows
    d.polygon([(0.5 * s, 0.45 * s), (0.44 * s, 0.65 * s), (0.56 * s, 0.65 * s)], fill=skin - 35)  # nose
    d.ellipse([0.36 * s, 0.74 * s, 0.64 * s, 0.82 * s], fill=dark + 30)  # mouth
    return im.filter(ImageFilter.GaussianBlur(4))


def scene(faces: list[tuple[Image.Image, int, int]], size=(640, 480), seed=0) -> Image.Image:
    """An RGB noisy gradient 'photo' with the given (face, x, y) pasted in."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 60 + 0.2 * xx + 0.1 * yy
    rgb = np.stack([base * 0.9, base, base * 1.1], -1) + rng.normal(0, 8, (h, w, 3))
    im = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    for face, x, y in faces:
        im.paste(face.convert("RGB"), (x, y))
    return im


def iou(a, b) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, iw) * max(0, ih)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def huge_png(path) -> None:
    """A tiny file whose header claims 30000×30000 pixels (a decompression bomb to Pillow)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


SCENE_FACES = [(60, 120, 140), (380, 170, 180)]  # x, y, size of the two pasted faces


def make_inputs(folder, demo_root) -> dict[str, str]:
    """The mixed folder of the end-to-end test; returns {file name: 'ok' or 'bad'}."""
    folder.mkdir(parents=True)
    kinds = {}
    for cls in ("happy", "sad", "surprise"):
        src = sorted((demo_root / "val" / cls).iterdir())[0]
        shutil.copy(src, folder / f"crop_{cls}.png")
        kinds[f"crop_{cls}.png"] = "ok"
    sub = folder / "photos"
    sub.mkdir()
    scene([(drawn_face(s), x, y) for x, y, s in SCENE_FACES]).save(sub / "scene.jpg", quality=95)
    kinds["scene.jpg"] = "ok"
    face = drawn_face(64)
    rgba = face.convert("RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:10] = 0  # a transparent band: composited on white, as in training
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    face.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(face, dtype=np.uint16) * 200).save(folder / "gray16.png")
    pal = face.convert("P")
    pal.save(folder / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: shown upright after exif_transpose
    face.convert("RGB").rotate(90, expand=True).save(folder / "rotated.jpg", exif=exif)
    scene([], size=(5000, 300), seed=2).save(folder / "wide_large.jpg", quality=80)  # reduced below 4096 px
    kinds.update(
        {
            k: "ok"
            for k in ("rgba.png", "cmyk.jpg", "gray16.png", "palette.png", "rotated.jpg", "wide_large.jpg")
        }
    )
    (folder / "corrupt.jpg").write_bytes(
        b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))
    )
    (folder / "notes.txt").write_text("not an image\n")
    buf = io.BytesIO()
    scene([], size=(200, 200), seed=3).save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    huge_png(folder / "huge.png")
    kinds.update({k: "bad" for k in ("corrupt.jpg", "notes.txt", "truncated.png", "huge.png")})
    return kinds


def test_detector_finds_the_synthetic_faces():
    boxes = FaceDetector()(np.asarray(scene([(drawn_face(s), x, y) for x, y, s in SCENE_FACES])))
    assert len(boxes) == 2, f"the Haar cascade found {boxes} instead of the two pasted faces"
    for box, (x, y, s) in zip(boxes, SCENE_FACES):
        assert iou(box, (x, y, s, s)) > 0.6, (box, (x, y, s))
    assert FaceDetector()(np.asarray(scene([]))) == []  # no false positives on the plain scene
    x, y, w, h = margin_box((600, 10, 100, 100), (480, 640, 3), margin=0.1)
    assert (w, h) == (120, 120) and x + w <= 640 and y == 0  # shifted inside the image, still square


@pytest.mark.slow  # the predict CLI on 15 inputs: ~10 s
def test_cli_on_mixed_folder(checkpoint, demo_root, tmp_path):
    folder = tmp_path / "inputs"
    kinds = make_inputs(folder, demo_root)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "sweeps" / "predict.py"),
            str(checkpoint.parents[1]),
            str(folder),
            str(tmp_path / "missing.jpg"),
            "--out",
            str(out),
            "--json",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr  # partial failure
    doc = json.loads(proc.stdout)
    by_name = {r["path"].split("/")[-1]: r for r in doc["images"]}
    assert set(by_name) == set(kinds)
    for name, kind in kinds.items():
        r = by_name[name]
        if kind == "bad":
            assert not r["ok"] and r["png"] is None and name in r["error"], r
            assert name in proc.stderr, f"{name} not named in the summary:\n{proc.stderr}"
            continue
        assert r["ok"] and r["faces"], r
        for f in r["faces"]:
            assert abs(sum(f["probabilities"].values()) - 1) < 1e-4 and f["expression"] in CLASS_NAMES
            assert list(f["probabilities"]) == list(CLASS_NAMES)
        assert Path(r["png"]).is_file() and Path(r["png"]).parent.is_relative_to(out), r["png"]
    scene_rec = by_name["scene.jpg"]
    assert scene_rec["face_found"] and len(scene_rec["faces"]) == 2
    for f, (x, y, s) in zip(scene_rec["faces"], SCENE_FACES):
        assert iou(f["box"], (x, y, s, s)) > 0.6, f["box"]
    assert (out / "photos" / "scene.png").is_file()  # the folder's layout is kept under OUT
    assert by_name["wide_large.jpg"]["size"] == [5000, 300] and not by_name["wide_large.jpg"]["face_found"]
    assert by_name["rotated.jpg"]["size"] == [64, 64]
    assert "whole image" in by_name["crop_happy.png"]["note"] or by_name["crop_happy.png"]["face_found"]
    assert "missing.jpg" in proc.stderr and "5 of 15 input(s) failed" in proc.stderr, proc.stderr
    assert (
        "too large" in by_name["huge.png"]["error"]
        and "not a readable image" in by_name["notes.txt"]["error"]
    )
    assert "truncated" in by_name["truncated.png"]["error"]
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(max(1, len(r["faces"])) for r in doc["images"])
    assert [r for r in rows if r["path"].endswith("scene.jpg")][0]["x"] != ""
    assert (out / "contact_sheet.png").stat().st_size > 10_000


def test_table_output_and_usage_errors(checkpoint, demo_root, tmp_path, capsys):
    from sweeps.predict import main

    crop = sorted((demo_root / "val" / "happy").iterdir())[0]
    assert (
        main(
            [str(checkpoint), str(crop), "--out", str(tmp_path / "o"), "--no-face-detect", "--device", "cpu"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert crop.name in text and "face detection off" in text and "1 of 1 input(s) predicted" in text
    assert (tmp_path / "o" / crop.with_suffix(".png").name).is_file()
    assert main([str(tmp_path / "nope.pt"), str(crop), "--out", str(tmp_path / "o")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main([str(checkpoint), str(tmp_path / "nothing*.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "nothing to predict" in capsys.readouterr().err


def test_predict_api_matches_training_decoder(predictor, demo_root, tmp_path):
    paths = [sorted((demo_root / "val" / c).iterdir())[0] for c in CLASS_NAMES]
    s, gray = predictor.preprocess.img_size, predictor.preprocess.grayscale
    by_path = predictor.predict(paths)
    assert by_path.shape == (7, 7) and np.allclose(by_path.sum(1), 1, atol=1e-5)
    arrays = np.stack([decode_image(p, s, gray) for p in paths])  # exactly what the val cache holds
    assert np.array_equal(predictor.predict(arrays), predictor.predict_batch(arrays))
    assert np.allclose(predictor.predict([Image.open(p) for p in paths]), by_path, atol=1e-6)
    # Whole-image prediction of a file (no face found) is the same computation.
    r = predictor.predict_file(paths[3], detect=False)
    assert r.ok and not r.face_found and np.allclose(r.faces[0].probs, by_path[3], atol=1e-6)
    # In-memory conversion = training's decoder, for every mode it handles (PNG: no JPEG draft scaling).
    face = drawn_face(100)
    rgba = face.convert("RGBA")
    rgba.putalpha(128)
    for name, im in {
        "rgba": rgba,
        "gray16": Image.fromarray(np.asarray(face, dtype=np.uint16) * 300),
        "palette": face.convert("P"),
        "rgb": face.convert("RGB"),
        "gray": face,
    }.items():
        im.save(tmp_path / f"{name}.png")
        assert np.array_equal(
            to_model_array(Image.open(tmp_path / f"{name}.png"), s, gray),
            decode_image(tmp_path / f"{name}.png", s, gray),
        ), name


def test_bad_inputs_give_one_line_errors(checkpoint, tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    for path, words in (
        (tmp_path / "missing.png", "no such file"),
        (tmp_path / "a.txt", "not a readable image"),
    ):
        with pytest.raises(DataError, match=words) as e:
            load_image(path)
        assert "\n" not in str(e.value)
    state = load_checkpoint(checkpoint)
    six = dict(state, class_names=list(CLASS_NAMES[:6]))
    six["model"] = {k: (v[:6] if k.startswith("classifier.") else v) for k, v in state["model"].items()}
    save_checkpoint(six, tmp_path / "six.pt")
    torch.save(state["model"], tmp_path / "weights_only.pt")
    save_checkpoint(dict(state, config=dict(state["config"], model="resnet18")), tmp_path / "other_model.pt")
    # A checkpoint of other classes is no error: it predicts its own (tests/test_class_names.py).
    six_predictor = Predictor.from_checkpoint(tmp_path / "six.pt", device="cpu")
    assert six_predictor.class_names == list(CLASS_NAMES[:6])
    assert six_predictor.predict(np.zeros((2, 32, 32), np.uint8)).shape == (2, 6)
    for path, words in (
        (tmp_path / "weights_only.pt", "not a fer_core checkpoint"),
        (tmp_path / "a.txt", "not a readable checkpoint"),
        (tmp_path / "other_model.pt", "do not fit model resnet18"),
    ):
        with pytest.raises(CheckpointError, match=words) as e:
            Predictor.from_checkpoint(path, device="cpu")
        assert "\n" not in str(e.value)


@pytest.mark.slow  # real data: FER2013 val faces
def test_real_fer_face_in_a_scene(predictor, tmp_path):
    """Real faces (FER2013 val, 48 px, upscaled to 160 px) pasted into a scene are found and classified."""
    if not FER2013.is_dir():
        pytest.skip(
            f"FER2013 not found at {FER2013} (set FER_SHARED); the synthetic-face test covers detection"
        )
    detector = FaceDetector()
    for src in sorted((FER2013 / "val" / "happy").glob("*.jpg"))[:10]:
        face = Image.open(src).convert("L").resize((160, 160), Image.BICUBIC)
        photo = scene([(face, 300, 200)])
        if detector(np.asarray(photo)):
            break
    else:
        pytest.fail("the Haar cascade found none of the first 10 FER2013 val/happy faces pasted into a scene")
    photo.save(tmp_path / "real.jpg", quality=95)
    r = predictor.predict_file(tmp_path / "real.jpg")
    assert r.ok and r.face_found and len(r.faces) == 1
    assert iou(r.faces[0].box, (300, 200, 160, 160)) > 0.5, r.faces[0].box


def test_min_confidence_labels_unsure_faces_uncertain(checkpoint, demo_root, tmp_path, capsys):
    from sweeps.predict import main

    crops = [str(sorted((demo_root / "val" / c).iterdir())[0]) for c in CLASS_NAMES]
    tops = Predictor.from_checkpoint(checkpoint, device="cpu").predict(crops).max(1)
    distinct = np.unique(tops)
    p = float(
        distinct[len(distinct) // 2 - 1 : len(distinct) // 2 + 1].mean()
    )  # some faces under it, some not
    out = tmp_path / "o"
    argv = [str(checkpoint), *crops, "--out", str(out), "--no-face-detect", "--device", "cpu"]
    assert main([*argv, "--json", "--min-confidence", str(p)]) == 0
    faces = [r["faces"][0] for r in json.loads(capsys.readouterr().out)["images"]]
    for f, top in zip(faces, tops):
        assert (f["expression"] == "uncertain") == (top < p), (f, p)
        assert abs(sum(f["probabilities"].values()) - 1) < 1e-4  # the probabilities are kept
    assert {f["expression"] == "uncertain" for f in faces} == {True, False}
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["expression"] for r in rows] == [f["expression"] for f in faces]
    assert all(r["happy"] != "" for r in rows) and len(list(out.glob("*.png"))) == len(crops) + 1
    for bad in ("1", "-0.1", "nan"):
        assert main([*argv, "--min-confidence", bad]) == 2
        err = capsys.readouterr().err
        assert "--min-confidence" in err and "[0, 1)" in err and err.count("\n") == 1, err


@pytest.mark.slow  # two predict CLI runs: ~15 s
def test_explain_maps_each_face_over_the_crop_the_model_saw(predictor, checkpoint, tmp_path):
    photo = tmp_path / "scene.jpg"
    scene([(drawn_face(s), x, y) for x, y, s in SCENE_FACES]).save(photo, quality=95)
    plain, explained = predictor.predict_file(photo), predictor.predict_file(photo, explain=True)
    side = predictor.preprocess.img_size
    assert len(explained.faces) == 2 and all(f.saliency is None for f in plain.faces)
    for f, g in zip(explained.faces, plain.faces):
        assert np.allclose(f.probs, g.probs) and f.saliency.shape == (side, side)
        assert 0 <= f.saliency.min() and f.saliency.max() <= 1
        x, y, w, h = f.region  # the margin crop holds the face box
        assert x <= f.box[0] and y <= f.box[1] and x + w >= f.box[0] + f.box[2] and w > f.box[2]
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "sweeps" / "predict.py"), str(checkpoint), str(photo), "--out"]
    for name, extra in (("plain", []), ("explained", ["--explain"])):
        done = subprocess.run([*cmd, str(out / name), *extra], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    # The maps are drawn: far more strongly coloured pixels than the plain PNG's bars and boxes.
    pngs = [
        np.asarray(Image.open(out / n / "scene.png").convert("RGB")).astype(int)
        for n in ("plain", "explained")
    ]
    coloured = [((p.max(-1) - p.min(-1)) > 80).sum() for p in pngs]
    assert coloured[1] - coloured[0] > 0.02 * pngs[1][..., 0].size, coloured


def test_no_plots_writes_the_table_and_csv_only(checkpoint, predictor, demo_root, tmp_path, capsys):
    from sweeps.predict import main

    crops = sorted((demo_root / "val" / "happy").iterdir())[:3]
    out = tmp_path / "o"
    args = [str(checkpoint), *map(str, crops), "--out", str(out), "--no-face-detect", "--device", "cpu"]
    assert main([*args, "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert all(c.name in text for c in crops) and "3 of 3 input(s) predicted" in text and "PNG" not in text
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"]
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    expected = predictor.predict([str(c) for c in crops])
    got = np.array([[float(r[c]) for c in CLASS_NAMES] for r in rows])
    assert np.abs(got - expected).max() < 1e-4
    assert main([*args, "--no-plots", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["contact_sheet"] is None and all(im["png"] is None for im in doc["images"])
    assert main([*args, "--no-plots", "--explain"]) == 2
    assert "--explain" in capsys.readouterr().err


def test_predict_files_classifies_a_batch_per_forward(predictor, demo_root):
    """Files are read a batch at a time: 40 crops with batch size 32 take 2 full forward passes, not one per
    few files."""
    crops = sorted(p for p in (demo_root / "train").rglob("*") if p.is_file())[:40]
    calls = []
    hook = predictor.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        predictor.batch_size = 32
        results = list(predictor.predict_files(crops, detect=False))
    finally:
        hook.remove()
        predictor.batch_size = 64
    assert len(results) == 40 and calls == [32, 8]
