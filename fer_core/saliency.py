"""Class activation maps: where a trained model looks, as captum's Grad-CAM upsampled over its input.

``class_activation_maps(model, preprocess, images, targets)`` takes the deployed model (``load_model``: the
EMA weights when the run kept an average, in eval mode) and its preprocessing contract, and returns one
map per image in [0, 1] at the input's size. Grad-CAM weights the channels of one convolutional stage by
the gradient of the target class's logit and keeps the positive sum: the regions that raised that class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from .errors import CheckpointError
from .preprocess import Preprocess
from .runtime import Runtime

# The coarsest map worth showing, in cells per side. At 48 px EfficientNet's stages are 24, 12, 6, 3 and 2
# cells wide: the last (2x2) only says which quarter of the face. Of the stages in between, the stride-4
# one (blocks.1, 12x12 cells of 4 px, receptive field ~19 px: an eye, a mouth corner) is the one whose maps
# found the square that decides the class in tests/test_saliency.py (0.51 of the mass on 11 % of the
# image); the 6x6 stage's maps mostly missed it there (0.16), and a 6x6 map draws a brow and an eye as one.
MIN_CELLS = 12


def cam_layer(model: nn.Module, img_size: int) -> tuple[str, nn.Module]:
    """The stage Grad-CAM reads: the deepest of timm's feature stages (``feature_info``) whose map is at least
    ``MIN_CELLS`` cells on a side at ``img_size`` (efficientnet_b0 at 48 px: ``blocks.1``, 12x12).

    Raises:
        CheckpointError: the model lists no feature stages.
    """
    stages = [s for s in getattr(model, "feature_info", None) or [] if "module" in s and "reduction" in s]
    if not stages:
        raise CheckpointError(
            f"model {type(model).__name__} lists no feature stages (timm's feature_info); "
            "class activation maps need a timm CNN such as efficientnet_b0"
        )
    fit = [s for s in stages if img_size // s["reduction"] >= MIN_CELLS] or stages[:1]
    name = fit[-1]["module"]
    return name, model.get_submodule(name)


def class_activation_maps(
    model: nn.Module,
    preprocess: Preprocess,
    images: np.ndarray,
    targets: Sequence[int],
    runtime: Runtime | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Grad-CAM of ``targets`` over uint8 model inputs.

    Args:
        model: the deployed network in eval mode (``fer_core.checkpoint.load_model``).
        preprocess: its preprocessing contract.
        images: uint8 N×S×S (or N×S×S×3) model inputs, as ``Predictor.prepare`` makes them.
        targets: the class whose evidence each map shows, one per image.
        runtime: device settings (default: the model's device, no channels_last).
        batch_size: images per forward and backward pass.

    Returns:
        N×S×S float32 maps, each scaled so its peak is 1 (all zero where nothing raised the class).
    """
    _, layer = cam_layer(model, preprocess.img_size)
    cam = LayerGradCam(model, layer)
    targets = np.asarray(targets, dtype=np.int64)
    side = preprocess.img_size
    out, grid = [], None
    # Gradients are the method: callers may sit in no_grad (a report, a predict loop).
    with torch.enable_grad():
        for start in range(0, len(images), max(1, batch_size)):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            x = preprocess(batch, runtime) if runtime else preprocess(batch.to(_device(model)))
            t = torch.from_numpy(targets[start : start + batch_size]).to(x.device)
            maps = cam.attribute(x, target=t, relu_attributions=True).detach().float()
            if grid is None:
                grid = _pixel_grid(model, layer, side, tuple(maps.shape[-2:]))
            maps = F.grid_sample(
                maps, grid.expand(len(maps), -1, -1, -1), align_corners=True, padding_mode="border"
            )
            maps = maps[:, 0]
            peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
            out.append((maps / peak).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, side, side), np.float32)


def _pixel_grid(model: nn.Module, layer: nn.Module, side: int, cells: tuple[int, int]) -> torch.Tensor:
    """Where each input pixel falls on ``layer``'s h×w map, as ``grid_sample``'s 1×S×S×2 grid.

    A cell is placed at the centre of its receptive field, not at the middle of its stride x stride block:
    with PyTorch's symmetric padding a stride-8 stage's cell k is centred on pixel 8k, with TensorFlow's
    "same" padding (the tf_* models) on 8k + 7, so a plain resize would draw every map half a cell off. The
    centre is measured, on a probe four times the input's side so one cell's field lies inside it: the
    middle of the input pixels its activations have a gradient from.
    """
    h, w = cells
    device = next(model.parameters()).device
    big = torch.randn(1, 3, 4 * side, 4 * side, generator=torch.Generator().manual_seed(0))
    probe = big.to(device).requires_grad_(True)
    seen = {}
    handle = layer.register_forward_hook(lambda _m, _i, o: seen.update(a=o))
    try:
        model(probe)
    finally:
        handle.remove()
    a = seen["a"]
    ky, kx = a.shape[-2] // 2, a.shape[-1] // 2
    (g,) = torch.autograd.grad(a[0, :, ky, kx].sum(), probe)
    reach = g[0].abs().sum(0) > 0
    rows, cols = reach.any(1).nonzero().flatten(), reach.any(0).nonzero().flatten()
    axes = []
    for n, k, hits in ((h, ky, rows), (w, kx, cols)):
        stride = side / n
        first = (hits[0] + hits[-1]).item() / 2 - k * stride  # the centre of cell 0, in pixels
        cell = (torch.arange(side, dtype=torch.float32) - first) / stride
        axes.append(cell / max(n - 1, 1) * 2 - 1)  # grid_sample's [-1, 1] with align_corners
    yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx, yy], dim=-1).unsqueeze(0).to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
