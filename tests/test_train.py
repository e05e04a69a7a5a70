"""The train function end to end on the small demo set: outputs, report callback, resume, CLIs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fer_core.checkpoint import load_checkpoint, save_checkpoint
from fer_core.errors import CheckpointError
from fer_core.evaluate import evaluate_checkpoint
from fer_core.train import main as train_main
from fer_core.train import train

from .conftest import REPO, tiny_config


class Stop(Exception):
    pass


def test_train_writes_everything_and_reports(demo_root, tmp_path):
    calls = []
    result = train(tiny_config(demo_root, tmp_path / "run"), report=lambda row, d: calls.append((row, d)))
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and [c[0]["epoch"] for c in calls] == [1, 2]
    for key in (
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
        "val_macro_f1",
        "val_balanced_accuracy",
        "epoch_seconds",
        "images_per_s",
    ):
        assert all(isinstance(r[key], float) for r in rows), key
    assert set(rows[0]["val_per_class_recall"]) == {
        "angry",
        "disgust",
        "fear",
        "happy",
        "neutral",
        "sad",
        "surprise",
    }
    assert rows[0]["train_images"] == 24  # 3 steps x batch 8: accuracy is over these samples
    assert calls[0][1] == out / "checkpoints" and (out / "checkpoints" / "best.pt").exists()
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "best_metric",
        "config",
        "class_names",
        "preprocess",
        "history",
    ):
        assert key in state
    assert state["epoch"] == 2 and state["class_names"][1] == "disgust" and state["config"]["img_size"] == 32
    assert result["best_metric"] == max(r["val_accuracy"] for r in rows)
    best = json.loads((out / "best_val_metrics.json").read_text())
    assert len(best["val_confusion_matrix"]) == 7


def test_without_kept_checkpoints_each_lives_until_reported_and_none_is_left(demo_root, tmp_path):
    """keep_checkpoints off (sweep trials): the callback sees each epoch's last.pt, no best.pt is written,
    train() removes the file once reported (also when the callback stops training) and returns no path."""
    seen = []

    def report(row, d):
        seen.append(sorted(p.name for p in d.iterdir()))
        if row["epoch"] == 2:
            raise Stop

    ckpt = tmp_path / "run" / "checkpoints"
    with pytest.raises(Stop):
        train(tiny_config(demo_root, tmp_path / "run", epochs=3, keep_checkpoints=False), report=report)
    assert seen == [["last.pt"], ["last.pt"]] and list(ckpt.iterdir()) == []
    result = train(
        tiny_config(demo_root, tmp_path / "run2", epochs=1, keep_checkpoints=False), report=lambda r, d: None
    )
    assert result["last_checkpoint"] is None and result["best_checkpoint"] is None and result["epochs"] == 1
    kept = train(tiny_config(demo_root, tmp_path / "run3", epochs=1))
    assert all(Path(kept[f"{k}_checkpoint"]).is_file() for k in ("best", "last"))


@pytest.mark.parametrize(
    "extra",
    [{}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "mix_prob": 0.8, "ema_decay": 0.9}],
    ids=["plain", "mix+ema"],
)
def test_resume_continues_exactly(demo_root, tmp_path, extra):
    """Stop after epoch 1 of 3 (an exception from the report callback), resume, compare with an uninterrupted run.
    With mixup/CutMix and EMA on, their randomness and the average must resume exactly too."""
    cfg = tiny_config(demo_root, tmp_path / "a", epochs=3, aug_strength=0.5, drop_path_rate=0.1, **extra)
    full = train(cfg)

    def stop_after_first(row, ckpt_dir):
        if row["epoch"] == 1:
            raise Stop

    cfg_b = dict(cfg, out=str(tmp_path / "b"))
    with pytest.raises(Stop):
        train(cfg_b, report=stop_after_first)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["epoch"] == 1  # nothing done was lost
    resumed = train(cfg_b, resume_from=tmp_path / "b" / "checkpoints" / "last.pt")
    rows = [json.loads(line) for line in (tmp_path / "b" / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    if extra:
        ea = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["ema"]
        eb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["ema"]
        assert ea["updates"] == eb["updates"] == 9
        for k in ea["module"]:
            assert torch.equal(ea["module"][k], eb["module"][k]), k
    assert [r["val_loss"] for r in full["history"]] == [r["val_loss"] for r in resumed["history"]]


def test_resume_refuses_a_changed_config(demo_root, tmp_path):
    train(tiny_config(demo_root, tmp_path / "r", epochs=1))
    with pytest.raises(CheckpointError, match="cannot resume, 'batch_size' was 8 and is now 4"):
        train(
            tiny_config(demo_root, tmp_path / "r", epochs=1, batch_size=4),
            resume_from=tmp_path / "r" / "checkpoints" / "last.pt",
        )


def _resume_cli(cfg: dict, tmp_path, *keys: str) -> int:
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    return train_main(["--resume", "--config", str(tmp_path / "c.yaml"), *keys])


def test_resume_refuses_a_changed_lr_and_leaves_a_finished_run_alone(demo_root, tmp_path, capsys):
    """The restored optimizer and schedule keep the checkpoint's lr, so a changed lr is refused in one line;
    resuming a finished run (with a key that may change) leaves its config.yaml as it trained."""
    cfg = tiny_config(demo_root, tmp_path / "r", epochs=1)
    train(cfg)
    written = (tmp_path / "r" / "config.yaml").read_text()
    capsys.readouterr()
    assert _resume_cli(cfg, tmp_path, "lr=0.5") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot resume, 'lr' was 0.001 and is now 0.5" in err
    assert _resume_cli(cfg, tmp_path, "num_workers=0", "keep_checkpoints=false") == 0
    assert (tmp_path / "r" / "config.yaml").read_text() == written


def test_resume_without_a_saved_checkpoint_says_it_starts_again(demo_root, tmp_path, capsys):
    """Killed after its epoch row and before its first last.pt: --resume says it trains from epoch 1."""
    cfg = tiny_config(demo_root, tmp_path / "k", epochs=1)
    train(cfg)
    (tmp_path / "k" / "checkpoints" / "last.pt").unlink()
    assert _resume_cli(cfg, tmp_path) == 0
    assert (
        "was never saved" in capsys.readouterr().err
        and load_checkpoint(tmp_path / "k" / "checkpoints" / "last.pt")["epoch"] == 1
    )


def test_resume_refuses_a_changed_preprocessing(demo_root, tmp_path):
    # Config keys alone do not pin the input: the normalisation comes from the model's weights too.
    train(tiny_config(demo_root, tmp_path / "p", epochs=1, normalize="weights"))
    last = tmp_path / "p" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["preprocess"]["mean"] = [0.25, 0.25, 0.25]
    save_checkpoint(state, last)
    with pytest.raises(CheckpointError, match=r"cannot resume, the input preprocessing was .*'mean': \[0.25"):
        train(tiny_config(demo_root, tmp_path / "p", epochs=1, normalize="weights"), resume_from=last)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "x.pt"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="x.pt: not a readable checkpoint"):
        load_checkpoint(junk)
    torch.save({"a": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="not a fer_core checkpoint"):
        load_checkpoint(tmp_path / "sd.pt")


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three CLI processes (train, evaluate twice): ~20 s
def test_cli_train_then_evaluate(demo_root, tmp_path):
    out = tmp_path / "cli"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("img_size: 32\nbatch_size: 8\nsteps_per_epoch: 2\neval_batch_size: 64\n")
    r = _cli(
        "-m",
        "fer_core.train",
        "--data",
        str(demo_root),
        "--epochs",
        "1",
        "--out",
        str(out),
        "--config",
        str(cfg),
        "lr=1e-3",
    )
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" in r.stdout and "done: best val_accuracy" in r.stdout
    r = _cli(
        "-m",
        "fer_core.evaluate",
        str(out / "checkpoints" / "best.pt"),
        "--data",
        str(demo_root),
        "--split",
        "test",
    )
    assert r.returncode == 0, r.stderr
    saved = json.loads((out / "checkpoints" / "test_metrics.json").read_text())
    assert saved["test_samples"] == 28 and "disgust" in r.stdout and len(saved["test_confusion_matrix"]) == 7
    m = evaluate_checkpoint(out / "checkpoints" / "best.pt", str(demo_root), "test")
    assert m["test_accuracy"] == saved["test_accuracy"]
    r = _cli(
        "-m",
        "fer_core.evaluate",
        str(out / "checkpoints" / "best.pt"),
        "--data",
        str(demo_root),
        "--batch-size",
        "-1",
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --batch-size = -1; give a positive size, or 0 for the device's default"
    ]


def test_cli_help_lists_every_key():
    from fer_core.config import FIELDS

    r = _cli("-m", "fer_core.train", "--help")
    assert r.returncode == 0
    for key in FIELDS:
        assert f"  {key}=" in r.stdout, key


@pytest.mark.slow  # two CLI processes: ~13 s (the messages themselves: tests/test_config.py)
def test_cli_bad_input_is_one_line(tmp_path):
    r = _cli(
        "-m",
        "fer_core.train",
        "--data",
        str(tmp_path / "missing"),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "dataset folder not found" in r.stderr
    r = _cli("-m", "fer_core.train", "--data", str(tmp_path), "lr=abc")
    assert r.returncode == 2 and "key 'lr' must be a number" in r.stderr
