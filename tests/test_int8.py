"""INT8 export and latency: the quantized file keeps the contract, loads in OnnxPredictor, agrees with FP32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from fer_core.apps.export import export_onnx, main
from fer_core.apps.int8 import format_int8_report, int8_report, quantize
from fer_core.apps.latency import measure_latency
from fer_core.apps.predict import OnnxPredictor
from fer_core.checkpoint import save_checkpoint
from fer_core.decode_cache import load_split
from fer_core.errors import FerError
from fer_core.runtime import available_cpus

from .conftest import export_ready_checkpoint


@pytest.fixture(scope="module")
def exported(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    ckpt = export_ready_checkpoint(demo_root, out / "run", grayscale=True)
    return ckpt, export_onnx(ckpt, out / "model.onnx")


def _meta(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_export_int8_writes_a_quantized_file_the_predictor_loads(exported, demo_root, tmp_path, capsys):
    ckpt, _ = exported
    fp32 = tmp_path / "model.onnx"
    assert main([str(ckpt), "--onnx", str(fp32), "--int8", "--threads", "1"]) == 0
    said = capsys.readouterr()
    assert "onnxruntime, 1 threads" in said.out, said.out
    int8 = tmp_path / "model.int8.onnx"
    for line in ("INT8 static", "val accuracy", "test accuracy", "val ece", "batch-1 latency", "file, MB"):
        assert line in said.out, said.out
    graph = onnx.load(str(int8)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}  # really quantized
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    meta, meta32 = _meta(int8), _meta(fp32)
    assert {k: meta[k] for k in meta32} == meta32  # classes, preprocess, temperature, contract kept
    how = json.loads(meta["quantization"])
    assert how["int8"] is True and how["method"] == "static" and "70 train images" in how["how"], how

    a, b = OnnxPredictor.from_onnx(fp32), OnnxPredictor.from_onnx(int8)
    assert b.class_names == a.class_names and b.preprocess == a.preprocess and b.temperature == a.temperature
    x = np.ascontiguousarray(load_split(demo_root, "val", 32, True).images)
    p32, p8 = a.predict_batch(x), b.predict_batch(x)
    assert np.allclose(p8.sum(1), 1, atol=1e-4)
    # This tiny model's top two probabilities are mostly within 0.01 of each other, so rounding flips many
    # top-1s (the FER2013 model's agree on 92 % of val): at least half agree, and the probabilities stay
    # close compared with how much they vary over the images.
    assert (p32.argmax(1) == p8.argmax(1)).mean() >= 0.5, (p32.argmax(1), p8.argmax(1))
    assert np.median(np.abs(p32 - p8).max(1)) < 0.05 < np.ptp(p32, axis=0).max()
    assert np.corrcoef(p32.ravel(), p8.ravel())[0, 1] > 0.8


def test_dynamic_quantization_keeps_the_contract_and_the_report_warns(exported, tmp_path):
    ckpt, fp32 = exported
    int8 = quantize(fp32, tmp_path / "d.onnx", "dynamic")
    assert json.loads(_meta(int8)["quantization"])["method"] == "dynamic"
    assert OnnxPredictor.from_onnx(int8).class_names == OnnxPredictor.from_onnx(fp32).class_names
    quick = dict(batch_sizes=(1, 2), min_seconds=0.05, min_repeats=3, warmup=1)
    r = int8_report(ckpt, fp32, int8, latency=quick, rounds=2, max_loss=-1.0)  # any result loses "too much"
    assert set(r["splits"]) == {"val", "test"} and r["splits"]["val"]["images"] == 28
    assert len(r["latency"]["int8"]["round_latencies_ms"]) == 2 and r["quantization"]["method"] == "dynamic"
    assert r["warning"] and "\n" not in r["warning"] and "accuracy" in r["warning"]
    assert format_int8_report(r).splitlines()[-1] == f"warning: {r['warning']}"


def test_latency_figures_are_sane(exported):
    _, fp32 = exported
    r = measure_latency(fp32, batch_sizes=(4, 1), min_seconds=0.2, max_seconds=1.0, min_repeats=5, warmup=1)
    assert r["threads"] == available_cpus() and "cores" in r["machine"] and r["size_bytes"] > 1e6
    b1, b4 = r["batches"][1], r["batches"][4]
    assert b1["q1_ms"] <= b1["median_ms"] == r["latency_ms"] <= b1["q3_ms"] and b1["repeats"] >= 5
    assert r["latency_iqr_ms"] == [b1["q1_ms"], b1["q3_ms"]]
    assert r["images_per_s"] == b4["images_per_s"] == pytest.approx(4000 / b4["median_ms"])
    assert measure_latency(fp32, (1,), threads=1, min_seconds=0.05, min_repeats=3, warmup=1)["threads"] == 1


def test_bad_input_is_one_line(exported, demo_root, tmp_path, capsys):
    ckpt, fp32 = exported
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07junk")
    for call in (
        lambda: measure_latency(junk),
        lambda: measure_latency(fp32, batch_sizes=(0,)),
        lambda: quantize(junk, tmp_path / "j8.onnx", "dynamic"),
        lambda: quantize(fp32, tmp_path / "s8.onnx", "static"),  # no calibration images
    ):
        with pytest.raises(FerError) as e:
            call()
        assert "\n" not in str(e.value), e.value
    # Calibration data that is not there: refused before anything is written.
    out = tmp_path / "m.onnx"
    assert main([str(ckpt), "--onnx", str(out), "--int8", "--calibration", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err and not out.exists(), err
    # A checkpoint whose training data moved: the report's data is checked before anything is written too.
    state = torch.load(ckpt, weights_only=True)
    moved = save_checkpoint(
        dict(state, config=dict(state["config"], data=str(tmp_path / "gone"))), tmp_path / "m.pt"
    )
    args = [str(moved), "--onnx", str(out), "--int8", "--calibration", str(demo_root)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gone" in err and "--data" in err and not out.exists(), err
    assert main([str(ckpt), "--onnx", str(out), "--quantization", "dynamic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--int8" in err and not out.exists(), err
    assert main([str(ckpt), "--onnx", str(out), "--int8", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads = 0" in err and not out.exists(), err


def test_onnx_files_are_written_whole_and_never_through_a_link(exported, tmp_path):
    """export_onnx and quantize write through a temporary file renamed into place: a link planted at the
    target is replaced, not followed, and a quantization that fails leaves the file already there as it was."""
    ckpt, fp32 = exported
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"precious")
    for name, write in {
        "model.onnx": lambda p: export_onnx(ckpt, p),
        "model.int8.onnx": lambda p: quantize(fp32, p, "dynamic"),
    }.items():
        target = tmp_path / "report" / name
        target.parent.mkdir(exist_ok=True)
        target.symlink_to(outside)
        write(target)
        assert not target.is_symlink() and outside.read_bytes() == b"precious", name
        assert OnnxPredictor.from_onnx(target).class_names == OnnxPredictor.from_onnx(fp32).class_names
    kept = tmp_path / "report" / "model.int8.onnx"
    before = kept.read_bytes()
    with pytest.raises(FerError, match="cannot quantize it statically"):  # images of the wrong shape
        quantize(fp32, kept, "static", np.zeros((2, 5, 5), np.uint8))
    assert kept.read_bytes() == before
    assert sorted(p.name for p in kept.parent.iterdir()) == [
        "model.int8.onnx",
        "model.onnx",
    ]  # no temporary left
