"""The preprocessing contract between training, evaluation, prediction and export.

Images reach the model as uint8 (decoded at ``img_size``, gray or RGB); this turns a uint8 batch into the
normalised float input on the device. It is stored in every checkpoint, so prediction never asks the
user to type sizes or means again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .runtime import Runtime


@dataclass(frozen=True)
class Preprocess:
    """Args: img_size: square input size; grayscale: 1-channel decode (repeated to 3 for the stem);
    mean, std: per-channel normalisation on the 0..1 scale."""

    img_size: int
    grayscale: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["img_size"]), bool(d["grayscale"]), tuple(d["mean"]), tuple(d["std"]))

    def __call__(self, images: torch.Tensor, runtime: Runtime | None = None) -> torch.Tensor:
        """uint8 B×H×W or B×H×W×3 -> normalised float B×3×H×W on the runtime's device.

        The gray channel is repeated, not averaged into a 1-channel stem, so ImageNet stems (and their
        weights) work unchanged; the stem conv's extra cost is under 1 % of the network.
        """
        device = runtime.device if runtime else images.device
        x = images.to(device, non_blocking=True)
        x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255.0
        x = (x.float() - mean) / std
        if runtime is not None and runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.contiguous() if runtime is None or not runtime.channels_last else x
