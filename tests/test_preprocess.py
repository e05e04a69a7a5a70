"""The preprocessing contract puts the pixels in as they are: no input blur in training, the Predictor or
ONNX, and checkpoints written by versions that had one still load, with a warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_core.apps.export import check_onnx, export_onnx
from fer_core.apps.predict import Predictor
from fer_core.checkpoint import load_checkpoint, save_checkpoint
from fer_core.errors import CheckpointError
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
    assert "blur_sigma" not in state["preprocess"] and "blur_sigma" not in state["config"]
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


def test_a_checkpoint_trained_with_the_old_input_blur_loads_without_it(run, demo_root, tmp_path):
    old = tmp_path / "old.pt"
    state = load_checkpoint(run["best_checkpoint"])
    state["preprocess"]["blur_sigma"] = 3.25  # what the earlier auto blur recorded on a blurred train split
    state["config"]["blur_sigma"] = -1.0
    save_checkpoint(state, old)
    with pytest.warns(UserWarning, match="input blur of 3.25 px, which fer_core no longer applies"):
        legacy = Predictor.from_checkpoint(old, device="cpu")
    current = Predictor.from_checkpoint(run["best_checkpoint"], device="cpu")
    x = _checkerboard(4, legacy.preprocess.img_size)
    assert np.array_equal(legacy.predict_batch(x), current.predict_batch(x))
    # Its ONNX graph has no blur either: onnxruntime agrees with the un-blurred PyTorch path on sharp images.
    with pytest.warns(UserWarning, match="input blur"):
        onnx_path = export_onnx(old, tmp_path / "old.onnx")
        r = check_onnx(onnx_path, old, batch_size=4, bench_batch=0, images=x)
    assert r["max_abs_diff"] < 1e-4 and r["max_abs_diff_eager"] < 1e-4, r
    # Resuming would silently change the input half-way through a run: refused.
    with pytest.raises(CheckpointError, match="trained with an input blur"):
        train(tiny_config(demo_root, tmp_path / "r", epochs=2), resume_from=old)
