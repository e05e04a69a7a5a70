"""Dataset layout checks (one test per error), corrupt-file handling, decoding and the decode-once cache."""

import multiprocessing as mp
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_core import data as fdata
from fer_core import decode_cache
from fer_core.config import TrainConfig
from fer_core.data import CLASS_NAMES, decode_image, scan_split
from fer_core.dataset import stratified_indices
from fer_core.datasets import resolve
from fer_core.decode_cache import load_split
from fer_core.errors import DataError


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_valid_layout(demo_root):
    files = scan_split(demo_root, "train")
    assert files.classes == CLASS_NAMES and len(files.paths) == 70
    assert sorted(set(files.labels)) == list(range(7))


def test_missing_root(tmp_path):
    with pytest.raises(DataError) as e:
        scan_split(tmp_path / "nope", "train")
    assert "dataset folder not found" in _one_line(e) and "nope" in str(e.value)


def test_missing_split(demo_copy):
    shutil.rmtree(demo_copy / "val")
    with pytest.raises(DataError) as e:
        load_split(demo_copy, "val", 32)
    assert f"{demo_copy / 'val'}: split folder missing" in _one_line(e)


def test_a_class_missing_from_val_is_one_line(demo_copy):
    shutil.rmtree(demo_copy / "val" / "fear")
    with pytest.raises(DataError) as e:
        resolve(TrainConfig(data=str(demo_copy)))
    assert f"{demo_copy / 'val'}: class 'fear' has no image there" in _one_line(e)


def test_a_val_folder_train_lacks_is_one_line(demo_copy):
    shutil.copytree(demo_copy / "val" / "fear", demo_copy / "val" / "contempt")
    with pytest.raises(DataError) as e:
        resolve(TrainConfig(data=str(demo_copy)))
    assert "folder 'contempt' is not among train/'s folders" in _one_line(e) and "exclude" in str(e.value)


def test_classes_are_the_folders_of_train(demo_copy):
    for split in ("train", "val", "test"):
        shutil.rmtree(demo_copy / split / "fear")
    d = resolve(TrainConfig(data=str(demo_copy)))
    assert d.classes == tuple(c for c in CLASS_NAMES if c != "fear")


def test_empty_class(demo_copy):
    for p in (demo_copy / "train" / "sad").iterdir():
        p.unlink()
    with pytest.raises(DataError) as e:
        scan_split(demo_copy, "train")
    assert f"{demo_copy / 'train' / 'sad'}: class folder is empty" in _one_line(e)


def test_non_image_file(demo_copy):
    note = demo_copy / "train" / "happy" / "notes.txt"
    note.write_text("not a picture")
    with pytest.raises(DataError) as e:
        scan_split(demo_copy, "train")
    assert f"{note}: not an image file (.txt)" in _one_line(e) and "move it out" in str(e.value)


def test_hidden_files_are_ignored(demo_copy):
    (demo_copy / "train" / "happy" / ".DS_Store").write_bytes(b"\0\1")
    assert len(scan_split(demo_copy, "train").paths) == 70


def _break_images(root):
    happy = sorted((root / "train" / "happy").iterdir())
    corrupt = happy[0].with_name("corrupt.png")
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    truncated = happy[1].with_name("truncated.jpg")
    Image.open(happy[1]).convert("L").resize((64, 64)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:300])
    return corrupt, truncated


def test_corrupt_and_truncated_are_skipped_with_a_warning(demo_copy, tmp_path):
    corrupt, truncated = _break_images(demo_copy)
    with pytest.warns(UserWarning) as rec:
        split = load_split(demo_copy, "train", 32, cache_dir=tmp_path / "c")
    msg = str(rec[0].message)
    assert "skipped 2 corrupt or truncated image(s)" in msg and str(corrupt) in msg and str(truncated) in msg
    assert len(split) == 70 and sorted(split.skipped) == sorted([str(corrupt), str(truncated)])
    # The warning repeats when the cache is reused: skipped files are never silently forgotten.
    with pytest.warns(UserWarning, match="skipped 2"):
        load_split(demo_copy, "train", 32, cache_dir=tmp_path / "c")


def test_strict_fails_on_corrupt(demo_copy, tmp_path):
    corrupt, _ = _break_images(demo_copy)
    with pytest.raises(DataError) as e:
        load_split(demo_copy, "train", 32, strict=True, cache_dir=tmp_path / "c")
    assert "corrupt or truncated image" in _one_line(e) and "strict: false" in str(e.value)


def test_decode_modes(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (60, 40), (255, 0, 0, 0)).save(rgba)  # fully transparent -> white background
    assert decode_image(rgba, 32, True).min() == 255
    g16 = tmp_path / "g16.png"
    Image.fromarray(np.full((20, 20), 1000, dtype=np.uint16)).save(g16)
    assert decode_image(g16, 32, True).max() == 255  # scaled by its range, not clipped
    pal = tmp_path / "p.png"
    Image.new("RGB", (30, 30), (10, 200, 10)).convert("P").save(pal)
    assert decode_image(pal, 16, False).shape == (16, 16, 3)
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (30, 30), (0, 0, 0, 0)).save(cmyk)
    assert decode_image(cmyk, 16, True).shape == (16, 16)


def test_cache_is_reused_and_invalidated(demo_copy, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    first = load_split(demo_copy, "val", 32, cache_dir=cache)
    assert first.images.dtype == np.uint8 and first.images.shape == (28, 32, 32)
    assert len(list(cache.glob("val-*.npy"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(fdata, "decode_image", no_decoding)
    monkeypatch.setattr(fdata, "decode_with_size", no_decoding)
    again = load_split(demo_copy, "val", 32, cache_dir=cache)
    assert np.array_equal(np.asarray(again.images), first.images)

    # Changing a file (size/mtime) or the size must decode again.
    monkeypatch.undo()
    img = sorted((demo_copy / "val" / "angry").iterdir())[0]
    Image.new("L", (48, 48), 7).save(img)
    changed = load_split(demo_copy, "val", 32, cache_dir=cache)
    assert changed.images[0].max() == 7
    load_split(demo_copy, "val", 24, cache_dir=cache)
    assert len(list(cache.glob("val-*.npy"))) == 3


def _load_in_child(args):
    root, cache = args
    d = load_split(root, "train", 32, cache_dir=cache)
    return int(np.asarray(d.images).sum())


def test_cache_safe_with_two_processes(demo_root, tmp_path):
    cache = tmp_path / "shared-cache"
    with mp.get_context("spawn").Pool(2) as pool:
        sums = pool.map(_load_in_child, [(demo_root, cache)] * 4)
    assert (
        sums
        == [int(np.asarray(load_split(demo_root, "train", 32, cache_dir=tmp_path / "own").images).sum())] * 4
    )
    assert len(list(cache.glob("train-*.npy"))) == 1 and not list(
        cache.glob(".*train-*")
    )  # no temp files left


def test_stratified_subset_keeps_class_shares():
    labels = np.repeat(np.arange(7), [400, 40, 400, 700, 500, 480, 320])
    idx = stratified_indices(labels, 1000)
    counts = np.bincount(labels[idx], minlength=7)
    expected = np.array([400, 40, 400, 700, 500, 480, 320]) * 1000 / len(labels)
    assert np.all(np.abs(counts - expected) <= 1) and counts.min() >= 1
    assert np.array_equal(idx, stratified_indices(labels, 1000))  # deterministic
    assert len(stratified_indices(labels, 0)) == len(labels)


# -- permissions: root reads everything, so these checks run in a child that drops to an unprivileged user --


def _as_nobody(fn, *args, **kw):
    """Run ``fn(*args, **kw)`` in a forked child as user nobody when the tests run as root (else as we are);
    its return value or exception comes back here."""
    if os.geteuid() != 0:
        return fn(*args, **kw)
    with mp.get_context("fork").Pool(1, initializer=_drop_privileges) as pool:
        return pool.apply(fn, args, kw)


def _drop_privileges():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


@pytest.fixture
def open_tmp(demo_root):
    """A world-readable copy of the demo set (pytest's own tmp folders are private to the user)."""
    base = Path(tempfile.mkdtemp(prefix="fer-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    shutil.copytree(demo_root, base / "data")
    yield base
    for d, dirs, _ in os.walk(base):  # give back what a test took away, so everything can be deleted
        for name in dirs:
            os.chmod(os.path.join(d, name), 0o755)
    shutil.rmtree(base, ignore_errors=True)


def _load(*args, **kw):
    d = load_split(*args, **kw)
    return len(d)


def test_a_complete_read_only_cache_is_usable(open_tmp):
    """A shared or read-only cache that holds everything is read without its lock file (which cannot be
    opened for writing there); one that lacks the split is a one-line error."""
    root, cache = open_tmp / "data", open_tmp / "cache"
    assert len(load_split(root, "val", 32, cache_dir=cache)) == 28  # decoded into the cache
    os.chmod(cache, 0o555)
    for f in cache.iterdir():
        os.chmod(f, 0o444)
    assert _as_nobody(_load, root, "val", 32, cache_dir=cache) == 28
    with pytest.raises(DataError) as e:  # not cached at this size, and nowhere to write it
        _as_nobody(_load, root, "val", 24, cache_dir=cache)
    assert "the image cache folder is not writable and holds no finished cache" in _one_line(e)


def test_an_unreadable_image_or_folder_is_permission_denied_not_corrupt(open_tmp):
    root, cache = open_tmp / "data", open_tmp / "cache"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    img = sorted((root / "train" / "fear").iterdir())[0]
    os.chmod(img, 0o000)
    with pytest.raises(DataError) as e:  # an error naming the permission, not a "corrupt" file skipped
        _as_nobody(_load, root, "train", 32, cache_dir=cache)
    assert f"{img}: permission denied" in _one_line(e) and "corrupt" not in str(e.value)
    os.chmod(root / "val" / "sad", 0o000)
    with pytest.raises(DataError) as e:  # not "class folder is empty"
        _as_nobody(_load, root, "val", 32, cache_dir=cache)
    assert f"{root / 'val' / 'sad'}: permission denied" in _one_line(e)


def test_a_killed_decoders_temporary_files_are_removed(demo_root, tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    key = decode_cache._cache_key(scan_split(demo_root, "val"), 32, True)
    stale = [cache / f".val-{key}.npy.k1ll3d", cache / f".val-{key}.json.k1ll3d"]
    for f in stale:
        f.write_bytes(b"x" * 1000)
    load_split(demo_root, "val", 32, cache_dir=cache)
    assert not any(f.exists() for f in stale) and len(list(cache.glob("val-*.npy"))) == 1


# -- odd image sizes are named at load time ---------------------------------------------------------------


def test_images_far_from_the_training_size_are_named_with_their_sizes(demo_copy, tmp_path):
    """A 1x1 file and a 10000x10 strip are kept (a user's data may be like that) but listed, with their
    sizes, when the split is loaded: from the decode, and again from the cache's json."""
    dot, strip = demo_copy / "train" / "angry" / "dot.png", demo_copy / "train" / "happy" / "strip.png"
    Image.new("L", (1, 1), 128).save(dot)
    Image.new("L", (10000, 10), 128).save(strip)
    for attempt in ("decoded", "cached"):
        with pytest.warns(UserWarning) as rec:
            split = load_split(demo_copy, "train", 32, cache_dir=tmp_path / "c")
        msgs = [str(r.message) for r in rec if "training size" in str(r.message)]
        assert len(msgs) == 1, (attempt, [str(r.message) for r in rec])
        assert "2 image(s) far from the 32x32 training size or shape" in msgs[0], msgs[0]
        assert "train/angry/dot.png (1x1)" in msgs[0] and "train/happy/strip.png (10000x10)" in msgs[0]
        assert len(split) == 72  # kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the demo's own 32 px faces are not odd
        load_split(demo_copy, "val", 32, cache_dir=tmp_path / "c")
