"""Exponential moving average of model weights (evaluated and saved beside the raw weights).

An average of the weights over the last ~1/(1-decay) steps usually scores better than the last step's
weights on noisy data, at the cost of one extra copy of the model and a fused lerp per step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """Args: model: the trained model (copied); decay: per-step decay, e.g. 0.999 (averages ~1,000 steps)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._params, self._buffers = list(self.module.parameters()), list(self.module.buffers())
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current weights in; buffers (BatchNorm statistics) are copied as they are."""
        self.updates += 1
        # Warm-up: early on the average would be dominated by the random init, so the effective decay
        # starts near 0 and approaches ``decay`` as updates accumulate (the timm / TF convention).
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._params, [p.detach() for p in model.parameters()], 1.0 - d)
        torch._foreach_copy_(self._buffers, list(model.buffers()))

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
