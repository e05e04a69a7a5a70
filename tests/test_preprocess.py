"""The preprocessing contract: the pixels go in as they are (normalised, nothing else) in training and the
Predictor, ``normalize: auto`` follows the starting weights, and the normalisation constants are built
once per device, with the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fer_core.apps.predict import Predictor
from fer_core.checkpoint import load_checkpoint
from fer_core.preprocess import Preprocess
from fer_core.train import train

from .conftest import tiny_config


def _checkerboard(n: int, size: int) -> np.ndarray:
    """Sharp 1-px detail: any blur changes these pixels a lot (0/255 next to each other)."""
    yy, xx = np.mgrid[:size, :size]
    board = ((yy + xx) % 2 * 255).astype(np.uint8)
    return np.stack([np.roll(board, k, axis=1) // (k + 1) for k in range(n)])


@pytest.fixture(scope="module")
def run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    return train(tiny_config(demo_root, out, epochs=1, steps_per_epoch=2))


def test_normalize_auto_follows_the_starting_weights(run, demo_root, tmp_path):
    from safetensors.torch import save_file

    from fer_core.model import build_model

    # From scratch: per-image standardisation; from a weights file: the weights' own mean/std.
    assert load_checkpoint(run["best_checkpoint"])["preprocess"]["per_image"] is True
    weights = tmp_path / "w.safetensors"
    save_file(
        {k: v.contiguous() for k, v in build_model("efficientnet_b0", 7).state_dict().items()}, str(weights)
    )
    res = train(tiny_config(demo_root, tmp_path / "w", epochs=1, steps_per_epoch=1, weights=str(weights)))
    assert load_checkpoint(res["best_checkpoint"])["preprocess"]["per_image"] is False
    res = train(
        tiny_config(
            demo_root,
            tmp_path / "x",
            epochs=1,
            steps_per_epoch=1,
            weights=str(weights),
            normalize="per_image",
        )
    )
    assert load_checkpoint(res["best_checkpoint"])["preprocess"]["per_image"] is True


def test_prediction_sees_the_raw_pixels(run):
    state = load_checkpoint(run["best_checkpoint"])
    assert set(state["preprocess"]) == {"img_size", "grayscale", "mean", "std", "per_image"}
    pred = Predictor.from_checkpoint(run["best_checkpoint"], device="cpu")
    x = _checkerboard(3, pred.preprocess.img_size)
    got = pred.preprocess.normalize(torch.from_numpy(x))
    # Per-image standardisation of the untouched pixels, gray repeated to 3 channels: nothing else.
    f = torch.from_numpy(x).float()
    m = f.mean(dim=(1, 2), keepdim=True)
    sd = f.std(dim=(1, 2), keepdim=True, unbiased=False).clamp_min(1.0)
    want = ((f - m) / sd).unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.allclose(got, want, atol=1e-5)
    assert (
        got.abs().max() > 0.9
    )  # the checkerboard's contrast survives (a 1.5 px blur would flatten it to ~0)


class _CountOps(TorchDispatchMode):
    """The names of the aten operators run while it is active."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_normalize_builds_its_constants_once_and_keeps_the_numbers():
    pre = Preprocess(img_size=8, grayscale=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rgb = torch.from_numpy(np.stack([_checkerboard(3, 8)[k] for k in range(3)], axis=-1)[None].repeat(2, 0))
    first = pre.normalize(rgb)
    with _CountOps() as ops:
        second = pre.normalize(rgb)
    # No tensor built from Python data (aten.lift_fresh): on CUDA that is a host-to-device copy per step.
    assert "aten.lift_fresh.default" not in ops.names, ops.names
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0
    want = (rgb.permute(0, 3, 1, 2).float() - mean) / std
    assert torch.equal(first, want) and torch.equal(second, want)  # bit-identical, first call and later
