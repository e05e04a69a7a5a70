"""A checkpoint of any classes predicts, prints, writes and exports with its own class names.

The checkpoint is built as training writes one (``save_checkpoint`` with a real timm model of three outputs,
its config and preprocessing contract), for three classes named like a sentiment dataset's folders. Every
output (the Python API, the command's table, CSV and JSON, the ONNX file's metadata and the export
command's lines) must name those three and none of FER2013's other expressions.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from fer_core.apps.export import check_onnx
from fer_core.apps.export import main as export_main
from fer_core.apps.predict import Predictor
from fer_core.apps.predict_plots import plot_contact_sheet, plot_prediction
from fer_core.checkpoint import save_checkpoint
from fer_core.config import config_to_dict, make_config
from fer_core.data import CLASS_NAMES
from fer_core.engine import probs_metrics
from fer_core.evaluate import format_metrics
from fer_core.model import build_model
from fer_core.preprocess import Preprocess
from sweeps.predict import main as predict_main

CLASSES = ["negative", "neutral", "positive"]
# FER2013's names that are not among CLASSES: none may appear in any output.
FER_ONLY = sorted(set(CLASS_NAMES) - set(CLASSES))


def _no_fer_names(text: str) -> None:
    found = [name for name in FER_ONLY if name in text.lower()]
    assert not found, (found, text[-2000:])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = config_to_dict(make_config({"img_size": 32, "grayscale": True}))
    torch.manual_seed(0)
    model = build_model(cfg["model"], num_classes=len(CLASSES), drop_rate=cfg["drop_rate"])
    pre = Preprocess(img_size=32, grayscale=True, mean=(0.5,) * 3, std=(0.5,) * 3, per_image=True)
    # An untrained network's BatchNorm statistics make every input give nearly the same probabilities, and
    # two runtimes would "agree" on anything: the statistics are set from varied images (blurred noise) and
    # the head drawn at random, as in test_export.
    images = torch.rand(32, 1, 8, 8) * 255
    images = torch.nn.functional.interpolate(images, size=32, mode="bilinear")[:, 0].to(torch.uint8)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(pre(images))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.clamp_(min=0.1)
        head = model.get_classifier()
        head.weight.copy_(torch.randn(head.weight.shape) * 0.05)
    state = {
        "model": model.state_dict(),
        "config": cfg,
        "class_names": CLASSES,
        "preprocess": pre.to_dict(),
        "epoch": 1,
        "ema": None,
    }
    return save_checkpoint(state, tmp_path_factory.mktemp("classes") / "best.pt")


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    for i, size in enumerate((32, 48, 64, 40)):
        pixels = rng.integers(0, 256, (size, size) if i % 2 else (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"crop{i}.png")
    return sorted(folder.iterdir())


def test_the_python_api_names_the_checkpoints_classes(checkpoint, crops, tmp_path):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert predictor.class_names == CLASSES
    probs = predictor.predict(crops)
    assert probs.shape == (len(crops), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    results = list(predictor.predict_files(crops, detect=False))
    for r, p in zip(results, probs):
        d = r.to_dict(predictor.class_names)
        face = d["faces"][0]
        assert list(face["probabilities"]) == CLASSES and face["expression"] == CLASSES[int(p.argmax())]
        _no_fer_names(json.dumps(d))
    assert plot_prediction(results[0], tmp_path / "one.png", predictor.class_names).is_file()
    assert plot_contact_sheet(results, tmp_path / "sheet.png", predictor.class_names).is_file()


def test_the_predict_command_names_the_checkpoints_classes(checkpoint, crops, tmp_path, capsys):
    out = tmp_path / "preds"
    args = [str(checkpoint), str(crops[0].parent), "--no-face-detect", "--device", "cpu"]
    assert predict_main([*args, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    header = next(line for line in said.splitlines() if line.startswith("image"))
    assert header.split()[-3:] == CLASSES, header
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "path",
        "face",
        "x",
        "y",
        "w",
        "h",
        "expression",
        "probability",
        *CLASSES,
        "note",
    ]
    assert len(rows) == len(crops) and all(r["expression"] in CLASSES for r in rows)
    assert (out / "contact_sheet.png").is_file()
    _no_fer_names(said + (out / "predictions.csv").read_text())

    assert predict_main([*args, "--out", str(tmp_path / "json"), "--json", "--no-plots"]) == 0
    said = capsys.readouterr().out
    doc = json.loads(said)
    assert doc["class_names"] == CLASSES and len(doc["images"]) == len(crops)
    assert all(list(f["probabilities"]) == CLASSES for im in doc["images"] for f in im["faces"])
    _no_fer_names(said)


def test_export_stores_and_prints_the_checkpoints_classes(checkpoint, crops, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    assert export_main([str(checkpoint), "--onnx", str(path), "--check", "--batch-size", "2"]) == 0
    said = capsys.readouterr()
    assert "negative, neutral, positive" in said.out and not said.err, said
    _no_fer_names(said.out)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == CLASSES
    assert (
        "N x 3 softmax" in meta["input_contract"]
        and "for negative, neutral, positive" in meta["input_contract"]
    )
    _no_fer_names(json.dumps(meta))

    r = check_onnx(path, checkpoint, batch_size=4, bench_batch=0)
    assert r["class_names"] == CLASSES and r["max_abs_diff"] < 1e-4 and r["prob_range"] > 0.01, r
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    got = session.run(None, {"images": np.stack([predictor.prepare(c) for c in crops])})[0]
    assert got.shape == (len(crops), 3) and np.abs(got - predictor.predict(crops)).max() < 1e-4


def test_the_evaluate_table_fits_long_class_names():
    names = ["negative", "neutral", "strongly_positive"]
    labels = np.array([0, 1, 2, 1])
    m = {**probs_metrics(np.eye(3, dtype=np.float32)[[0, 1, 2, 2]], labels, names, "val_"), "val_loss": 0.5}
    lines = format_metrics(m, "val").splitlines()
    assert [line.split()[0] for line in lines[2:]] == names
    assert len({len(line) for line in lines[1:]}) == 1, lines  # the columns line up under the header


def test_a_class_named_like_a_csv_column_gets_its_own_column(checkpoint, crops, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    renamed = save_checkpoint(dict(state, class_names=["note", "path", "Happy"]), tmp_path / "r.pt")
    out = tmp_path / "preds"
    args = [str(renamed), str(crops[0]), "--no-face-detect", "--device", "cpu", "--no-plots"]
    assert predict_main([*args, "--out", str(out)]) == 0
    capsys.readouterr()
    with open(out / "predictions.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert list(row)[-4:] == ["p(note)", "p(path)", "Happy", "note"], row
    assert row["path"] == str(crops[0]) and "whole image" in row["note"], row
    assert abs(sum(float(row[c]) for c in ("p(note)", "p(path)", "Happy")) - 1) < 1e-3, row
