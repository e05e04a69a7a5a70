"""The preprocessing contract between training, evaluation, prediction and export.

Images reach the model as uint8 (decoded at ``img_size``, gray or RGB); this turns a uint8 batch into the
normalised float input on the device. It is stored in every checkpoint, so prediction never asks the
user to type sizes or means again.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

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

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict, source: str = "checkpoint") -> Preprocess:
        """The contract stored in a checkpoint. Checkpoints of fer_core versions with an input blur
        (``blur_sigma``) still load: the blur is no longer applied, and a warning says so, because the
        model was trained on blurred inputs and may score differently on sharp ones."""
        sigma = float(d.get("blur_sigma", 0.0))
        if sigma > 0:
            warnings.warn(
                f"{source}: trained with an input blur of {sigma:g} px, which fer_core no longer applies; "
                "its accuracy on sharp images may differ from its recorded metrics: retrain it to be sure",
                stacklevel=2,
            )
        return cls(
            int(d["img_size"]),
            bool(d["grayscale"]),
            tuple(d["mean"]),
            tuple(d["std"]),
            bool(d.get("per_image", False)),
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
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255.0
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, runtime: Runtime | None = None) -> torch.Tensor:
        """uint8 batch -> normalised float B×3×H×W on the runtime's device (channels_last when it says so)."""
        x = self.normalize(images.to(runtime.device if runtime else images.device, non_blocking=True))
        if runtime is not None and runtime.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()
