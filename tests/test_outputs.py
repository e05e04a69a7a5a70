"""Where commands may write (docs/guarantees.md, "Finished work is never overwritten"): no output replaces a
checkpoint, a run's files, a dataset or the command's own input, or lands inside a dataset; and a
``dedupe: cross_split`` that would leave a class without training images is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from fer_core.checkpoint import load_checkpoint
from fer_core.config import make_config
from fer_core.data import scan_split
from fer_core.errors import FerError
from fer_core.train import train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory):
    """A finished one-epoch run (read-only for tests: copy it to change it)."""
    out = tmp_path_factory.mktemp("outputs") / "run"
    train(tiny_config(demo_root, out, epochs=1, steps_per_epoch=1, audit=False))
    return out


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A private copy of the run that a test may see overwritten."""
    return shutil.copytree(run_dir, tmp_path / "other_run")


def _refused(capsys, code: int, *words: str) -> str:
    """The command exited 2 with one line ``error: ...`` holding ``words``; returns that line."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- export --onnx ------------------------------------------------------------------------------------------


def test_export_never_writes_the_onnx_over_its_own_checkpoint(run_copy, capsys):
    from fer_core.apps.export import main as export_main

    ckpt = run_copy / "checkpoints" / "best.pt"
    before = _snapshot(run_copy)
    for extra in ([], ["--overwrite"]):  # its own input: not even when told to overwrite
        line = _refused(capsys, export_main([str(ckpt), "--onnx", str(ckpt), *extra]), "--onnx", "input")
        assert "wrote" not in line
    assert _snapshot(run_copy) == before
    assert load_checkpoint(ckpt)["epoch"] == 1


def test_export_over_another_checkpoint_needs_overwrite(run_dir, run_copy, capsys):
    from fer_core.apps.export import main as export_main

    ckpt, target = run_dir / "checkpoints" / "best.pt", run_copy / "checkpoints" / "last.pt"
    before = target.read_bytes()
    _refused(
        capsys, export_main([str(ckpt), "--onnx", str(target)]), str(target), "checkpoint", "--overwrite"
    )
    assert target.read_bytes() == before
    assert export_main([str(ckpt), "--onnx", str(target), "--overwrite"]) == 0  # asked for
    assert target.read_bytes() != before and "wrote" in capsys.readouterr().out


# -- audit --out --------------------------------------------------------------------------------------------


def test_audit_never_writes_inside_the_dataset(demo_copy, tmp_path, capsys):
    from fer_core.audit import main as audit_main

    image = sorted((demo_copy / "train" / "happy").iterdir())[0]
    before = _snapshot(demo_copy)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    for out in (image, demo_copy / "audit.json", demo_copy / "val" / "findings.json"):
        for extra in ([], ["--overwrite"]):
            _refused(
                capsys, audit_main([str(demo_copy), "--out", str(out), *cache, *extra]), "--out", "dataset"
            )
    assert _snapshot(demo_copy) == before
    scan_split(demo_copy, "train")  # still a valid dataset


def test_audit_over_a_run_needs_overwrite(demo_root, run_copy, tmp_path, capsys):
    from fer_core.audit import main as audit_main

    cache = ["--cache-dir", str(tmp_path / "cache")]
    before = _snapshot(run_copy)
    for target in (run_copy / "checkpoints" / "last.pt", run_copy / "epochs.jsonl"):
        code = audit_main([str(demo_root), "--out", str(target), *cache])
        _refused(capsys, code, str(target), "--overwrite")
    assert _snapshot(run_copy) == before
    target = run_copy / "epochs.jsonl"
    assert audit_main([str(demo_root), "--out", str(target), "--overwrite", *cache]) == 0
    assert "splits" in json.loads(target.read_text())


# -- train --out --------------------------------------------------------------------------------------------


def test_train_never_writes_inside_the_dataset(demo_copy, capsys):
    from fer_core.train import main as train_main

    before = _snapshot(demo_copy)
    args = ["--data", str(demo_copy), "--epochs", "1", "img_size=32", "batch_size=8", "steps_per_epoch=1"]
    for out in (demo_copy / "train", demo_copy, demo_copy / "val" / "happy" / "run"):
        for extra in ([], ["--overwrite"]):
            _refused(capsys, train_main([*args, "--out", str(out), *extra]), "--out", "dataset")
    assert _snapshot(demo_copy) == before and not (demo_copy / "train" / "checkpoints").exists()
    scan_split(demo_copy, "train")


def test_train_overwrite_never_deletes_its_own_weights_file(demo_root, run_copy, capsys):
    from fer_core.train import main as train_main

    weights = run_copy / "checkpoints" / "best.pt"
    before = _snapshot(run_copy)
    code = train_main(
        ["--data", str(demo_root), "--out", str(run_copy), "--overwrite", f"weights={weights}", "img_size=32"]
    )
    _refused(capsys, code, str(weights))
    assert _snapshot(run_copy) == before


# -- evaluate --out and predict --out -----------------------------------------------------------------------


def test_evaluate_out_follows_the_same_rule(run_dir, run_copy, demo_copy, capsys):
    from fer_core.evaluate import main as evaluate_main

    ckpt = run_copy / "checkpoints" / "best.pt"
    before, data_before = _snapshot(run_copy), _snapshot(demo_copy)
    args = [str(ckpt), "--data", str(demo_copy), "--device", "cpu"]
    _refused(capsys, evaluate_main([*args, "--out", str(ckpt)]), "input")
    _refused(capsys, evaluate_main([*args, "--out", str(demo_copy / "val" / "m.json")]), "dataset")
    _refused(capsys, evaluate_main([*args, "--out", str(run_copy / "best_val_metrics.json")]), "--overwrite")
    assert _snapshot(run_copy) == before and _snapshot(demo_copy) == data_before
    target = run_copy / "best_val_metrics.json"
    assert evaluate_main([*args, "--out", str(target), "--overwrite"]) == 0
    assert "val_accuracy" in json.loads(target.read_text())


def test_predict_never_writes_inside_a_dataset(run_dir, demo_copy, capsys):
    from sweeps.predict import main as predict_main

    crop = sorted((demo_copy / "val" / "happy").iterdir())[0]
    before = _snapshot(demo_copy)
    for out in (demo_copy / "preds", demo_copy / "val" / "happy"):
        code = predict_main(
            [str(run_dir), str(crop), "--out", str(out), "--no-face-detect", "--device", "cpu"]
        )
        _refused(capsys, code, "--out", "dataset")
    assert _snapshot(demo_copy) == before and not (demo_copy / "preds").exists()


# -- the rule itself ----------------------------------------------------------------------------------------


def test_check_output_allows_ordinary_outputs_and_sees_through_links(run_dir, demo_root, tmp_path):
    from fer_core.outputs import check_output

    check_output(tmp_path / "new.json")
    (tmp_path / "old.json").write_text("{}")
    check_output(tmp_path / "old.json")  # an earlier output of one's own: replaced as before
    check_output(run_dir / "checkpoints" / "test_metrics.json")  # evaluate's default, beside the checkpoints
    check_output(run_dir / "notes.txt")  # a new file in a run folder is not a run's file
    check_output(demo_root.parent / "elsewhere.json")  # beside a dataset, not inside it
    link = tmp_path / "link.pt"
    link.symlink_to(run_dir / "checkpoints" / "best.pt")
    with pytest.raises(FerError, match="input"):
        check_output(tmp_path / "link.pt", inputs=[run_dir / "checkpoints" / "best.pt"], overwrite=True)
    (tmp_path / "data_link").symlink_to(demo_root)
    with pytest.raises(FerError, match="dataset"):
        check_output(tmp_path / "data_link" / "train" / "x.json")


def test_a_dataset_of_any_class_names_is_recognised(tmp_path):
    from fer_core.outputs import check_output, is_dataset_root

    def images(folder, n=2):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{i}.png").write_bytes(b"not decoded here")

    split = tmp_path / "sentiment"
    for sp in ("train", "val"):
        for c in ("negative", "positive"):
            images(split / sp / c)
    flat = tmp_path / "affect"  # class folders of images, no splits
    for c in ("Anger", "Happy", "Sad"):
        images(flat / c)
    assert is_dataset_root(split) and is_dataset_root(flat)
    for inside in (
        split / "preds",
        split / "train" / "positive" / "x.png",
        flat / "out.json",
        flat / "Happy" / "p",
    ):
        with pytest.raises(FerError, match="inside the dataset"):
            check_output(inside)

    # Not datasets: a photo album (images beside its folders), a predict --out folder mirroring its input's
    # folders (predictions.csv beside them), a folder with one image folder, a folder of non-image folders.
    album = tmp_path / "album"
    for c in ("2024", "2025"):
        images(album / c)
    images(album, 1)
    preds = tmp_path / "preds"
    for c in ("Anger", "Happy"):
        images(preds / c)
    (preds / "predictions.csv").write_text("path\n")
    one = tmp_path / "one"
    images(one / "only")
    runs = tmp_path / "runs"
    for c in ("a", "b"):
        (runs / c).mkdir(parents=True)
        (runs / c / "notes.txt").write_text("")
    for folder in (album, preds, one, runs, tmp_path):
        assert not is_dataset_root(folder), folder
        check_output(folder / "new.json")


# -- dedupe: cross_split ------------------------------------------------------------------------------------


def test_cross_split_dedupe_that_empties_a_class_is_refused(demo_copy, tmp_path):
    from fer_core.trainer import Trainer

    shutil.rmtree(demo_copy / "val")
    shutil.copytree(demo_copy / "train", demo_copy / "val")  # val is a copy of train
    cfg = make_config(tiny_config(demo_copy, tmp_path / "run", dedupe="cross_split", audit=False))
    with pytest.raises(FerError) as e:
        Trainer(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "dedupe" in msg and "angry" in msg and "surprise" in msg, msg
    assert "dedupe: none" in msg and "overlap" in msg, msg


def test_a_flag_and_a_key_for_the_same_setting_must_agree(demo_root, tmp_path, capsys):
    """`--epochs 1 epochs=true` took the flag and never checked the value; now both are checked, and two
    different values for one setting are refused in one line naming both."""
    from fer_core.train import main as train_main

    out = str(tmp_path / "run")
    assert train_main(["--data", str(demo_root), "--out", out, "--epochs", "1", "epochs=true"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert train_main(["--data", str(demo_root), "--out", out, "--epochs", "1", "epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --epochs 1 and epochs=2") and "\n" not in err
    assert not (tmp_path / "run").exists()
