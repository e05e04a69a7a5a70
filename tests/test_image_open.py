"""Images as a viewer shows them, read one way by training, the audit and prediction.

A JPEG stored sideways with EXIF orientation 6 must reach all three upright; a file whose header claims more
pixels than ``fer_core.data.MAX_PIXELS`` is named as over that limit, with its size, and never decoded (not
called corrupt); Pillow's own warnings never reach the terminal raw.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from fer_core import data as fdata
from fer_core.apps.predict import Predictor
from fer_core.apps.predict_inputs import load_image
from fer_core.audit import audit_dataset, summarize
from fer_core.data import CLASS_NAMES, decode_image, to_model_array
from fer_core.decode_cache import load_split
from fer_core.errors import DataError
from fer_core.preprocess import Preprocess

from .conftest import REPO

UPRIGHT = (
    40,
    130,
)  # (width, height) as a viewer shows the rotated JPEG: far from square, so the audit lists it


def _upright() -> np.ndarray:
    """An asymmetric gray picture, 40 wide and 130 tall: a bright block near the top-left on a dark ramp."""
    a = np.repeat(np.linspace(20, 120, UPRIGHT[1]).astype(np.uint8)[:, None], UPRIGHT[0], axis=1)
    a[5:35, 3:18] = 250
    return a


def _rotated_jpeg(path) -> np.ndarray:
    """Save the picture turned a quarter left with EXIF orientation 6 (a viewer turns it back a quarter
    right); returns the upright pixels as they decode, so JPEG loss does not enter the comparison."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_upright()).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("L"))
    upright = np.rot90(stored, k=-1)  # a quarter turn clockwise: orientation 6 as a viewer applies it
    assert upright.shape == (UPRIGHT[1], UPRIGHT[0]) and upright[10:30, 5:15].mean() > 200  # the fixture
    return np.ascontiguousarray(upright)


def _block_is_top_left(a: np.ndarray) -> bool:
    """The bright block, 48 px model input: near the top-left corner, not at the bottom (a sideways read)."""
    g = a if a.ndim == 2 else a.mean(axis=2)
    return g[3:11, 6:16].mean() > 200 and g[36:, :].mean() < 150


def _png_claiming(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width×height 8-bit gray pixels (the data behind it is a few bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def decoded_files(monkeypatch) -> list[str]:
    """The files whose pixels Pillow decodes from here on (every decode goes through ImageFile.load)."""
    seen: list[str] = []
    load = ImageFile.ImageFile.load

    def spy(self):
        seen.append(str(getattr(self, "filename", "")))
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return seen


def _no_raw_pillow_warning(records) -> None:
    raw = [
        r
        for r in records
        if r.category.__module__.startswith("PIL") or "decompression bomb" in str(r.message)
    ]
    assert not raw, [f"{r.category.__name__}: {r.message}" for r in raw]


def _predictor() -> Predictor:
    """A Predictor for its input preparation only (48 px gray): building inputs needs no model or runtime."""
    pre = Preprocess(img_size=48, grayscale=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    return Predictor(None, pre, CLASS_NAMES, None)


# -- EXIF orientation ----------------------------------------------------------------------------------------


def test_training_decodes_an_exif_rotated_jpeg_upright(demo_copy, tmp_path):
    path = demo_copy / "train" / "happy" / "rotated.jpg"
    upright = _rotated_jpeg(path)
    with pytest.warns(UserWarning, match="far from the 48x48") as rec:  # its shape is odd, as it should be
        split = load_split(demo_copy, "train", 48, cache_dir=tmp_path / "c")
    i = split.paths.index("train/happy/rotated.jpg")
    assert np.array_equal(split.images[i], to_model_array(Image.fromarray(upright), 48, True))
    assert _block_is_top_left(split.images[i])
    assert split.sizes[i] == UPRIGHT and "rotated.jpg (40x130)" in str(rec[0].message)
    for gray in (True, False):
        assert np.array_equal(
            decode_image(path, 48, gray), to_model_array(Image.fromarray(upright), 48, gray)
        ), gray


def test_the_audit_reports_the_upright_size(demo_copy, tmp_path):
    _rotated_jpeg(demo_copy / "train" / "happy" / "rotated.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the odd-size warning of the decode
        f = audit_dataset(demo_copy, img_size=48, cache_dir=tmp_path / "c")
    train = f["splits"]["train"]
    assert train["odd_size"]["examples"] == [{"path": "train/happy/rotated.jpg", "size": "40x130"}]
    assert ["40x130", 1] in train["sizes"]["most_common"]


def test_prediction_reads_an_exif_rotated_jpeg_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    upright = _rotated_jpeg(path)
    im, size, rotated = load_image(path)
    assert size == UPRIGHT and rotated and np.array_equal(np.asarray(im.convert("L")), upright)
    x = _predictor().prepare(path)  # the model input of a file given by path
    assert np.array_equal(x, to_model_array(Image.fromarray(upright), 48, True)) and _block_is_top_left(x)


def test_images_without_exif_decode_as_pillow_does(tmp_path):
    """No orientation, no change: a JPEG (decoded at reduced scale) and a palette PNG give Pillow's pixels."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.jpg", quality=90)
    photo.convert("P").save(tmp_path / "palette.png", transparency=3)
    for name in ("photo.jpg", "palette.png"):
        for gray in (True, False):
            with Image.open(tmp_path / name) as im:
                im.draft("L" if gray else "RGB", (48, 48))
                ref = to_model_array(im, 48, gray)
            assert np.array_equal(decode_image(tmp_path / name, 48, gray), ref), (name, gray)


# -- the pixel limit ---------------------------------------------------------------------------------------


def test_training_skips_an_image_over_the_pixel_limit_without_decoding_it(demo_copy, tmp_path, decoded_files):
    huge, big = demo_copy / "train" / "happy" / "huge.png", demo_copy / "train" / "sad" / "big.png"
    _png_claiming(huge, 20000, 20000)  # past Pillow's own error limit
    _png_claiming(big, 10000, 10000)  # between Pillow's warning and error limits: Pillow would decode it
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        split = load_split(demo_copy, "train", 32, cache_dir=tmp_path / "c")
    _no_raw_pillow_warning(rec)
    msgs = [str(r.message) for r in rec]
    over = [m for m in msgs if "over the pixel limit" in m]
    assert len(over) == 1 and "\n" not in over[0], msgs
    assert f"{huge} (20000x20000)" in over[0] and f"{big} (10000x10000)" in over[0], over[0]
    assert f"{fdata.MAX_PIXELS / 1e6:g} MP" in over[0] and "MAX_PIXELS" in over[0], over[0]
    assert not any("corrupt" in m for m in msgs), msgs
    assert sorted(split.skipped) == sorted([str(huge), str(big)]) and len(split) == 70
    assert not [f for f in decoded_files if f.endswith(("huge.png", "big.png"))]
    with pytest.raises(DataError) as e:
        load_split(demo_copy, "train", 32, strict=True, cache_dir=tmp_path / "strict")
    msg = str(e.value)
    assert "over the pixel limit" in msg and "corrupt" not in msg and "\n" not in msg
    assert ("20000x20000" in msg or "10000x10000" in msg) and "strict: false" in msg


def test_the_audit_names_an_image_over_the_pixel_limit(demo_copy, tmp_path):
    _png_claiming(demo_copy / "val" / "fear" / "huge.png", 20000, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = audit_dataset(demo_copy, img_size=32, cache_dir=tmp_path / "c")
    val = f["splits"]["val"]
    assert val["over_pixel_limit"] == {
        "count": 1,
        "limit": fdata.MAX_PIXELS,
        "examples": [{"path": "val/fear/huge.png", "size": "20000x20000"}],
    }
    assert val["unreadable"]["count"] == 0
    line = next(s for s in summarize(f) if s.startswith("val:"))
    assert "1 over the pixel limit" in line and "0 unreadable" in line, line


def test_prediction_names_an_image_over_the_pixel_limit_in_one_line(tmp_path, decoded_files):
    for side in (20000, 10000):
        path = tmp_path / f"huge{side}.png"
        _png_claiming(path, side, side)
        for read in (load_image, _predictor().prepare):
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                with pytest.raises(DataError) as e:
                    read(path)
            _no_raw_pillow_warning(rec)
            msg = str(e.value)
            assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
            assert f"{side}x{side}" in msg and "over the pixel limit" in msg and "too large" in msg, msg
            assert "corrupt" not in msg, msg
    assert not [f for f in decoded_files if "huge" in f]


def test_no_raw_pillow_warning_reaches_the_terminal(demo_copy, tmp_path):
    """The audit on a data set holding a 100-megapixel PNG: Pillow's DecompressionBombWarning used to be
    printed as is, then the file was decoded whole."""
    _png_claiming(demo_copy / "train" / "angry" / "big.png", 10000, 10000)
    proc = subprocess.run(
        [sys.executable, "-m", "fer_core.audit", str(demo_copy), "--cache-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DecompressionBomb" not in proc.stderr and "decompression bomb" not in proc.stderr, proc.stderr
    assert "big.png (10000x10000)" in proc.stderr and "over the pixel limit" in proc.stderr, proc.stderr


def test_pillow_warnings_become_the_products_one_line_warnings(demo_copy, tmp_path, monkeypatch):
    """An image under the pixel limit that Pillow still warns about (here: Pillow's bomb threshold lowered
    below it) is decoded, with one warning of ours naming the file instead of Pillow's; a split of such
    files gives one warning, not one per file."""
    path = tmp_path / "face.png"
    Image.fromarray(_upright()).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 40x130 = 5200 pixels: Pillow warns
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = decode_image(path, 48, True)
    _no_raw_pillow_warning(rec)
    assert out.shape == (48, 48) and len(rec) == 1, [str(r.message) for r in rec]
    msg = str(rec[0].message)
    assert issubclass(rec[0].category, UserWarning) and msg.startswith(f"{path}: ") and "\n" not in msg, msg
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # the demo's 32x32 = 1024 pixels: warned about
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        split = load_split(demo_copy, "train", 32, cache_dir=tmp_path / "c")
    _no_raw_pillow_warning(rec)
    assert len(split) == 70 and [str(r.message).split(", e.g. ")[0] for r in rec] == [
        f"{demo_copy / 'train'}: 70 image(s) read despite Pillow warnings"
    ]
