"""The preprocessing contract between training, evaluation, prediction and export.

Images reach the model as uint8 (decoded at ``img_size``, gray or RGB); this turns a uint8 batch into the
normalised float input on the device. It is stored in every checkpoint, so prediction never asks the
user to type sizes or means again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .config import resolve_normalize
from .model import normalization
from .runtime import Runtime


@dataclass(frozen=True)
class Preprocess:
    """Args: img_size: square input size; grayscale: 1-channel decode (repeated to 3 for the stem);
    mean, std: the weights' per-channel normalisation on the 0..1 scale (used when per_image is off);
    per_image: standardise each image by its own mean and std instead.

    Nothing else touches the pixels: a difference between a dataset's splits (blur, contrast) is reported by
    ``fer_core.audit`` for the user to act on, never hidden in here, where it would alter every photo a
    deployed model sees."""

    img_size: int
    grayscale: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    per_image: bool = False

    def __post_init__(self) -> None:
        # The normalisation tensors per device (``_constants``): not a field, so equality, hashing and
        # ``to_dict`` see the contract alone.
        object.__setattr__(self, "_by_device", {})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def for_config(cls, cfg, model) -> Preprocess:
        """The contract a run of TrainConfig ``cfg`` trains ``model`` (``fer_core.model.build_model``'s) with."""
        mean, std = normalization(model)
        per_image = resolve_normalize(cfg) == "per_image"
        return cls(img_size=cfg.img_size, grayscale=cfg.grayscale, mean=mean, std=std, per_image=per_image)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """The contract as ``to_dict`` wrote it into a checkpoint."""
        return cls(
            img_size=int(d["img_size"]),
            grayscale=bool(d["grayscale"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            per_image=bool(d["per_image"]),
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The arithmetic alone, on whatever device ``x`` is: uint8 B×H×W or B×H×W×3 -> float B×3×H×W.

        Shared by training, evaluation, prediction and the ONNX export, so they cannot drift apart.
        The gray channel is repeated, not averaged into a 1-channel stem, so ImageNet stems (and their
        weights) work unchanged; the stem conv's extra cost is under 1 % of the network.
        """
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        x = x.float().expand(-1, 3, -1, -1)
        if self.per_image:
            # Zero mean, unit std per image: exposure and contrast differ between cameras and photos, and a
            # model need not learn that. The floor of 1 grey level keeps a flat image flat instead of
            # amplifying noise.
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            sd = ((x - m) ** 2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            return (x - m) / sd.clamp_min(1.0)
        mean, std = self._constants(x.device)
        return (x - mean) / std

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as 1×3×1×1 tensors on the 0..255 scale, built on ``device`` at its first use
        and kept: built from the Python tuples on every call they would be a host-to-device copy per
        training step on CUDA. Built outside inference mode, so a tensor made during prediction also
        serves training and export."""
        cached = self._by_device.get(device)
        if cached is None:
            with torch.inference_mode(False):
                cached = (
                    torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255.0,
                    torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255.0,
                )
            self._by_device[device] = cached
        return cached

    def __call__(self, images: torch.Tensor, runtime: Runtime | None = None) -> torch.Tensor:
        """uint8 batch -> normalised float B×3×H×W on the runtime's device (channels_last when it says so)."""
        x = self.normalize(images.to(runtime.device if runtime else images.device, non_blocking=True))
        if runtime is not None and runtime.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()
