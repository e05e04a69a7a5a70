"""fer_core.audit on small datasets written here: every finding is planted, so each count is known exactly.

The images are smooth random fields with fine grain (not the demo faces: those cartoons are drawn from one
template and are near duplicates of each other by design), so two different images never match by chance.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fer_core.audit import audit_dataset, main, summarize
from fer_core.data import CLASS_NAMES
from fer_core.decode_cache import load_split
from fer_core.duplicates import (
    PHASH_MAX_DISTANCE,
    PHASH_MIN_COSINE,
    _near_pairs,
    cross_split_duplicates,
    perceptual_hash,
)
from fer_core.image_stats import BRIGHTNESS_DIFF_TOL

from .conftest import FER2013, REPO


def _image(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A distinct 'photo': a random low-frequency layout plus mid detail and grain."""

    def field(values: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(values.astype(np.float32), "F").resize((size, size), Image.BICUBIC))

    layout, detail = field(rng.uniform(30, 220, (6, 6))), field(rng.normal(0, 25, (16, 16)))
    return np.clip(layout + detail + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, blur: float = 0.0, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, "L")
    (im.filter(ImageFilter.GaussianBlur(blur)) if blur else im).save(path, **kw)


def _dataset(root: Path, seed: int = 0, per_class=(6, 3), blur_train: float = 0.0, test: int = 0) -> Path:
    """train/val (and test) with ``per_class`` distinct images per class; train blurred by ``blur_train``."""
    rng = np.random.default_rng(seed)
    for split, n, blur in (
        ("train", per_class[0], blur_train),
        ("val", per_class[1], 0.0),
        ("test", test, 0.0),
    ):
        for c in CLASS_NAMES if n else ():
            for i in range(n):
                _save(_image(rng), root / split / c / f"{i}.png", blur)
    return root


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


@pytest.fixture
def planted(tmp_path) -> Path:
    """Cross-split copies: an exact one under another label, a JPEG re-save, a brightness shift, a 1-px shift."""
    root = _dataset(tmp_path / "data", seed=3, test=2)
    Image.open(root / "train/happy/0.png").save(root / "val/angry/copy.png")
    Image.open(root / "train/sad/1.png").save(root / "val/sad/resaved.jpg", quality=70)
    brighter = np.clip(_read(root / "train/fear/2.png").astype(int) + 8, 0, 255).astype(np.uint8)
    _save(brighter, root / "val/fear/brighter.png")
    a = _read(root / "train/fear/0.png")  # its 1-px shift is 8 bits away: the threshold, not luck, decides
    _save(np.concatenate([a[:, :1], a[:, :-1]], axis=1), root / "test/fear/shifted.png")
    return root


PLANTED_TRAIN = ["train/happy/0.png", "train/sad/1.png", "train/fear/2.png", "train/fear/0.png"]


def test_blurred_train_is_flagged_and_a_plain_copy_is_not(tmp_path):
    blurred = audit_dataset(_dataset(tmp_path / "blurred", blur_train=3.0), cache_dir=tmp_path / "cache")
    m = blurred["mismatch"]["val"]["sharpness"]
    hits = [w for w in blurred["warnings"] if "sharper than train" in w]
    assert len(hits) == 1, blurred["warnings"]
    pattern = r"val is (\d+\.\d)x sharper than train \(median Laplacian/std (\d+\.\d\d) vs (\d+\.\d\d)\)"
    ratio, val_med, train_med = re.match(pattern, hits[0]).groups()
    assert float(val_med) == pytest.approx(m["val"]["median"], abs=0.006)
    assert float(train_med) == pytest.approx(m["train"]["median"], abs=0.006)
    assert float(ratio) == pytest.approx(m["ratio"], abs=0.06) and m["ratio"] > 3
    assert any(w.startswith("WARNING: val is") for w in summarize(blurred))

    plain = audit_dataset(_dataset(tmp_path / "plain"), cache_dir=tmp_path / "cache")
    assert plain["warnings"] == [] and plain["mismatch"]["val"]["warnings"] == []
    assert 1 / 1.5 < plain["mismatch"]["val"]["sharpness"]["ratio"] < 1.5
    assert not any(line.startswith("WARNING") for line in summarize(plain))


def test_cross_split_exact_and_near_duplicates(planted, tmp_path):
    f = audit_dataset(planted, cache_dir=tmp_path / "cache")
    ex = f["exact_duplicates"]
    assert (ex["groups"], ex["images"], ex["label_conflicts"]) == (1, 2, 1)
    assert ex["cross_split"] == {"groups": 1, "images": 2, "label_conflicts": 1}
    assert all(t["groups"] == 0 for t in ex["within_split"].values())
    assert ex["examples"][0]["size"] == 2
    assert sorted((m["path"], m["label"]) for m in ex["examples"][0]["members"]) == [
        ("train/happy/0.png", "happy"),
        ("val/angry/copy.png", "angry"),
    ]

    near = f["near_duplicates"]
    assert (near["groups"], near["images"], near["not_exact_groups"], near["label_conflicts"]) == (4, 8, 3, 1)
    assert near["cross_split"]["groups"] == 4
    groups = {frozenset(m["path"] for m in g["members"]) for g in near["examples"]}
    assert frozenset({"train/sad/1.png", "val/sad/resaved.jpg"}) in groups
    assert frozenset({"train/fear/2.png", "val/fear/brighter.png"}) in groups
    assert frozenset({"train/fear/0.png", "test/fear/shifted.png"}) in groups
    h, _ = perceptual_hash(
        np.stack([_read(planted / "train/fear/0.png"), _read(planted / "test/fear/shifted.png")])
    )
    assert 4 <= np.bitwise_count(h[0] ^ h[1]) <= PHASH_MAX_DISTANCE
    line = next(s for s in summarize(f) if s.startswith("exact duplicates"))
    assert "across splits 1 groups (2 images, 1 with different labels)" in line


def test_cross_split_duplicates_returns_exactly_the_planted_train_images(planted, tmp_path):
    train, val, test = (
        load_split(planted, s, 48, cache_dir=tmp_path / "cache") for s in ("train", "val", "test")
    )
    got = cross_split_duplicates(train, [val, test])
    assert got.dtype == np.int64
    assert sorted(train.paths[i] for i in got) == sorted(PLANTED_TRAIN)
    assert sorted(train.paths[i] for i in cross_split_duplicates(train, [val])) == sorted(PLANTED_TRAIN[:3])
    clean = load_split(_dataset(tmp_path / "clean", seed=4), "val", 48, cache_dir=tmp_path / "cache")
    assert len(cross_split_duplicates(train, [clean])) == 0


def test_dedupe_cross_split_trains_without_exactly_those_images(planted, tmp_path, capsys):
    from fer_core.checkpoint import load_checkpoint
    from fer_core.config import make_config
    from fer_core.train import train
    from fer_core.trainer import Trainer

    base = dict(
        data=str(planted),
        out=str(tmp_path / "run"),
        batch_size=4,
        epochs=1,
        steps_per_epoch=1,
        progress=False,
        cache_dir=str(tmp_path / "cache"),
    )
    kept = Trainer(make_config({**base, "dedupe": "cross_split"}))
    everything = Trainer(make_config(base))
    assert sorted(kept.train_data.paths[i] for i in kept.dropped_duplicates) == sorted(PLANTED_TRAIN)
    assert sorted(
        kept.train_data.paths[i] for i in set(everything.train_idx) - set(kept.train_idx)
    ) == sorted(PLANTED_TRAIN)
    assert len(everything.dropped_duplicates) == 0 and len(everything.train_idx) == len(everything.train_data)
    # A run says which it used: in the checkpoint's config, and with the count in its first log line.
    res = train({**base, "dedupe": "cross_split", "audit": False})
    assert load_checkpoint(res["last_checkpoint"])["config"]["dedupe"] == "cross_split"
    assert f"dedupe cross_split left out {len(PLANTED_TRAIN)} train images" in capsys.readouterr().out


def test_blank_odd_sized_and_unreadable_files_are_counted(tmp_path):
    root = _dataset(tmp_path / "data", seed=5)
    _save(np.full((48, 48), 128, np.uint8), root / "train/happy/blank.png")
    _save(
        np.full((48, 48), 128, np.uint8), root / "train/sad/blank-copy.png"
    )  # identical, yet not a duplicate group
    _save(np.full((1, 1), 90, np.uint8), root / "val/neutral/tiny.png")
    sizes = {
        "wide": (400, 10),
        "strip": (200, 40),
        "fine": (60, 50),
        "huge": (2000, 1800),
    }  # all but "fine" are odd
    for k, (name, size) in enumerate(sizes.items()):
        face = Image.fromarray(_image(np.random.default_rng(9 + k)))
        _save(np.asarray(face.resize(size)), root / f"val/neutral/{name}.png")
    (root / "val/angry/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        f = audit_dataset(root, cache_dir=tmp_path / "cache", examples=3)
    tr, va = f["splits"]["train"], f["splits"]["val"]
    assert tr["blank"]["count"] == 2
    assert sorted(tr["blank"]["examples"]) == ["train/happy/blank.png", "train/sad/blank-copy.png"]
    assert tr["odd_size"]["count"] == 0 and tr["images"] == 44 and tr["class_counts"]["happy"] == 7
    assert va["blank"] == {"count": 1, "examples": ["val/neutral/tiny.png"]}  # 1x1 decodes to a flat square
    assert va["odd_size"]["count"] == 4
    assert sorted((e["path"], e["size"]) for e in va["odd_size"]["examples"]) == [  # examples=3 of the 4
        ("val/neutral/huge.png", "2000x1800"),
        ("val/neutral/strip.png", "200x40"),
        ("val/neutral/tiny.png", "1x1"),
    ]
    assert va["unreadable"]["count"] == 1 and va["unreadable"]["examples"][0].endswith("val/angry/broken.jpg")
    assert (
        va["sizes"]["distinct"] == 6 and va["sizes"]["most_common"][0] == ["48x48", 21] and va["images"] == 26
    )
    assert va["imbalance_ratio"] == pytest.approx(8 / 3, abs=0.01)
    assert f["exact_duplicates"]["groups"] == 0 and f["near_duplicates"]["groups"] == 0
    assert "4 far from 48 px or square; 1 unreadable; 1 blank" in next(
        s for s in summarize(f) if s.startswith("val:")
    )


def test_cli_json_out_and_errors(tmp_path, capsys):
    root = _dataset(tmp_path / "data", seed=6)
    out = tmp_path / "audit.json"
    assert main([str(root), "--json", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["splits"]["train"]["images"] == 42 and 0 <= printed["seconds"] < 120  # 63 small images
    assert json.loads(out.read_text())["splits"] == printed["splits"]

    assert main([str(root), "--cache-dir", str(tmp_path / "cache")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("train: 42 images") and lines[-1].startswith("audit took")

    run = subprocess.run(
        [sys.executable, "-m", "fer_core.audit", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert (
        len(run.stderr.strip().splitlines()) == 1
        and run.stderr.startswith("error: ")
        and "missing" in run.stderr
    )
    (root / "val").rename(tmp_path / "elsewhere")
    assert main([str(root), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "val" in err and len(err.strip().splitlines()) == 1


def test_audit_writes_nothing_under_the_data(planted, tmp_path):
    def snapshot() -> dict:
        files = sorted(p for p in planted.rglob("*") if p.is_file())
        return {str(p.relative_to(planted)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}

    dirs = sorted(str(p) for p in planted.rglob("*") if p.is_dir())
    before = snapshot()
    for _ in range(2):  # the second run reads the cache
        audit_dataset(planted, cache_dir=tmp_path / "cache")
    assert snapshot() == before
    assert sorted(str(p) for p in planted.rglob("*") if p.is_dir()) == dirs
    assert any((tmp_path / "cache").iterdir())


def test_only_the_resaved_copy_matches():
    """Guard for the generator: of 60 different images and one JPEG re-save, only the re-save pair matches."""
    rng = np.random.default_rng(0)
    imgs = np.stack([_image(rng) for _ in range(60)])
    buf = io.BytesIO()
    Image.fromarray(imgs[0]).save(buf, "JPEG", quality=70)
    h, c = perceptual_hash(np.concatenate([imgs, np.asarray(Image.open(buf))[None]]))
    pairs = _near_pairs(h, c)
    assert pairs.tolist() == [[0, 60]]


def test_the_cosine_check_rejects_a_hash_only_match():
    h = np.array([0x0F0F0F0F0F0F0F0F, 0x0F0F0F0F0F0F0F0F], dtype=np.uint64)
    same, orthogonal = np.eye(63, dtype=np.float32)[[0, 0]], np.eye(63, dtype=np.float32)[[0, 1]]
    assert _near_pairs(h, same).tolist() == [[0, 1]]
    assert _near_pairs(h, orthogonal).tolist() == []
    assert _near_pairs(h[:1], same[:1], h[1:], same[1:]).tolist() == [[0, 0]]


@pytest.mark.slow  # real data: decodes FER2013 val
@pytest.mark.skipif(not FER2013.is_dir(), reason=f"real FER2013 data not found at {FER2013}")
def test_near_duplicate_thresholds_on_real_faces(tmp_path):
    """The stated choice, on real FER2013 val faces: re-encodes, +-10 brightness and 1-px shifts match, few
    different faces do, and the cosine check removes most of the pairs the hash alone would take."""
    val = load_split(FER2013, "val", 48, cache_dir=tmp_path / "cache")
    faces = np.asarray(val.images)
    faces = faces[faces.reshape(len(faces), -1).std(axis=1) >= 2]
    sample = faces[:400]

    def jpeg(a: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=70)
        return np.asarray(Image.open(buf))

    h0, c0 = perceptual_hash(sample)
    for name, changed, need in (
        ("jpeg q70", np.stack([jpeg(a) for a in sample]), 0.99),
        ("+10", np.clip(sample.astype(int) + 10, 0, 255).astype(np.uint8), 0.99),
        ("-10", np.clip(sample.astype(int) - 10, 0, 255).astype(np.uint8), 0.99),
        ("1-px x shift", np.concatenate([sample[:, :, :1], sample[:, :, :-1]], axis=2), 0.95),
        ("1-px y shift", np.concatenate([sample[:, :1], sample[:, :-1]], axis=1), 0.95),
    ):
        h1, c1 = perceptual_hash(changed)
        kept = (np.bitwise_count(h0 ^ h1) <= PHASH_MAX_DISTANCE) & (
            np.einsum("ij,ij->i", c0, c1) >= PHASH_MIN_COSINE
        )
        assert kept.mean() >= need, (name, kept.mean())
    h, c = perceptual_hash(faces)
    gated, hash_only = _near_pairs(h, c), _near_pairs(h, c, min_cosine=-1.0)
    # Measured on the 3,588 non-blank val faces: 81 pairs (26 pixel-identical) of the 838 the hash alone takes.
    assert len(gated) < 0.035 * len(faces), len(gated)
    assert len(gated) < 0.2 * len(hash_only), (len(gated), len(hash_only))


def test_small_splits_drawn_alike_are_not_flagged_but_a_real_shift_is(tmp_path):
    # 12 / 4 images per class from one generator: val's median brightness lands 35 grey levels under train's by
    # chance (3 standard errors), past the 20-level tolerance; only a difference confidently beyond it counts.
    from fer_core.apps.demo import make_demo_dataset

    root = make_demo_dataset(
        tmp_path / "d", train_per_class=12, val_per_class=4, test_per_class=4, img_size=32, seed=0
    )
    f = audit_dataset(root, img_size=32, cache_dir=tmp_path / "cache")
    assert abs(f["mismatch"]["val"]["brightness"]["difference"]) > BRIGHTNESS_DIFF_TOL and f["warnings"] == []
    for p in (root / "val").rglob("*.png"):  # a real levels change of the whole split
        im = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        Image.fromarray((im * 0.3).astype(np.uint8)).save(p)
    f = audit_dataset(root, img_size=32, cache_dir=tmp_path / "cache")
    assert any(w.startswith("val is") and "darker than train" in w for w in f["warnings"]), f["warnings"]
