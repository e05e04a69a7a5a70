"""The torch augmentation backend against albumentations on the same parameters, its hashed per-sample
parameters, its batches on the device, a bit-identical resume with it, and the trainer without albumentations."""

import json
import subprocess
import sys

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from fer_core import augment_torch as T
from fer_core.augment import build_train_transform
from fer_core.checkpoint import load_checkpoint
from fer_core.config import make_config
from fer_core.data import SplitData
from fer_core.dataset import DeviceBatches, EpochSampler
from fer_core.errors import CheckpointError
from fer_core.tools import bench_augment
from fer_core.train import train
from fer_core.trainer import Trainer

from .conftest import REPO, tiny_config


class Stop(Exception):
    pass


RNG = np.random.default_rng(0)
YY, XX = np.mgrid[0:48, 0:48]
# A face-like image (smooth shading plus a little noise) and white noise, the worst case for interpolation.
SMOOTH = (127 + 60 * np.sin(XX / 5) + 50 * np.cos(YY / 7) + RNG.normal(0, 10, (48, 48))).clip(0, 255)
SMOOTH = SMOOTH.astype(np.uint8)
NOISE = RNG.integers(0, 256, (48, 48), dtype=np.uint8)
RGB = RNG.integers(0, 256, (48, 40, 3), dtype=np.uint8)


def _one(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img)[None]


@pytest.mark.parametrize("img", [NOISE, RGB], ids=["gray", "rgb"])
def test_flip_is_albumentations_exactly(img):
    want = A.HorizontalFlip(p=1)(image=img)["image"]
    got = T.flip(torch.from_numpy(np.stack([img, img])), torch.tensor([True, False])).numpy()
    assert np.array_equal(got[0], want) and np.array_equal(got[1], img)


AFFINES = [(10, 3, -2, 1.1, 0.9), (-20, -4, 4, 0.85, 1.15), (7.3, 0, 0, 1.0, 1.0), (-3, 1, 2, 0.95, 1.05)]


@pytest.mark.parametrize("angle,tx,ty,sx,sy", AFFINES)
def test_affine_matches_albumentations_within_opencv_rounding(angle, tx, ty, sx, sy):
    """OpenCV's warpAffine rounds source coordinates to 1/32 pixel (fixed point), so results differ by at most
    one grey level on a smooth image and by up to 255/32 (8) where neighbouring pixels differ by 255."""
    t = A.Affine(
        rotate=(angle, angle),
        translate_px={"x": (tx, tx), "y": (ty, ty)},
        scale={"x": (sx, sx), "y": (sy, sy)},
        border_mode=cv2.BORDER_REFLECT_101,
        p=1,
    )
    for img, max_diff, mean_diff in ((SMOOTH, 1, 0.25), (NOISE, 8, 1.0)):
        want = t(image=img)["image"].astype(int)
        got = T.affine(_one(img), *(torch.tensor([float(v)]) for v in (angle, tx, ty, sx, sy)))[0]
        diff = np.abs(got.numpy().astype(int) - want)
        assert diff.max() <= max_diff and diff.mean() <= mean_diff, (diff.max(), diff.mean())


def test_affine_border_is_reflect_101():
    """A whole-pixel shift involves no interpolation: the pixels brought in from outside must be OpenCV's
    BORDER_REFLECT_101 ones exactly (grid_sample's own "reflection" is BORDER_REFLECT, one pixel off)."""
    for tx, ty in ((5, 0), (0, -7), (-3, 4)):
        t = A.Affine(translate_px={"x": (tx, tx), "y": (ty, ty)}, border_mode=cv2.BORDER_REFLECT_101, p=1)
        got = T.affine(_one(NOISE), torch.zeros(1), torch.tensor([float(tx)]), torch.tensor([float(ty)]),
                       torch.ones(1), torch.ones(1))[0]  # fmt: skip
        assert np.array_equal(got.numpy(), t(image=NOISE)["image"])
    rgb = T.affine(torch.from_numpy(RGB)[None], torch.tensor([10.0]), *torch.zeros(2, 1), *torch.ones(2, 1))
    assert rgb.shape == (1, 48, 40, 3) and rgb.dtype == torch.uint8


@pytest.mark.parametrize("c,b", [(0.3, 0.3), (-0.3, -0.3), (0.123, -0.077), (-0.21, 0.29)])
def test_brightness_contrast_is_albumentations_exactly(c, b):
    t = A.RandomBrightnessContrast(brightness_limit=(b, b), contrast_limit=(c, c), p=1)
    for img in (NOISE, RGB):
        got = T.brightness_contrast(_one(img), torch.tensor([1.0 + c]), torch.tensor([b * 255.0]))[0]
        assert np.array_equal(got.numpy(), t(image=img)["image"])


def test_dropout_boxes_are_albumentations_exactly():
    t = A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(6, 12), hole_width_range=(6, 12), p=1)
    holes = np.array([[3, 5, 10, 17], [40, 0, 48, 9]])  # x0, y0, x1, y1; the second touches two edges
    for img in (NOISE, RGB):
        want = t.apply(img, holes=holes, seed=0)
        got = T.dropout(_one(img), torch.from_numpy(holes)[None])[0].numpy()
        assert np.array_equal(got, want) and (got == 0).sum() > (img == 0).sum()
    empty = torch.tensor([[[4, 4, 4, 10], [0, 0, 0, 0]]])  # unused holes change nothing
    assert torch.equal(T.dropout(_one(NOISE), empty), _one(NOISE))


def test_parameters_follow_the_albumentations_policy():
    """Over 20,000 samples: each transform applies at the policy's rate, every magnitude stays in its range,
    and the holes are sized and placed as build_train_transform sizes them."""
    for s in (0.5, 1.0):
        n, size = 20_000, 48
        p = T.sample_params(T.uniforms(seed=7, epoch=3, positions=torch.arange(n)), s, size, size)
        rates = {k: getattr(p, k).float().mean().item() for k in ("flip", "affine", "color")}
        assert abs(rates["flip"] - 0.5) < 0.02
        assert abs(rates["affine"] - min(1.0, 0.9 * s + 0.1)) < 0.02
        assert abs(rates["color"] - min(1.0, 0.8 * s + 0.1)) < 0.02
        for key, half in (("angle", 20 * s), ("sx", 0.15 * s), ("alpha", 0.3 * s), ("beta", 0.3 * s * 255)):
            v = getattr(p, key) - (1.0 if key in ("sx", "alpha") else 0.0)
            assert v.abs().max() <= half and v.abs().max() > 0.99 * half and abs(v.mean()) < 0.02 * half, key
        assert p.tx.abs().max() == int(0.1 * s * size) and torch.equal(p.tx, p.tx.trunc())
        boxes = p.boxes
        used = boxes[..., 2] > boxes[..., 0]
        assert abs(used[:, 0].float().mean().item() - 0.5 * s) < 0.02  # CoarseDropout's p
        assert abs(used[:, 1].float().mean().item() - 0.25 * s) < 0.02  # and 1 or 2 holes, equally likely
        side = build_train_transform(s, size).transforms[-1].hole_height_range
        hw = (boxes[..., 2] - boxes[..., 0])[used]
        assert set(hw.tolist()) == set(range(side[0], side[1] + 1))
        assert boxes.min() >= 0 and boxes[..., 2:].max() <= size


def test_same_parameters_for_the_same_sample_whatever_the_batch():
    u = T.uniforms(seed=1, epoch=2, positions=torch.arange(16))
    halves = torch.cat([T.uniforms(1, 2, torch.arange(8)), T.uniforms(1, 2, torch.arange(8, 16))])
    assert torch.equal(u, halves) and torch.equal(u, T.uniforms(1, 2, torch.arange(16)))
    others = [T.uniforms(2, 2, torch.arange(16)), T.uniforms(1, 3, torch.arange(16))]
    assert all((o != u).float().mean() > 0.99 for o in others)  # another seed, another epoch
    assert (u[0] != u[1]).all() and u.min() >= 0 and u.max() < 1  # another sample


def _fmix32(h: int) -> int:  # MurmurHash3's finaliser on Python's exact integers
    h ^= h >> 16
    h = h * 0x85EBCA6B & 0xFFFFFFFF
    h ^= h >> 13
    h = h * 0xC2B2AE35 & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_the_hash_is_exact_integer_arithmetic():
    """The tensor hash equals the same hash on Python's unbounded integers, bit for bit (also for seeds and
    epochs past 32 bits and a negative seed): no step overflows int64, so every device computes it alike."""
    positions = [0, 1, 63, 12_345, 2**32 - 1]
    for seed, epoch in ((0, 1), (123_456_789_012, 7), (-5, 2**33 + 3)):
        key = [_fmix32(p ^ _fmix32((epoch & 0xFFFFFFFF) ^ _fmix32(seed & 0xFFFFFFFF))) for p in positions]
        want = [[(_fmix32((k + j * 0x9E3779B9) & 0xFFFFFFFF) >> 8) / 2**24 for j in range(1, 4)] for k in key]
        got = T.uniforms(seed, epoch, torch.tensor(positions), draws=3)
        assert got.tolist() == want


def _batches(seed: int, strength: float = 1.0) -> DeviceBatches:
    images = np.stack([np.roll(SMOOTH, k, axis=1) for k in range(40)])
    data = SplitData("train", ("a", "b"), images, np.arange(40) % 2, [], [], [])
    sampler = EpochSampler(32, seed=seed, num_samples=24)
    return DeviceBatches(
        data, np.arange(4, 36), sampler, 8, torch.device("cpu"), T.BatchAugment(strength, seed)
    )


def test_device_batches_are_the_same_for_the_same_seed_and_epoch():
    a, b = _batches(seed=3), _batches(seed=3)
    assert len(a) == 3
    for epoch in (1, 2):
        a.sampler.set_epoch(epoch)
        b.sampler.set_epoch(epoch)
        first, second = list(a), list(b)
        assert [x.shape for x, _ in first] == [(8, 48, 48)] * 3 and first[0][1].dtype == torch.int64
        for (xa, ya), (xb, yb) in zip(first, second):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.sampler.set_epoch(1)
    b.sampler.set_epoch(2)
    assert not torch.equal(next(iter(a))[0], next(iter(b))[0])
    a.sampler.set_epoch(1)
    c = _batches(seed=4)
    c.sampler.set_epoch(1)
    assert not torch.equal(next(iter(a))[0], next(iter(c))[0])


def test_batches_take_the_sampler_order_and_their_labels():
    plain = _batches(seed=5)
    plain.augment = None
    plain.sampler.set_epoch(1)
    order = plain.sampler.order()
    x, y = next(iter(plain))
    rows = 4 + order[:8].numpy()
    assert torch.equal(y, torch.from_numpy(rows % 2)) and torch.equal(
        x[0], torch.from_numpy(np.roll(SMOOTH, rows[0], 1))
    )


def test_resume_continues_exactly_with_the_torch_backend(demo_root, tmp_path):
    """As tests/test_train.py's resume test: stop after epoch 1 of 3, resume, compare with an uninterrupted run."""
    cfg = tiny_config(demo_root, tmp_path / "a", epochs=3, aug_strength=0.8, augment_backend="torch")
    full = train(cfg)

    def stop_after_first(row, ckpt_dir):
        if row["epoch"] == 1:
            raise Stop

    cfg_b = dict(cfg, out=str(tmp_path / "b"))
    with pytest.raises(Stop):
        train(cfg_b, report=stop_after_first)
    resumed = train(cfg_b, resume_from=tmp_path / "b" / "checkpoints" / "last.pt")
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert [r["val_loss"] for r in full["history"]] == [r["val_loss"] for r in resumed["history"]]


def test_resume_refuses_a_backend_that_draws_other_images(demo_root, tmp_path):
    # auto resolves by device: a run begun on a GPU (torch) and resumed on a CPU (albumentations) would not
    # continue the same run.
    train(tiny_config(demo_root, tmp_path / "g", epochs=1, augment_backend="torch"))
    last = tmp_path / "g" / "checkpoints" / "last.pt"
    with pytest.raises(
        CheckpointError, match="trained with augment_backend torch .* resolves albumentations"
    ):
        train(tiny_config(demo_root, tmp_path / "g", epochs=1, augment_backend="auto"), resume_from=last)


def test_the_trainer_serves_batches_from_the_backend_it_resolved(demo_root, tmp_path):
    torch_run = Trainer(make_config(tiny_config(demo_root, tmp_path / "t", augment_backend="torch")))
    assert isinstance(torch_run.loader, DeviceBatches) and isinstance(
        torch_run.loader.augment, T.BatchAugment
    )
    assert len(torch_run.loader) == 3 and torch_run.runtime.num_workers == 0
    off = tiny_config(demo_root, tmp_path / "z", augment_backend="torch", aug_strength=0)
    assert Trainer(make_config(off)).loader.augment is None
    cpu_default = Trainer(make_config(tiny_config(demo_root, tmp_path / "d")))
    assert cpu_default.runtime.augment_backend == "albumentations"  # a CPU run computes what it always has
    assert isinstance(cpu_default.loader, torch.utils.data.DataLoader)


BLOCKED = """
import json, sys
sys.modules["albumentations"] = None  # as if not installed: importing it raises ImportError
sys.modules["cv2"] = None
import fer_core.trainer
from fer_core.errors import FerError
from fer_core.train import train
cfg = json.loads(sys.argv[1])
rows = train(cfg)["history"]
try:
    train(dict(cfg, out=cfg["out"] + "-alb", augment_backend="albumentations"))
except FerError as e:
    print("refused:", e)
print("trained", len(rows), "albumentations" in sys.modules and sys.modules["albumentations"] is not None)
"""


def test_trainer_imports_and_trains_without_albumentations(demo_root, tmp_path):
    cfg = tiny_config(demo_root, tmp_path / "t", epochs=1, augment_backend="torch", audit=False)
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED, json.dumps(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trained 1 False" in out.stdout
    assert "refused: key 'augment_backend' resolved to albumentations, which is not installed" in out.stdout


def test_bench_augment_prints_both_backends_and_their_ratio(demo_root, capsys):
    args = [
        "--data",
        str(demo_root),
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--seconds",
        "0.01",
        "--rounds",
        "1",
    ]
    bench_augment.main([*args, "--strengths", "0.5"])
    out = capsys.readouterr().out
    assert f"data: {demo_root} (val split), 24 of 28 images at 32 px" in out
    assert "strength 0.5: albumentations" in out and "torch/albumentations" in out
