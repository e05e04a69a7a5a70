"""Any class set, datasets without splits, several datasets at once, and scoring on another dataset
(fer_core.datasets, the Trainer's per-dataset figures, fer_core.evaluate --data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fer_core.apps.demo import make_demo_dataset
from fer_core.checkpoint import load_checkpoint
from fer_core.config import TrainConfig, make_config
from fer_core.datasets import match_folders, resolve, split_indices
from fer_core.errors import ConfigError, DataError, FerError
from fer_core.evaluate import checkpoint_data
from fer_core.evaluate import main as evaluate_main
from fer_core.train import train
from tests.conftest import AFFECTNET7, FER2013, tiny_config

# The demo's folders renamed as another dataset names them (CK+-like: no neutral, "sadness"), plus a
# class the demo lacks; file names carry a subject, several images each.
RENAMED = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "sad": "sadness"}


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def flat(demo_root, tmp_path) -> Path:
    """A dataset with no split: class folders at its root, 18 images each, 6 subjects of 3 frames."""
    root = tmp_path / "ckplus"
    for src, dst in RENAMED.items():
        files = [f for sp in ("train", "val", "test") for f in sorted((demo_root / sp / src).iterdir())]
        (root / dst).mkdir(parents=True)
        for i, f in enumerate(files[:18]):
            shutil.copy(f, root / dst / f"S{i // 3:03d}_{dst}_{i % 3}.png")
    shutil.copytree(root / "fear", root / "contempt")  # an extra class (its images are fear's: only names)
    return root


def cfg(data, **kw) -> TrainConfig:
    return make_config({"data": data, **kw}, source="test")


def test_classes_are_the_folder_names_by_default_any_names(flat):
    d = resolve(cfg(str(flat)))
    assert d.classes == ("anger", "contempt", "disgust", "fear", "happiness", "sadness")
    assert d.splits == ("train", "val", "test")
    assert sum(d.count(s) for s in d.splits) == 6 * 18


def test_a_mapping_orders_merges_and_renames_and_exclude_drops(flat):
    d = resolve(
        cfg(
            str(flat),
            classes={"negative": ["anger", "disgust", "fear", "sadness"], "positive": "happiness"},
            exclude=["contempt"],
        )
    )
    assert d.classes == ("negative", "positive")
    labels = np.concatenate([np.asarray(d.files[s]["ckplus"].labels) for s in d.splits])
    assert np.bincount(labels).tolist() == [4 * 18, 18]
    assert d.aliases() == {"negative": ["anger", "disgust", "fear", "sadness"], "positive": ["happiness"]}


def test_the_split_is_stratified_seeded_and_keeps_a_group_in_one_split(flat):
    d = resolve(cfg(str(flat), split={"val": 0.2, "test": 0.2, "seed": 3}, group=r"^(S\d+)_"))
    again = resolve(cfg(str(flat), split={"val": 0.2, "test": 0.2, "seed": 3}, group=r"^(S\d+)_"))
    other = resolve(cfg(str(flat), split={"val": 0.2, "test": 0.2, "seed": 4}, group=r"^(S\d+)_"))
    assert d.record()["files"] == again.record()["files"]
    assert d.record()["files"] != other.record()["files"]
    where = {}
    for s in d.splits:
        for p in d.files[s]["ckplus"].paths:
            where.setdefault((p.parent.name, p.name[:4]), set()).add(s)
    assert all(len(v) == 1 for v in where.values()), "a subject's frames fell in two splits"
    for s, share in (("val", 0.2), ("test", 0.2)):
        counts = np.bincount(d.files[s]["ckplus"].labels, minlength=6)
        assert all(abs(c - share * 18) <= 3 for c in counts), (s, counts)  # groups of 3: within one group


def test_the_audit_runs_on_the_split_made_and_suggests_group_when_frames_straddle_it(flat):
    from fer_core.audit import audit_dataset

    findings = audit_dataset(resolve(cfg(str(flat))), img_size=32)
    assert set(findings["splits"]) == {"train", "val", "test"}
    assert sum(f["images"] for f in findings["splits"].values()) == 6 * 18
    # contempt's images are fear's: identical images on both sides of the split
    assert findings["exact_duplicates"]["cross_split"]["groups"] > 0
    assert any("set group" in w for w in findings["warnings"]), findings["warnings"]


def test_split_indices_alone_is_exactly_stratified():
    labels = np.repeat(np.arange(3), [100, 40, 20])
    which = split_indices(labels, [str(i) for i in range(len(labels))], 0.15, 0.15, seed=0)
    for s in (1, 2):
        assert np.bincount(labels[which == s], minlength=3).tolist() == [15, 6, 3]


def test_names_match_across_case_punctuation_and_synonyms():
    mapped, unmatched = match_folders(
        ["Anger", "HAPPINESS", "sadness", "Contempt", "1"], ["angry", "happy", "sad"], {"sad": ["1"]}
    )
    assert mapped == {"Anger": "angry", "HAPPINESS": "happy", "sadness": "sad", "1": "sad"}
    assert unmatched == ["Contempt"]


@pytest.mark.parametrize(
    "kw, error, words",
    [
        (
            {"classes": {"a": ["anger", "fear"], "b": ["fear", "sadness"]}},
            ConfigError,
            "folder 'fear' is mapped to both 'a' and 'b'",
        ),
        ({"classes": {"a": ["anger"], "b": ["nope"]}}, ConfigError, "onto folder 'nope', which is not there"),
        ({"classes": ["anger", "sadness"]}, DataError, "matches no class (anger, sadness)"),
        ({"classes": {"Happy": ["happiness"], "happy": ["anger"]}}, ConfigError, "collide"),
        ({"group": "^(X\\d+)_"}, ConfigError, "matches no file name"),
        ({"group": "("}, ConfigError, "is not a regular expression"),
        ({"split": {"val": 0.6, "test": 0.5}}, ConfigError, "leave nothing to train on"),
        ({"exclude": ["neutral"]}, ConfigError, "exclude names folder 'neutral', which is not there"),
    ],
)
def test_bad_labels_and_splits_are_one_line_each(flat, kw, error, words):
    with pytest.raises(error) as e:
        resolve(cfg(str(flat), **kw))
    assert words in _one_line(e)


def test_a_split_that_leaves_a_class_no_val_image_is_one_line(flat):
    for f in sorted((flat / "contempt").iterdir())[2:]:
        f.unlink()
    with pytest.raises(DataError) as e:
        resolve(cfg(str(flat), split={"val": 0.15, "test": 0.0}))
    assert "the split leaves class 'contempt' no val image" in _one_line(e) and "raise split.val" in str(
        e.value
    )


def test_a_mapping_that_leaves_a_class_empty_in_val_is_one_line(demo_copy):
    for f in (demo_copy / "val" / "fear").iterdir():
        f.unlink()
    (demo_copy / "val" / "fear").rmdir()
    with pytest.raises(DataError) as e:
        resolve(
            cfg(
                str(demo_copy),
                classes={
                    "scared": "fear",
                    "rest": ["angry", "disgust", "happy", "neutral", "sad", "surprise"],
                },
            )
        )
    assert f"{demo_copy / 'val'}: class 'scared' has no image there" in _one_line(e)


def test_datasets_whose_classes_cannot_be_reconciled_are_one_line(demo_root, flat):
    with pytest.raises(DataError) as e:  # ckplus's contempt is no FER class
        resolve(cfg([str(demo_root), str(flat)]))
    assert "folder 'contempt' matches no class" in _one_line(e) and "data[1].exclude" in str(e.value)
    with pytest.raises(ConfigError) as e:
        resolve(cfg([str(demo_root), {"root": str(flat), "classes": {"pain": "contempt"}}]))
    assert "names class 'pain', which is not among the classes" in _one_line(e)


def test_two_datasets_train_together_and_report_each_val(demo_root, flat, tmp_path):
    data = [str(demo_root), {"root": str(flat), "exclude": ["contempt"], "weight": 2}]
    d = resolve(cfg(data))
    assert d.classes == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert d.sources[1].folders["sadness"] == "sad" and d.sources[1].folders["happiness"] == "happy"
    result = train({**tiny_config("", tmp_path / "run", epochs=1, audit=False), "data": data})
    row = result["history"][-1]
    for name in ("data", "ckplus"):
        assert 0 <= row[f"{name}/val_accuracy"] <= 1
    # the pooled figure is the two datasets' figures weighted by their val images
    n = {s.name: len(d.files["val"][s.name].paths) for s in d.sources}
    pooled = sum(row[f"{k}/val_accuracy"] * n[k] for k in n) / sum(n.values())
    assert row["val_accuracy"] == pytest.approx(pooled)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained on the flat dataset's own 3-class labels (split here, grouped)."""
    tmp = tmp_path_factory.mktemp("own")
    demo = make_demo_dataset(
        tmp / "demo", train_per_class=8, val_per_class=4, test_per_class=0, img_size=32, seed=2
    )
    root = tmp / "faces"
    for src, dst in (
        ("happy", "pos"),
        ("surprise", "pos"),
        ("neutral", "calm"),
        ("sad", "neg"),
        ("angry", "neg"),
    ):
        (root / dst).mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(
            sorted((demo / "train" / src).iterdir()) + sorted((demo / "val" / src).iterdir())
        ):
            shutil.copy(f, root / dst / f"p{i // 2:02d}{src}_{i % 2}.png")
    run = tmp / "run"
    train(
        tiny_config(str(root), run, epochs=1, split={"val": 0.25, "test": 0.25, "seed": 0}, group=r"^(p\d+)")
    )
    return run / "checkpoints" / "best.pt", root, demo


def test_evaluate_defaults_to_the_split_it_trained_on(trained, tmp_path, capsys):
    ckpt, root, _ = trained
    assert evaluate_main([str(ckpt), "--split", "test", "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert list(m["test_support"]) == ["calm", "neg", "pos"] and m["left_out"] == {}
    assert m["test_samples"] == sum(m["test_support"].values()) > 0


def test_evaluate_on_other_data_maps_by_name_and_mapping_and_says_what_it_left_out(trained, tmp_path, capsys):
    ckpt, _, demo = trained
    out = tmp_path / "m.json"
    args = [
        str(ckpt),
        "--data",
        str(demo),
        "--out",
        str(out),
        "--classes",
        "{pos: [happy, surprise], neg: [sad]}",
    ]
    assert evaluate_main(args) == 0
    printed = capsys.readouterr().out
    m = json.loads(out.read_text())
    assert m["left_out"] == {"angry": 4 + 8, "disgust": 12, "fear": 12, "neutral": 12}
    assert "left out (no class of the checkpoint): angry (12 images)" in printed
    assert m["val_support"] == {"calm": 0, "neg": 4, "pos": 8}
    # data that shares no class with the checkpoint: one line, nothing written
    bare = tmp_path / "other"
    shutil.copytree(demo / "val" / "fear", bare / "train" / "fear")
    shutil.copytree(demo / "val" / "fear", bare / "val" / "fear")
    assert evaluate_main([str(ckpt), "--data", str(bare), "--out", str(tmp_path / "n.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a class of the checkpoint (calm, neg, pos)" in err
    assert not (tmp_path / "n.json").exists()


def test_a_changed_dataset_cannot_claim_the_split_it_was_trained_on(trained, tmp_path):
    ckpt, root, _ = trained
    state = load_checkpoint(ckpt)
    extra = next((root / "pos").iterdir())
    shutil.copy(extra, root / "pos" / "zz_new.png")
    try:
        with pytest.raises(FerError) as e:
            checkpoint_data(state)
        assert "files changed since the checkpoint was trained" in _one_line(e)
    finally:
        (root / "pos" / "zz_new.png").unlink()


@pytest.mark.skipif(
    not (FER2013.is_dir() and AFFECTNET7.is_dir()),
    reason=f"real data not found at {FER2013} and {AFFECTNET7}; this test needs ../shared/data/fer2013 and affectnet7",
)
def test_fer2013_and_affectnet7_reconcile_by_name():
    """AffectNet's folder names (Anger, Happy, ...) are FER2013's classes with no mapping; a 3-class mapping
    of affectnet7 alone merges its folders."""
    d = resolve(cfg([str(FER2013), {"root": str(AFFECTNET7), "weight": 2}]))
    assert d.classes == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert d.sources[1].folders == {
        "Anger": "angry", "Disgust": "disgust", "Fear": "fear", "Happy": "happy", "Neutral": "neutral",
        "Sad": "sad", "Surprise": "surprise",
    }  # fmt: skip
    assert d.count("train") == 28709 + len(d.files["train"]["affectnet7"].paths) and "test" not in d.splits
    three = resolve(
        cfg(
            str(AFFECTNET7),
            classes={
                "negative": ["Anger", "Disgust", "Fear", "Sad"],
                "neutral": "Neutral",
                "positive": ["Happy", "Surprise"],
            },
        )
    )
    assert three.classes == ("negative", "neutral", "positive")
    val = np.bincount(three.files["val"]["affectnet7"].labels)
    assert val.sum() == len(d.files["val"]["affectnet7"].paths) and val[0] > val[2] > val[1] > 0
