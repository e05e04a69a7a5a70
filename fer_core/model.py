"""Model construction (timm) and loading of local weight files.

The normalisation a model needs comes from its timm pretrained config (ImageNet mean/std for
efficientnet_b0, 0.5/0.5 for the tf_*lite* ports): pretrained weights used with the wrong normalisation
start from a needlessly bad place, so the pair is decided here and stored in every checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError, ConfigError


def build_model(
    name: str = "efficientnet_b0",
    num_classes: int = 7,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    drop_rate: float = 0.2,
    drop_path_rate: float = 0.0,
    bn_momentum: float = 0.0,
) -> nn.Module:
    """Create a timm classifier, optionally starting from hub or local weights.

    Args:
        name: timm model name.
        num_classes: classifier outputs.
        pretrained: fetch timm's ImageNet weights from the hub (needs internet).
        weights: local weights file to load instead (see ``load_weights``).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth.
        bn_momentum: if > 0, set every BatchNorm's momentum (TF-ported models use 0.01, which adapts
            running statistics ten times slower than PyTorch's 0.1 and hurts short fine-tunes).

    Raises:
        ConfigError: unknown model name.
        CheckpointError: hub download failed, or the weights file does not fit.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise ConfigError(
            f"key 'model' = {name!r} is not a timm model; try efficientnet_b0 (see timm.list_models('*efficientnet*'))"
        )
    try:
        model = timm.create_model(
            name,
            pretrained=pretrained,
            num_classes=num_classes,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
    except (OSError, RuntimeError, ValueError) as e:
        if not pretrained:
            raise
        raise CheckpointError(
            f"could not fetch ImageNet weights for {name} from the hub ({type(e).__name__}); "
            "set pretrained: false, or weights: PATH to a local weights file"
        ) from None
    head_loaded = load_weights(model, weights) if weights else False
    if not head_loaded:
        # A zero head starts every class at equal probability (loss ln 7): timm's random head starts with
        # logits of magnitude ~10 and a loss near 4, and the first hundreds of steps go into undoing that.
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
    if bn_momentum > 0:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    return model


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the model's pretrained weights expect, from its timm config."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file: .safetensors, or a torch file holding a state dict (possibly under 'model'/'state_dict').

    Raises:
        CheckpointError: missing file, unreadable file, or no tensors in it.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: weights file not found; check the 'weights' path")
    try:
        if p.suffix == ".safetensors":
            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors/pickle raise many unrelated types; all mean "unreadable"
        raise CheckpointError(
            f"{p}: not a readable weights file ({type(e).__name__}: {str(e)[:120]}); pass a .safetensors or torch state-dict file"
        ) from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            f"{p}: holds no state dict of tensors; pass a .safetensors or torch state-dict file"
        )
    # Weights saved from DataParallel / torch.compile carry prefixes the bare model does not have.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, path: str | os.PathLike) -> bool:
    """Load a local weights file into ``model``; the classifier is skipped when its shape differs.

    Args:
        model: a timm model.
        path: .safetensors or torch state-dict file.

    Returns:
        True when the classifier was loaded too, False when it was skipped.

    Raises:
        CheckpointError: keys or shapes (other than the classifier's) do not match.
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    head = (
        model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else "classifier"
    )
    dropped = [k for k in sd if k.startswith(head + ".") and k in own and sd[k].shape != own[k].shape]
    for k in dropped:
        del sd[k]
    missing = [k for k in own if k not in sd and not (dropped and k.startswith(head + "."))]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        detail = "; ".join(
            f"{what} {len(keys)} (e.g. {keys[0]})"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape-mismatched", bad_shape),
            )
            if keys
        )
        raise CheckpointError(
            f"{path}: weights do not match model {type(model).__name__} ({detail}); "
            "set 'model' to the architecture the file was saved from"
        )
    model.load_state_dict(sd, strict=not dropped)
    return not dropped
