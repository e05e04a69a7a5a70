"""A damaged decode cache heals itself: one warning naming the file, a fresh decode, then silence."""

import json
import multiprocessing as mp
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from fer_core.decode_cache import load_split
from fer_core.errors import DataError

_UNPICKLED: list = []


def _mark(tag):
    _UNPICKLED.append(tag)


class _Payload:
    """Unpickling it would call ``_mark``: a stand-in for code that a crafted .npy runs when it is unpickled."""

    def __reduce__(self):
        return _mark, ("a crafted object array was unpickled",)


def _entry(cache: Path, split: str = "val") -> tuple[Path, Path]:
    (npy,) = cache.glob(f"{split}-*.npy")
    return npy, npy.with_suffix(".json")


def _truncate_npy(npy, meta, cache):
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    return npy


def _empty_npy(npy, meta, cache):
    npy.write_bytes(b"")
    return npy


def _fewer_images(npy, meta, cache):
    np.save(npy, np.load(npy)[:-3])  # a smaller file: an IndexError in the middle of an epoch
    return npy


def _same_size_wrong_shape(npy, meta, cache):
    images = np.load(npy)
    np.save(npy, images.reshape(images.shape[1], images.shape[0], *images.shape[2:]))  # byte for byte as big
    return npy


def _same_size_wrong_dtype(npy, meta, cache):
    np.save(npy, np.load(npy).view(np.int8))
    return npy


def _object_array(npy, meta, cache):
    np.save(npy, np.array([_Payload()] * 28, dtype=object), allow_pickle=True)
    return npy


def _object_array_with_its_record(npy, meta, cache):
    """A crafted pair: the record's byte size fits the object array, so only ``np.load`` can refuse it."""
    _object_array(npy, meta, cache)
    record = json.loads(meta.read_text())
    record["nbytes"] = npy.stat().st_size
    meta.write_text(json.dumps(record))
    return npy


def _truncate_json(npy, meta, cache):
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    return meta


def _json_not_a_record(npy, meta, cache):
    meta.write_text("null")
    return meta


def _json_of_another_split(npy, meta, cache):
    load_split(cache.parent / "data", "test", 32, cache_dir=cache)  # the same image count, other files
    shutil.copyfile(_entry(cache, "test")[1], meta)
    return meta


DAMAGES = [
    _truncate_npy,
    _empty_npy,
    _fewer_images,
    _same_size_wrong_shape,
    _same_size_wrong_dtype,
    _object_array,
    _object_array_with_its_record,
    _truncate_json,
    _json_not_a_record,
    _json_of_another_split,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__.strip("_") for d in DAMAGES])
def test_a_damaged_entry_is_named_once_and_rebuilt(demo_root, tmp_path, damage):
    shutil.copytree(demo_root, tmp_path / "data")
    root, cache = tmp_path / "data", tmp_path / "cache"
    first = load_split(root, "val", 32, cache_dir=cache)
    want = np.array(first.images)
    bad = damage(*_entry(cache), cache)

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        again = load_split(root, "val", 32, cache_dir=cache)
    msgs = [str(r.message) for r in rec]
    assert len(msgs) == 1 and str(bad) in msgs[0], msgs
    assert "\n" not in msgs[0]
    assert not _UNPICKLED
    for got in (again, None):
        if got is None:  # healed: the third load reads the rebuilt entry and says nothing
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = load_split(root, "val", 32, cache_dir=cache)
        assert got.images.dtype == np.uint8 and np.array_equal(np.asarray(got.images), want)
        assert np.array_equal(got.labels, first.labels) and got.paths == first.paths
        assert got.sizes == first.sizes and got.skipped == first.skipped
    assert len(list(cache.glob("val-*.npy"))) == 1 and not list(cache.glob(".val-*"))


# -- a read-only cache cannot be rebuilt: a one-line error, not a traceback ------------------------------


def _drop_privileges():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def _as_nobody(fn, *args, **kw):
    """Run ``fn`` as user nobody when the tests run as root (root writes anywhere), else as we are."""
    if os.geteuid() != 0:
        return fn(*args, **kw)
    with mp.get_context("fork").Pool(1, initializer=_drop_privileges) as pool:
        return pool.apply(fn, args, kw)


def _load_len(*args, **kw):
    return len(load_split(*args, **kw))


@pytest.fixture
def open_tmp(demo_root):
    """A world-readable copy of the demo set (pytest's own tmp folders are private to the user)."""
    base = Path(tempfile.mkdtemp(prefix="fer-heal-", dir="/tmp"))
    os.chmod(base, 0o755)
    shutil.copytree(demo_root, base / "data")
    yield base
    for d, dirs, _ in os.walk(base):
        for name in dirs:
            os.chmod(os.path.join(d, name), 0o755)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("damage", [_truncate_npy, _truncate_json], ids=["npy", "json"])
def test_a_damaged_entry_in_a_read_only_cache_is_a_one_line_error(open_tmp, damage):
    root, cache = open_tmp / "data", open_tmp / "cache"
    load_split(root, "val", 32, cache_dir=cache)
    bad = damage(*_entry(cache), cache)
    os.chmod(cache, 0o555)
    for f in cache.iterdir():
        os.chmod(f, 0o444)
    with pytest.raises(DataError) as e:
        _as_nobody(_load_len, root, "val", 32, cache_dir=cache)
    msg = str(e.value)
    assert "\n" not in msg and "the image cache folder is not writable" in msg and bad.name in msg, msg
    assert bad.exists()  # nothing deleted where it cannot be rebuilt
