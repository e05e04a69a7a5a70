"""What the project guarantees about bad input and broken results (issue 13): non-finite settings are
refused, a diverged model is never saved as best nor used, finished work is never overwritten, and every
such case is one line naming the file or key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fer_core.checkpoint import load_checkpoint, save_checkpoint
from fer_core.config import make_config
from fer_core.errors import DataError, DivergedError, FerError
from fer_core.evaluate import evaluate_checkpoint
from fer_core.train import check_out_folder, train
from fer_core.trainer import Trainer

from .conftest import REPO, tiny_config


@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory):
    """A run of 2 epochs stopped after the first (read-only for tests: copy it to change it)."""
    out = tmp_path_factory.mktemp("guarantees") / "run"

    def stop(row, ckpt_dir):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(demo_root, out, epochs=2, steps_per_epoch=1, audit=False), report=stop)
    return out


@pytest.fixture(scope="module")
def nan_checkpoint(run_dir):
    """The run's best.pt with one NaN weight, as a diverged run would have written it."""
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    state["model"]["classifier.weight"][0, 0] = float("nan")
    return save_checkpoint(state, run_dir.parent / "nan.pt")


def _cli(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


# -- 1. non-finite settings ---------------------------------------------------------------------------------


@pytest.mark.slow  # three CLI processes: ~17 s (the checks themselves: test_config.py, test_sweep_config.py)
def test_cli_refuses_nan_settings_before_anything_runs(demo_root, tmp_path):
    """Before: lr=nan ended in a traceback, weight_decay=nan trained and saved a NaN model as best."""
    for setting in ("lr=nan", "weight_decay=inf"):
        r = _cli("-m", "fer_core.train", "--data", str(demo_root), "--out", str(tmp_path / "o"), setting)
        key = setting.split("=")[0]
        assert r.returncode == 2 and f"command line: key '{key}' must be a finite number" in _one_error_line(
            r.stderr
        )
    assert not (tmp_path / "o").exists()  # nothing ran
    r = _cli("sweeps/run.py", "--storage", str(tmp_path / "s"), "weight_decay=nan")
    assert r.returncode == 2 and "key 'weight_decay' must be a finite number" in _one_error_line(r.stderr)


# -- 2. a broken model never passes for a good one ----------------------------------------------------------


def test_a_diverged_epoch_is_never_saved(run_dir, demo_root, tmp_path):
    """Resume a run whose optimizer state decays weights by NaN (what weight_decay=nan did): the step's loss
    is still finite, the weights are not. Before, that epoch's NaN model was written (and could be best.pt)."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    last = out / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["optimizer"]["param_groups"][0]["weight_decay"] = float("nan")
    save_checkpoint(state, last)
    with pytest.raises(DivergedError) as e:
        train(tiny_config(demo_root, out, epochs=2, steps_per_epoch=1, audit=False), resume_from=last)
    assert "epoch 2 diverged (non-finite weights" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, FloatingPointError)  # what a diverged loss raised before
    for name in ("last.pt", "best.pt"):  # the good epoch's files are what is left
        kept = load_checkpoint(out / "checkpoints" / name)
        assert kept["epoch"] == 1 and all(
            torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point()
        )
    assert len((out / "epochs.jsonl").read_text().splitlines()) == 1


def test_a_fresh_diverged_epoch_is_not_best(demo_root, tmp_path):
    trainer = Trainer(make_config(tiny_config(demo_root, tmp_path / "t", epochs=1, steps_per_epoch=1)))
    trainer.optimizer.param_groups[0]["weight_decay"] = float("nan")
    with pytest.raises(DivergedError):
        trainer.run_epoch()
    assert trainer.best is None and trainer.history == []


def test_nan_weights_are_refused_by_evaluate_predict_and_export(nan_checkpoint, demo_root, tmp_path, capsys):
    from fer_core.apps.export import main as export_main
    from fer_core.evaluate import main as evaluate_main
    from sweeps.predict import main as predict_main

    crop = sorted((demo_root / "val" / "happy").iterdir())[0]
    for run, argv in (
        (evaluate_main, [str(nan_checkpoint), "--data", str(demo_root), "--device", "cpu"]),
        (predict_main, [str(nan_checkpoint), str(crop), "--out", str(tmp_path / "p"), "--device", "cpu"]),
        (export_main, [str(nan_checkpoint), "--onnx", str(tmp_path / "m.onnx"), "--check"]),
    ):
        assert run(argv) == 2, run.__module__
        line = _one_error_line(capsys.readouterr().err)
        assert "nan.pt: 1 weight value(s) are NaN or infinite (first in 'classifier.weight')" in line, line
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "p").exists()


def test_export_check_fails_when_the_difference_is_not_finite(run_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    from fer_core.apps.export import check_onnx, export_onnx

    path = export_onnx(run_dir / "checkpoints" / "best.pt", tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    init = next(
        t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2
    )
    init.CopyFrom(
        numpy_helper.from_array(np.full(numpy_helper.to_array(init).shape, np.nan, np.float32), init.name)
    )
    onnx.save(proto, str(path))  # a broken export: NaN comes out of onnxruntime only
    with pytest.raises(
        FerError, match="onnxruntime gave NaN or infinite probabilities, so the difference is not finite"
    ):
        check_onnx(path, run_dir / "checkpoints" / "best.pt", bench_batch=0)


# -- 3. finished work is never overwritten ------------------------------------------------------------------


def test_train_cli_refuses_an_out_folder_that_holds_a_run(run_dir, demo_root, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = _cli(
        "-m",
        "fer_core.train",
        "--data",
        str(demo_root),
        "--out",
        str(out),
        "--epochs",
        "1",
        "img_size=32",
        "batch_size=8",
        "steps_per_epoch=1",
        "audit=false",
        "progress=false",
    )
    assert r.returncode == 2, r.stdout[-2000:]
    assert "holds a run already (checkpoints/last.pt, checkpoints/best.pt, epochs.jsonl" in _one_error_line(
        r.stderr
    )
    assert "--resume" in r.stderr and "--overwrite" in r.stderr
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}  # nothing touched
    with pytest.raises(FerError, match="contradict"):
        check_out_folder(out, resume=True, overwrite=True)
    check_out_folder(out, resume=True, overwrite=False)  # continuing it is fine
    (tmp_path / "f").write_text("x")
    with pytest.raises(FerError, match="--out is a file"):
        check_out_folder(tmp_path / "f", resume=False, overwrite=False)
    r = _cli(
        "-m",
        "fer_core.train",
        "--data",
        str(demo_root),
        "--out",
        str(out),
        "--epochs",
        "1",
        "img_size=32",
        "batch_size=8",
        "steps_per_epoch=1",
        "audit=false",
        "progress=false",
        "--overwrite",
    )
    assert r.returncode == 0, r.stderr[-2000:]  # asked for: a new run replaces the old one's files
    assert load_checkpoint(out / "checkpoints" / "last.pt")["config"]["epochs"] == 1
    assert len((out / "epochs.jsonl").read_text().splitlines()) == 1


def test_predict_outputs_never_overwrite_each_other(run_dir, demo_root, tmp_path, capsys):
    from sweeps.predict import main as predict_main

    src = Image.open(sorted((demo_root / "val" / "happy").iterdir())[0])
    inputs = [
        tmp_path / "a" / "face.jpg",
        tmp_path / "b" / "face.jpg",
        tmp_path / "face.png",
        tmp_path / "contact_sheet.jpg",
    ]
    for p in inputs:
        p.parent.mkdir(exist_ok=True)
        src.save(p)
    out = tmp_path / "out"
    assert (
        predict_main(
            [
                str(run_dir),
                *map(str, inputs),
                "--out",
                str(out),
                "--json",
                "--no-face-detect",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    pngs = [r["png"] for r in json.loads(capsys.readouterr().out)["images"]]
    assert len(set(pngs)) == 4 and str(out / "contact_sheet.png") not in pngs, pngs
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["contact_sheet.png", "predictions.csv", *(p.rsplit("/", 1)[1] for p in pngs)]
    )


def test_predict_out_problems_get_a_clear_answer(run_dir, demo_root, tmp_path, capsys):
    from sweeps.predict import main as predict_main

    crop = sorted((demo_root / "val" / "happy").iterdir())[0]
    (tmp_path / "file").write_text("x")
    assert predict_main([str(run_dir), str(crop), "--out", str(tmp_path / "file"), "--device", "cpu"]) == 2
    assert "--out is a file" in _one_error_line(capsys.readouterr().err)
    assert predict_main([str(run_dir), str(crop), "--batch-size", "0", "--device", "cpu"]) == 2
    assert "--batch-size = 0" in _one_error_line(capsys.readouterr().err)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(crop, out / "inside.png")
    assert predict_main([str(run_dir), str(out / "inside.png"), "--out", str(out), "--device", "cpu"]) == 2
    assert f"is inside the output folder {out}" in capsys.readouterr().err


# -- 6. what a killed process leaves behind -------------------------------------------------------------------


def test_a_killed_writers_temporary_checkpoints_are_removed_on_the_next_start(run_dir, demo_root, tmp_path):
    """A process killed inside save_checkpoint leaves its temporary file (up to a whole checkpoint) beside
    the target; before, nothing ever deleted it."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    ckpts = out / "checkpoints"
    stale = [ckpts / ".last.pt.q8x1m2", ckpts / ".best.pt.k1ll3d.tmp"]  # before and after the .tmp suffix
    for f in stale:
        f.write_bytes(b"half a checkpoint")
    train(
        tiny_config(demo_root, out, epochs=2, steps_per_epoch=1, audit=False), resume_from=ckpts / "last.pt"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 2


# -- 8. messages point at the right thing -------------------------------------------------------------------


def test_evaluate_names_a_class_mismatch_of_the_checkpoint(run_dir, demo_root, tmp_path):
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    other = [f"class{i}" for i in range(7)]
    save_checkpoint(dict(state, class_names=other), tmp_path / "other.pt")
    with pytest.raises(DataError) as e:  # not: "unexpected class folder 'angry'; rename or remove it"
        evaluate_checkpoint(tmp_path / "other.pt", str(demo_root), "val")
    assert "none of its folders (angry, disgust" in str(e.value) and "of the checkpoint (class0" in str(
        e.value
    )


def test_export_arguments_are_one_line_errors(run_dir, tmp_path, capsys):
    from fer_core.apps.export import main as export_main

    ckpt = str(run_dir / "checkpoints" / "best.pt")
    (tmp_path / "d").mkdir()
    for argv, words in (
        ([ckpt, "--onnx", str(tmp_path / "d") + "/"], "is a folder; give the file to write"),
        ([ckpt, "--onnx", str(tmp_path / "d")], "is a folder"),
        ([ckpt, "--onnx", str(tmp_path / "m.onnx"), "--check", "--batch-size", "0"], "--batch-size = 0"),
        ([ckpt, "--opset", "16"], "--opset = 16; this torch exports opsets 17 to 20"),
    ):
        assert export_main(argv) == 2
        assert words in _one_error_line(capsys.readouterr().err)
    assert list((tmp_path / "d").iterdir()) == [] and not (tmp_path / "m.onnx").exists()
