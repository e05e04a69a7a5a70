"""ONNX export: the graph embeds the preprocessing, onnxruntime agrees with PyTorch, the contract is in the metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx  # project dependencies: a missing one fails here instead of skipping quietly
import onnxruntime as ort
import pytest
import torch

from fer_core.apps.export import check_onnx, export_onnx, main
from fer_core.apps.predict import Predictor
from fer_core.checkpoint import save_checkpoint, store_temperature
from fer_core.data import CLASS_NAMES
from fer_core.decode_cache import load_split
from fer_core.errors import CheckpointError
from fer_core.evaluate import evaluate_checkpoint
from fer_core.runtime import resolve_runtime

from .conftest import export_ready_checkpoint


@pytest.fixture(scope="module", params=[True, False], ids=["gray", "rgb"])
def checkpoint(request, demo_root, tmp_path_factory):
    return export_ready_checkpoint(demo_root, tmp_path_factory.mktemp("export") / "run", request.param)


def test_onnx_matches_pytorch(checkpoint, demo_root, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    assert main([str(checkpoint), "--onnx", str(path)]) == 0 and "wrote" in capsys.readouterr().out
    pre = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["preprocess"])
    val = load_split(demo_root, "val", pre["img_size"], pre["grayscale"]).images
    for images in (val[::3][:8], None):  # demo faces, then check_onnx's own varied test images
        r = check_onnx(path, checkpoint, batch_size=8, bench_batch=0, images=images)
        assert r["max_abs_diff"] < 1e-4 and r["max_abs_diff_eager"] < 1e-4, r
        assert r["prob_range"] > 0.05, r  # the outputs vary with the input, so agreeing means something

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)
    contract = meta["input_contract"]
    assert set(pre) == {"img_size", "grayscale", "mean", "std", "per_image"}, pre  # the whole contract
    assert json.loads(meta["temperature"]) == 1.0 and "temperature 1)" in contract  # none fitted
    assert "uint8" in contract and (
        "zero mean" in contract if pre.get("per_image") else str(pre["mean"]) in contract
    ), contract

    # Dynamic batch, uint8 input of the documented shape, probabilities out; same as the Predictor API.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    s = pre["img_size"]
    shape = (3, s, s) if pre["grayscale"] else (3, s, s, 3)
    inp = session.get_inputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == list(shape[1:])
    x = np.ascontiguousarray(val[1:4])
    probs = session.run(None, {inp.name: x})[0]
    assert probs.shape == (3, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.abs(probs - Predictor.from_checkpoint(checkpoint, device="cpu").predict_batch(x)).max() < 1e-4


def test_the_temperature_is_applied_by_onnx_the_predictor_and_evaluate(checkpoint, demo_root, tmp_path):
    hot = tmp_path / "hot.pt"
    save_checkpoint(torch.load(checkpoint, weights_only=True), hot)
    store_temperature(hot, 0.4)  # sharper: probabilities far from those at T = 1
    path = export_onnx(hot, tmp_path / "hot.onnx")
    assert json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["temperature"]) == 0.4
    r = check_onnx(path, hot, batch_size=8, bench_batch=0)
    assert r["temperature"] == 0.4 and r["max_abs_diff"] < 1e-4 and r["max_abs_diff_eager"] < 1e-4, r
    pre = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["preprocess"])
    x = np.ascontiguousarray(load_split(demo_root, "val", pre["img_size"], pre["grayscale"]).images[:6])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    p_onnx = session.run(None, {"images": x})[0]
    p_hot = Predictor.from_checkpoint(hot, device="cpu").predict_batch(x)
    p_plain = Predictor.from_checkpoint(checkpoint, device="cpu").predict_batch(x)
    assert np.abs(p_onnx - p_hot).max() < 1e-4 and np.abs(p_hot - p_plain).max() > 0.02
    # softmax(z / 0.4) from the plain probabilities: log p = z + const per row.
    expected = torch.from_numpy(np.log(p_plain) / 0.4).softmax(1).numpy()
    assert np.abs(p_hot - expected).max() < 1e-4
    kw = dict(runtime=resolve_runtime("cpu"), return_probs=True, tta_flip=True)
    plain, tempered = (evaluate_checkpoint(c, str(demo_root), "val", **kw) for c in (checkpoint, hot))
    assert np.allclose(plain["logits"], tempered["logits"], atol=1e-5)  # the raw logits, before T
    assert np.allclose(
        tempered["probs"], torch.from_numpy(plain["logits"] / 0.4).softmax(1).numpy(), atol=1e-5
    )
    # Flip TTA tempers the mean of both views' probabilities: its prediction, so its accuracy, is kept.
    pooled = torch.from_numpy(np.log(plain["probs_tta"]) / 0.4).softmax(1).numpy()
    assert np.allclose(tempered["probs_tta"], pooled, atol=1e-5)
    for key in ("val_accuracy", "val_tta_accuracy", "val_tta_macro_f1"):
        assert tempered[key] == plain[key], key
    assert tempered["val_loss"] != plain["val_loss"] and tempered["val_tta_loss"] != plain["val_tta_loss"]


def test_export_rejects_a_non_checkpoint(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07junk")
    assert main([str(tmp_path / "m.onnx"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        export_onnx(tmp_path / "m.onnx", tmp_path / "y.onnx")


def test_a_bad_temperature_is_refused_by_every_loader(checkpoint, demo_root, tmp_path, capsys):
    """NaN gives NaN probabilities and T <= 0 inverts or breaks the ranking: export, the Predictor and evaluate
    all refuse such a checkpoint in one line, through the checkpoint's one temperature reader."""
    state = torch.load(checkpoint, weights_only=True)
    for i, t in enumerate((float("nan"), float("inf"), 0.0, -0.5)):
        bad = save_checkpoint(dict(state, temperature=t), tmp_path / f"t{i}.pt")
        assert main([str(bad), "--onnx", str(tmp_path / f"t{i}.onnx")]) == 2, t
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err and "temperature" in err, err
        assert not (tmp_path / f"t{i}.onnx").exists()
        with pytest.raises(CheckpointError, match="temperature"):
            Predictor.from_checkpoint(bad, device="cpu")
        with pytest.raises(CheckpointError, match="temperature"):
            evaluate_checkpoint(bad, str(demo_root), "val", runtime=resolve_runtime("cpu"))


def test_an_opset_outside_the_exporters_range_is_one_line(checkpoint, tmp_path, capsys):
    for opset in ("99", "16"):
        assert main([str(checkpoint), "--onnx", str(tmp_path / "m.onnx"), "--opset", opset]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--opset = {opset}" in err and "17 to 20" in err, err


def test_export_of_other_classes_names_them(checkpoint, tmp_path, capsys):
    other = ["a0", "b1", "c2", "d3", "e4", "f5", "g6"]
    path = save_checkpoint(
        dict(torch.load(checkpoint, weights_only=True), class_names=other), tmp_path / "o.pt"
    )
    assert main([str(path), "--onnx", str(tmp_path / "o.onnx")]) == 0
    said = capsys.readouterr()
    assert "in order: a0, b1, c2, d3, e4, f5, g6" in said.out and not said.err, said
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "o.onnx")).metadata_props}
    assert json.loads(meta["class_names"]) == other and "a0, b1" in meta["input_contract"]


def test_evaluate_refuses_to_replace_a_reports_metrics(checkpoint, demo_root, tmp_path, capsys):
    from fer_core.evaluate import main as evaluate_main

    report = tmp_path / "report"
    report.mkdir()
    save_checkpoint(torch.load(checkpoint, weights_only=True), report / "best.pt")
    (report / "metrics.json").write_text('{"test_accuracy": 0.7}')
    (report / "report.md").write_text("# report\n")
    args = [str(report / "best.pt"), "--data", str(demo_root), "--out", str(report / "metrics.json")]
    assert evaluate_main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json" in err and "--overwrite" in err, err
    assert (report / "metrics.json").read_text() == '{"test_accuracy": 0.7}'
    assert evaluate_main([*args, "--device", "cpu", "--overwrite"]) == 0
    assert "val_accuracy" in json.loads((report / "metrics.json").read_text())
