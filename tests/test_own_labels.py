"""A sweep on a dataset with its own label set and no split, end to end: plan, record, report, predict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from fer_core.apps.demo import make_demo_dataset

from .conftest import REPO
from .sweep_utils import run_sweep

# Another dataset's names for some demo classes (no disgust, no neutral), and one class the demo lacks.
FOLDERS = {"anger": "angry", "joy": "happy", "sadness": "sad", "surprised": "surprise", "pain": "fear"}


@pytest.mark.slow
def test_a_sweep_on_own_labels_without_a_split_reports_and_predicts_them(tmp_path):
    demo = make_demo_dataset(
        tmp_path / "demo", train_per_class=12, val_per_class=4, test_per_class=4, img_size=32
    )
    root = tmp_path / "mine"
    for mine, theirs in FOLDERS.items():
        (root / mine).mkdir(parents=True)
        files = [f for sp in ("train", "val", "test") for f in sorted((demo / sp / theirs).iterdir())]
        for i, f in enumerate(files):  # a "person" per 4 images, as frames of one sequence
            shutil.copy(f, root / mine / f"P{i // 4:02d}_{i % 4}.png")
    storage = tmp_path / "runs"
    r = run_sweep(
        storage,
        "mine",
        "--data",
        str(root),
        "num_samples=2",
        "classes={pain: [pain], sad: [sadness], happy: joy, anger: anger, surprise: surprised}",
        "split={val: 0.25, test: 0.25, seed: 1}",
        "group=^(P\\d+)_",
        f"eval_data=[{demo}]",
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    classes = ["pain", "sad", "happy", "anger", "surprise"]
    assert f"data: classes (5): {', '.join(classes)}" in r.stdout
    assert "split here (val 0.25, test 0.25, seed 1, group '^(P\\\\d+)_')" in r.stdout
    exp = storage / "mine"
    record = json.loads((exp / "fer_data.json").read_text())
    assert record["classes"] == classes
    files = record["split_files"]
    for split in ("train", "val", "test"):
        people = {p.split("/")[-1][:3] for p, _ in files[split]["mine"]}
        others = {p.split("/")[-1][:3] for s in files if s != split for p, _ in files[s]["mine"]}
        assert people and not people & others, split  # each person in one split
    report = exp / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["classes"] == classes and set(metrics["val_support"]) == set(classes)
    assert "test_accuracy" in metrics  # the test split made here is scored
    md = (report / "report.md").read_text()
    assert "classes `pain, sad, happy, anger, surprise`" in md and "### Other datasets (eval_data)" in md
    other = metrics["eval_data"]["demo"]  # FER names: angry is anger, fear is not pain
    assert other["split"] == "test" and set(other["left_out"]) == {"disgust", "fear", "neutral"}
    assert other["images"] == 4 * 4 and 0 <= other["accuracy"] <= 1
    crops = tmp_path / "crops"
    crops.mkdir()
    for f in sorted((root / "joy").iterdir())[:2]:
        shutil.copy(f, crops / f.name)
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "sweeps" / "predict.py"),
            str(exp),
            str(crops),
            "--no-plots",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert all(c in p.stdout for c in classes), p.stdout
    assert not any(c in p.stdout for c in ("disgust", "neutral")), p.stdout
