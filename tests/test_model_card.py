"""The model card (``fer_core.apps.model_card``) and the Hub folder ``export --hub`` writes (``fer_core.apps.hub``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from fer_core.apps.export import main
from fer_core.apps.hub import hub_card
from fer_core.apps.model_card import model_card
from fer_core.audit import audit_dataset, summarize
from fer_core.calibration import tempered_softmax
from fer_core.checkpoint import load_checkpoint, load_model, save_checkpoint
from fer_core.decode_cache import load_split
from fer_core.runtime import resolve_runtime

from .conftest import export_ready_checkpoint


@pytest.fixture(scope="module")
def checkpoint(demo_root, tmp_path_factory):
    """A tiny gray checkpoint with a fitted temperature and EMA weights whose head differs from its raw one."""
    path = export_ready_checkpoint(demo_root, tmp_path_factory.mktemp("card") / "run")
    state = load_checkpoint(path)
    g = torch.Generator().manual_seed(1)
    ema = {
        k: v + 0.05 * torch.randn(v.shape, generator=g) if k.startswith("classifier.") else v
        for k, v in state["model"].items()
    }
    save_checkpoint(dict(state, ema={"module": ema, "updates": 3, "decay": 0.9}, temperature=1.7), path)
    return path


def fake_metrics(classes: list[str]) -> dict:
    """A sweep report's metrics.json, in its keys, with figures each recognisable in the card."""
    per = lambda base: {c: round(base + i / 1000, 4) for i, c in enumerate(classes)}  # noqa: E731
    return {
        "best_trial": "abc123",
        "best_trial_val_accuracy": 0.4321,
        "params": {"lr": 0.00123, "batch_size": 32},
        "metric": "val_accuracy",
        "mode": "max",
        "retrain_epochs": 3,
        "trials": {"total": 9, "completed": 5, "stopped_asha": 3, "stopped_time": 0, "failed": 1},
        "per_dataset": {
            "data": {"val": {"accuracy": 0.6011, "balanced_accuracy": 0.5522, "macro_f1": 0.5433}}
        },
        "eval_data": {
            "elsewhere": {
                "split": "test",
                "images": 77,
                "accuracy": 0.3111,
                "balanced_accuracy": 0.3222,
                "macro_f1": 0.3333,
                "left_out": {},
            }
        },
        "calibration": {
            "temperature": 1.7,
            "fitted_on": "val",
            "split": "test",
            "bins": 15,
            "before": {"ece": 0.0987, "nll": 1.2345},
            "after": {"ece": 0.0456, "nll": 1.1111},
        },
        **{
            f"{sp}_{k}": v
            for sp, base in (("val", 0.5), ("test", 0.2))
            for k, v in {
                "accuracy": base + 0.0123,
                "balanced_accuracy": base + 0.0234,
                "macro_f1": base + 0.0345,
                "samples": 28,
                "per_class_precision": per(base + 0.1),
                "per_class_recall": per(base + 0.2),
                "per_class_f1": per(base + 0.3),
                "support": {c: 4 for c in classes},
            }.items()
        },
    }


def header(card: str) -> dict:
    assert card.startswith("---\n"), card[:80]
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_words_every_input(checkpoint, demo_root):
    state = load_checkpoint(checkpoint)
    classes = list(state["class_names"])
    metrics, audit = fake_metrics(classes), audit_dataset(demo_root, img_size=32)
    latency = {
        "latency_ms": 1.2345,
        "latency_iqr_ms": [1.1111, 1.3333],
        "images_per_s": 4321.0,
        "threads": 3,
        "machine": "Test CPU 9000",
        "batches": {1: {}, 64: {}},
    }
    split = {
        "images": 28,
        "fp32": {"accuracy": 0.5123, "ece": 0.0611},
        "int8": {"accuracy": 0.5012, "ece": 0.0622},
    }
    int8 = {
        "splits": {"val": split},
        "latency": {"fp32": latency, "int8": {**latency, "latency_ms": 0.8765, "images_per_s": 6543.0}},
        "size_bytes": {"fp32": 4_000_000, "int8": 1_100_000},
        "quantization": {"how": "static QDQ"},
        "warning": None,
    }
    card = model_card(
        state, metrics=metrics, audit=audit, latency=latency, int8=int8, choice="Chosen for its val accuracy."
    )
    meta = header(card)
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    assert {"facial-expression-recognition", "timm", "onnx"} <= set(meta["tags"]) and meta[
        "license"
    ] == "other"
    assert meta["datasets"] == ["data"] and "base_model" not in meta  # trained from random weights
    results = meta["model-index"][0]["results"]
    scores = {
        (r["dataset"]["name"], r["dataset"]["split"], m["type"]): m["value"]
        for r in results
        for m in r["metrics"]
    }
    assert scores[("data", "val", "accuracy")] == 0.5123 and scores[("data", "test", "f1")] == 0.2345
    assert scores[("elsewhere", "test", "accuracy")] == 0.3111

    listed = re.findall(r"^\d+\. (\S+)$", card, re.M)
    assert listed == classes  # the classes in output order
    for sp, base in (("val", 0.5), ("test", 0.2)):
        for i, c in enumerate(classes):
            p, r, f = (f"{base + d + i / 1000:.4f}" for d in (0.1, 0.2, 0.3))
            assert f"| {c} | {p} | {r} | {f} | 4 |" in card, (sp, c)
    for figure in ("0.5123", "0.5234", "0.5345", "0.6011", "0.3333", "0.0987", "0.0456", "1.2345", "1.1111"):
        assert figure in card, figure
    assert "9 trials (5 completed, 3 stopped early by ASHA" in card and "`lr` = 0.00123" in card
    assert "Chosen for its val accuracy." in card and "temperature 1.7" in card
    assert (
        "Test CPU 9000, 3 threads: batch 1 1.23 ms" in card
        and "1.11-1.33" in card
        and "4321 images/s" in card
    )
    assert "| val accuracy | 0.5123 | 0.5012 |" in card and "| batch-1 latency, ms | 1.23 | 0.88 |" in card
    for line in summarize(
        audit
    ):  # the audit's findings (not its own run time), and its counts per split and class
        assert (line in card) != line.startswith("audit took"), line
    counts = audit["splits"]["train"]["class_counts"]
    assert (
        f"| train | {audit['splits']['train']['images']} | " + " | ".join(str(counts[c]) for c in classes)
        in card
    )
    assert "gray faces of 32 px" in card and "not an emotion" in card and "python sweeps/predict.py" in card


def test_missing_inputs_are_said_to_be_unknown(checkpoint):
    state = load_checkpoint(checkpoint)
    card = model_card(state)
    meta = header(card)
    val = state["history"][-1]["val_accuracy"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == round(val, 4)
    assert "training's own val evaluation" in card and f"Accuracy {val:.4f}" in card
    assert (
        "Counts per split and class: not known" in card
        and "Latency\n\nNot measured: run `python -m fer_core.apps.export" in card
    )
    assert "## Calibration\n\nNot known" in card and "not known (no audit was given)" in card
    assert "Not known to come from a sweep" in card
    assert "| not recorded | " in card  # precision per class: training records recall alone


def test_hub_folder_matches_the_checkpoint(checkpoint, demo_root, tmp_path, capsys):
    out = tmp_path / "hub"
    assert main([str(checkpoint), "--hub", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nothing was uploaded" in printed and "huggingface-cli upload" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.onnx",
        "model.safetensors",
    ]
    assert not checkpoint.with_suffix(".onnx").exists()  # the ONNX file went into the folder alone
    assert (out / "README.md").read_text() == hub_card(checkpoint)

    model, pre, classes, state = load_model(checkpoint, resolve_runtime("cpu", channels_last="off"))
    images = np.ascontiguousarray(load_split(demo_root, "val", pre.img_size, pre.grayscale).images[:6])
    x = pre(torch.from_numpy(images))
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == classes and config["fer_core"]["temperature"] == 1.7
    assert config["pretrained_cfg"]["input_size"] == [3, pre.img_size, pre.img_size]
    hub_model = timm.create_model(config["architecture"], num_classes=config["num_classes"])
    hub_model.load_state_dict(load_file(out / "model.safetensors"))
    local = timm.create_model(f"local-dir:{out}", pretrained=True)
    raw = timm.create_model(config["architecture"], num_classes=config["num_classes"])
    raw.load_state_dict(state["model"])
    with torch.inference_mode():
        expected = model(x)
        for m in (hub_model, local):
            assert (m.eval()(x) - expected).abs().max() < 1e-5
        assert (raw.eval()(x) - expected).abs().max() > 1e-3  # the EMA weights were written, not the raw ones

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"images": images})[0]
    assert np.abs(probs - tempered_softmax(expected, 1.7).numpy()).max() < 1e-4


@pytest.fixture(scope="module")
def rgb_checkpoint(demo_root, tmp_path_factory):
    return export_ready_checkpoint(demo_root, tmp_path_factory.mktemp("card-rgb") / "run", grayscale=False)


@pytest.mark.parametrize("colour", ["gray", "rgb"])
def test_the_cards_onnxruntime_snippet_runs(colour, request, demo_root, tmp_path):
    checkpoint = request.getfixturevalue("checkpoint" if colour == "gray" else "rgb_checkpoint")
    out = tmp_path / "hub"
    assert main([str(checkpoint), "--hub", str(out)]) == 0
    snippet = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    face = next((demo_root / "val").glob("*/*.png"))
    Image.open(face).convert("RGB").resize((80, 80)).save(out / "face.jpg")  # a colour photo of another size
    run = subprocess.run(
        [sys.executable, "-c", snippet], cwd=out, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    name, p = run.stdout.split()
    assert name in load_checkpoint(checkpoint)["class_names"] and 0 < float(p) <= 1


def test_a_report_folders_card_is_the_readme(checkpoint, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    shutil.copy(checkpoint, report / "best.pt")
    metrics = fake_metrics(load_checkpoint(checkpoint)["class_names"])
    (report / "metrics.json").write_text(json.dumps(metrics))
    assert "0.0987" in hub_card(report / "best.pt")  # metrics.json beside the checkpoint is read
    (report / "model_card.md").write_text("the sweep's own card\n")
    assert hub_card(report / "best.pt") == "the sweep's own card\n"


def test_a_non_empty_folder_and_a_bad_checkpoint_are_refused_in_one_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "hub"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main([str(checkpoint), "--hub", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--hub" in err and "--overwrite" in err, err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main([str(junk), "--hub", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.pt" in err and not (tmp_path / "new").exists(), err
