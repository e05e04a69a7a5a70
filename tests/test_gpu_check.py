"""The GPU check on CPU: its packed data, the Trainer built from it, and runs that end, or are stopped, with
every result line complete."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fer_core.decode_cache import load_split
from fer_core.errors import DataError
from fer_core.tools.gpu_pack import load_packed, pack
from fer_core.tools.gpu_trial import trial_config
from fer_core.trainer import Trainer

from .conftest import REPO

STAGES = {"step", "e2e", "share", "compile"}
# The bare GPU machine has none of these: the check must run without them.
BLOCKED = ("albumentations", "ray", "optuna")
RUN = (
    "import runpy, sys\n"
    f"sys.modules.update(dict.fromkeys({BLOCKED!r}))\n"
    "runpy.run_module('fer_core.tools.gpu_check', run_name='__main__', alter_sys=True)\n"
)


@pytest.fixture(scope="module")
def packed(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "demo-48.npz"
    pack(demo_root, out)
    return out


def check_cmd(packed: Path, out: Path, budget: float, *extra: str) -> list[str]:
    return [sys.executable, "-c", RUN, "--device", "cpu", "--budget", str(budget), "--out", str(out)] + [
        "--data",
        str(packed),
        *extra,
    ]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO))


def read_lines(out: Path) -> list[dict]:
    """Every line of results.jsonl, each of which must be a complete JSON object naming its result."""
    lines = [json.loads(t) for t in (out / "results.jsonl").read_text().splitlines()]
    assert all("name" in ln for ln in lines)
    return lines


def check_results(lines: list[dict], stages: set[str]) -> None:
    """Each stage asked for has lines; each line measured (images/s > 0) or says why not; no errors."""
    assert lines[0]["name"] == "env" and lines[-1]["name"] == "done"
    results = lines[1:-1]
    assert {ln["name"] for ln in results} == stages
    for ln in results:
        assert "error" not in ln, ln
        assert ln.get("skipped") or ln["images_per_s"] > 0, ln
        assert ln["device"] and ln["settings"]


def test_pack_round_trip_and_subset(demo_root, packed, tmp_path):
    train, val = load_packed(packed)
    for split, got in (("train", train), ("val", val)):
        want = load_split(demo_root, split, img_size=48)
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.classes == want.classes
    big, _ = load_packed(packed, img_size=96)
    assert big.images.shape == (len(train), 96, 96) and big.images.dtype == np.uint8
    # Resized from the 48 px images (bilinear): the mean grey level stays.
    assert abs(float(big.images.mean()) - float(train.images.mean())) < 1.0

    limit = int(packed.stat().st_size * 0.85)
    got = pack(demo_root, tmp_path / "small.npz", max_bytes=limit)
    assert got["bytes"] <= limit and got["train"] < got["train_total"] == len(train)
    small_train, small_val = load_packed(tmp_path / "small.npz")
    assert len(small_val) == len(val)  # val is kept whole
    assert set(small_train.labels) == set(train.labels)  # the subset is stratified: every class kept


def test_bad_packed_files_are_named(tmp_path):
    with pytest.raises(DataError, match="missing.npz: packed data not found"):
        load_packed(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="bad.npz: not a packed data file"):
        load_packed(tmp_path / "bad.npz")


def test_trainer_trains_on_packed_splits(packed):
    splits = load_packed(packed)
    cfg = trial_config("cpu", 48, 8, augment_backend="torch", steps_per_epoch=2, threads=1)
    trainer = Trainer(cfg, splits=splits)
    assert trainer.train_data is splits[0] and trainer.class_names == list(splits[0].classes)
    row = trainer.train_pass(max_steps=2)
    assert row["train_steps"] == 2 and math.isfinite(row["train_loss"])
    with pytest.raises(
        DataError, match=r"splits: the train images are \(48, 48\) but the config asks for \(64, 64\)"
    ):
        Trainer(trial_config("cpu", 64, 8, augment_backend="torch", threads=1), splits=splits)


def test_cpu_run_without_albumentations_ray_optuna(packed, tmp_path):
    out = tmp_path / "out"
    cmd = check_cmd(packed, out, 20, "--stages", "step,e2e")
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_lines(out)
    assert [json.loads(t) for t in proc.stdout.splitlines()] == lines  # stdout carries the same lines
    check_results(lines, {"step", "e2e"})
    measured = {(ln["name"], ln["settings"].get("augment_backend")) for ln in lines if "images_per_s" in ln}
    assert ("step", None) in measured and ("e2e", "torch") in measured
    skipped = [ln for ln in lines if ln.get("settings", {}).get("augment_backend") == "albumentations"]
    assert skipped and all(ln["skipped"] == "albumentations is not installed" for ln in skipped)


@pytest.mark.slow
def test_cpu_run_of_every_stage(packed, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(check_cmd(packed, out, 90), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_lines(out)
    check_results(lines, STAGES)
    shared = [ln for ln in lines if ln["name"] == "share" and "images_per_s" in ln]
    assert shared, "no share measurement fitted the budget"
    for ln in shared:
        assert len(ln["per_process"]) == ln["settings"]["processes"]
        assert ln["images_per_s"] == pytest.approx(sum(ln["per_process"]), abs=0.2)


@pytest.mark.slow
def test_sigterm_leaves_complete_lines(packed, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        check_cmd(packed, out, 120), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and '"name": "step"' in results.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()[-3000:]
    lines = read_lines(out)
    assert lines[0]["name"] == "env" and any("images_per_s" in ln for ln in lines)
    assert lines[-1] == {"name": "stopped", "device": lines[0]["device"], "reason": "SIGTERM"}


def test_bad_data_or_out_is_one_line_and_exit_2(demo_root, packed, tmp_path, capsys):
    from fer_core.tools.gpu_check import main

    (tmp_path / "notes.txt").write_text("not packed data\n")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "taken").write_text("a file where the results folder should go\n")
    cases = {
        "notes.txt: not a packed data file": ["--data", str(tmp_path / "notes.txt")],
        "missing.npz: packed data not found": ["--data", str(tmp_path / "missing.npz")],
        "plain.npy: not a packed data file": ["--data", str(tmp_path / "plain.npy")],
        f"{demo_root}: is a folder": ["--data", str(demo_root)],
        "taken: --out is a file": ["--data", str(packed)],
    }
    for expected, data in cases.items():
        out = tmp_path / ("taken" if "taken" in expected else "out")
        with pytest.raises(SystemExit) as stop:
            main(["--device", "cpu", "--budget", "5", "--out", str(out), *data])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (expected, err)
        assert expected in err, err
        assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(SystemExit) as stop:
        main(["pack", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.npz")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "nowhere" in err, err
