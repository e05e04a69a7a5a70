"""Mixup and CutMix on a normalised batch on the device.

Both blend pairs of training images and their labels, a regulariser that helps noisy-label, small-image
data like FER2013 in long runs (it slows short ones: turn it on for retrains and GPU sweeps, not 3-epoch
CPU trials). The randomness comes from torch's global generator, which ``Trainer.run_epoch`` reseeds per
epoch, so a resumed run mixes exactly as an uninterrupted one.

Kept by hand rather than timm's ``Mixup`` + ``SoftTargetCrossEntropy``: that pair turns labels into soft
targets, which drops the class-weighted loss (``class_weighting``), it needs an even batch size, and it
draws from NumPy's global generator.

A mixed batch reads its few random numbers (whether to mix, which mix, lam, the box) as Python values from
torch's CPU generator: host values drawn on the host, no wait for the GPU; the loss uses lam as a Python
scalar.
"""

from __future__ import annotations

import torch


class BatchMixer:
    """Args: mixup_alpha: Beta(a, a) parameter of mixup (0 = off); cutmix_alpha: same for CutMix (0 = off);
    prob: share of batches that are mixed at all. With both on, each mixed batch uses one of the two at random."""

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0):
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0.0 <= prob <= 1.0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0 and mix_prob in [0, 1]")
        self.mixup_alpha, self.cutmix_alpha, self.prob = float(mixup_alpha), float(cutmix_alpha), float(prob)
        # Built once: a Beta built per batch makes (and validates) its parameter tensors every step.
        self._beta = {
            a: torch.distributions.Beta(a, a) for a in (self.mixup_alpha, self.cutmix_alpha) if a > 0
        }

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Mix a batch.

        Args:
            x: normalised float images B×C×H×W.
            y: int labels.

        Returns:
            (images, labels_a, labels_b, lam): the loss is lam * loss(labels_a) + (1 - lam) * loss(labels_b).
            An unmixed batch comes back as (x, y, y, 1.0).
        """
        if not self.enabled or float(torch.rand(())) >= self.prob:
            return x, y, y, 1.0
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or float(torch.rand(())) < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(self._beta[alpha].sample())
        perm = torch.randperm(x.shape[0]).to(x.device, non_blocking=True)
        if not use_cutmix:
            return x * lam + x[perm] * (1.0 - lam), y, y[perm], lam
        h, w = x.shape[-2:]
        # A box covering (1 - lam) of the image, centred uniformly, clipped at the borders; lam is then
        # recomputed from the clipped area so the label weights match the pixels actually pasted.
        cut = (1.0 - lam) ** 0.5
        bh, bw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        out = x.clone()
        out[..., y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        return out, y, y[perm], lam
