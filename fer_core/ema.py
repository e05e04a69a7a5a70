"""Exponential moving average of model weights (evaluated and saved beside the raw weights).

An average of the weights over the last ~1/(1-decay) steps usually scores better than the last step's
weights on noisy data, at the cost of one extra copy of the model and a fused lerp per step.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


class ModelEma(ModelEmaV3):
    """timm's ``ModelEmaV3`` (foreach lerp of the parameters, BatchNorm statistics copied as they are,
    stochastic rounding for bf16) with this project's warm-up, an update count kept for resume, and the
    buffers copied in one batched call over lists built once (timm copies them one by one: ~150 small
    copies a step for an EfficientNet).

    Args:
        model: the trained model (copied).
        decay: per-step decay, e.g. 0.999 (averages ~1,000 steps).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(model, decay=decay, exclude_buffers=True)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self._pairs: tuple | None = None  # (model, ema params, model params, ema buffers, model buffers)

    def get_decay(self, step: int | None = None) -> float:
        # Early on the average would be dominated by the random init, so the effective decay starts near 0
        # and approaches ``decay`` (the TF convention). timm's own warm-up (use_warmup) is a power law that
        # rises more slowly; this one is what the figures in docs/measured.md were measured with.
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Blend the model's current weights in (call after every optimizer step)."""
        self.updates += 1
        if self._pairs is None or self._pairs[0] is not model:
            self._pairs = (
                model,
                list(self.module.parameters()),
                list(model.parameters()),
                list(self.module.buffers()),
                list(model.buffers()),
            )
        _, ema_params, model_params, ema_buffers, model_buffers = self._pairs
        self._foreach_lerp_(ema_params, model_params, weight=1.0 - self.get_decay(self.updates))
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, model_buffers)

    def checkpoint_state(self) -> dict:
        """What a checkpoint keeps (``"module"`` is read by ``checkpoint.load_model``)."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_checkpoint_state(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
