"""The torch augmentation backend: ``fer_core.augment``'s policy applied to a whole uint8 batch on its device.

The same transforms, ranges and probabilities as ``augment.build_train_transform`` at the same strength
(horizontal flip; affine rotation, translation and scale with OpenCV's BORDER_REFLECT_101; brightness and
contrast as albumentations computes them; one or two black boxes), computed for a batch at once with tensor
ops, so no CPU worker augments image by image. Each sample's parameters come from a counter-based hash of
(seed, epoch, position in the epoch) in integer tensor ops: the same parameters on CPU and GPU, whatever
the batch size, and a resumed run draws what an uninterrupted one drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
DRAWS = 21  # uniform numbers per sample: see ``sample_params``


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """``a * c mod 2**32`` for int64 ``a`` in [0, 2**32) without int64 overflow (defined on every device):
    the high 16 bits of ``a`` only meet the low 16 bits of ``c``, since the rest vanishes mod 2**32."""
    lo, hi = a & 0xFFFF, a >> 16
    return (lo * c + ((hi * (c & 0xFFFF)) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: every input bit flips about half of the output bits."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def uniforms(seed: int, epoch: int, positions: torch.Tensor, draws: int = DRAWS) -> torch.Tensor:
    """``draws`` uniform floats in [0, 1) per position: float32 ``len(positions)`` × ``draws``, a pure
    function of (seed, epoch, position, draw) computed on ``positions``' device.

    Args:
        seed, epoch: the run's seed and the epoch (taken modulo 2**32).
        positions: int64 positions of the samples in the epoch's order.
        draws: numbers per sample.
    """
    key = positions.to(torch.int64) & _M32
    key = _fmix32(
        key ^ _fmix32(torch.full_like(key, epoch & _M32) ^ _fmix32(torch.full_like(key, seed & _M32)))
    )
    offsets = torch.arange(1, draws + 1, device=key.device, dtype=torch.int64)
    h = _fmix32((key[:, None] + _mul32(offsets, _GOLDEN)[None, :]) & _M32)
    return (h >> 8).to(torch.float32) / float(1 << 24)  # 24 bits: exact in float32


@dataclass(frozen=True)
class AugParams:
    """Per-sample parameters of one batch (each a tensor with the batch as its first dimension).

    flip, affine, color, holes: whether each transform applies; angle (degrees), tx, ty (whole pixels),
    sx, sy: the affine; alpha (contrast factor), beta (brightness, grey levels); boxes: B×2×4 int64 holes
    (x0, y0, x1, y1), an unused hole empty (x0 == x1)."""

    flip: torch.Tensor
    affine: torch.Tensor
    angle: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    sx: torch.Tensor
    sy: torch.Tensor
    color: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    boxes: torch.Tensor


def hole_sizes(strength: float, img_size: int) -> tuple[int, int]:
    """The occlusion boxes' side range in pixels, as ``augment.build_train_transform`` sizes them."""
    max_hole = max(1, int(round(img_size * 0.25 * strength)))
    return max(1, max_hole // 2), max_hole


def sample_params(u: torch.Tensor, strength: float, height: int, width: int) -> AugParams:
    """Map ``uniforms`` (B × DRAWS) to the policy's parameters, mirroring how albumentations draws them:
    each transform applies with its probability; rotation, translation (a fraction of the side, truncated to
    whole pixels), x and y scale, contrast (1 + c) and brightness (b · 255) are uniform in their ranges; one
    or two holes (equally likely), each side an integer uniform in [min_hole, max_hole], each corner an
    integer uniform over the positions that keep the hole inside the image."""
    s = float(strength)

    def between(col: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * u[:, col]

    def integer(col: int, count: torch.Tensor | int) -> torch.Tensor:  # uniform in [0, count)
        return torch.floor(u[:, col] * count).to(torch.int64)

    lo_hole, hi_hole = hole_sizes(s, min(height, width))
    n_sizes = hi_hole - lo_hole + 1
    holes = []
    for k in range(2):
        c = 13 + 4 * k
        h = lo_hole + integer(c, n_sizes)
        w = lo_hole + integer(c + 1, n_sizes)
        y0 = integer(c + 2, height - h + 1)
        x0 = integer(c + 3, width - w + 1)
        used = u[:, 11] < 0.5 if k else torch.ones_like(h, dtype=torch.bool)  # the second of 1 or 2 holes
        x1 = torch.where(used, x0 + w, x0)
        holes.append(torch.stack([x0, y0, x1, y0 + h], dim=1))
    return AugParams(
        flip=u[:, 0] < 0.5,
        affine=u[:, 1] < min(1.0, 0.9 * s + 0.1),
        angle=between(2, -20 * s, 20 * s),
        tx=torch.trunc(between(3, -0.1 * s, 0.1 * s) * width),
        ty=torch.trunc(between(4, -0.1 * s, 0.1 * s) * height),
        sx=between(5, 1 - 0.15 * s, 1 + 0.15 * s),
        sy=between(6, 1 - 0.15 * s, 1 + 0.15 * s),
        color=u[:, 7] < min(1.0, 0.8 * s + 0.1),
        alpha=1.0 + between(8, -0.3 * s, 0.3 * s),
        beta=between(9, -0.3 * s, 0.3 * s) * 255.0,
        boxes=torch.stack(holes, dim=1) * (u[:, 12] < 0.5 * s)[:, None, None],
    )


def _channels_first(images: torch.Tensor) -> torch.Tensor:
    """uint8 B×H×W or B×H×W×C -> float32 B×C×H×W."""
    x = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return x.float()


def _like_input(x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """float32 B×C×H×W (already in 0..255 whole numbers) -> uint8 in ``images``' layout."""
    x = x.to(torch.uint8)
    return x.squeeze(1) if images.ndim == 3 else x.permute(0, 2, 3, 1).contiguous()


def _reflect101(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Fold a pixel coordinate into [0, size-1] as OpenCV's BORDER_REFLECT_101 does (…2 1 | 0 1 2 … n-1 |
    n-2 …): mirrored about the first and last pixel centres, with no repeated edge pixel (grid_sample's
    "reflection" padding repeats it: that is BORDER_REFLECT). Bilinear weights are symmetric, so folding the
    coordinate gives what OpenCV gets by folding each neighbour's index."""
    if size == 1:
        return torch.zeros_like(coord)
    period = 2 * (size - 1)
    c = torch.remainder(coord, period)
    return torch.where(c > size - 1, period - c, c)


def flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``mask`` is set (uint8 B×H×W or B×H×W×C)."""
    m = mask.view(-1, *([1] * (images.ndim - 1)))
    return torch.where(m, images.flip(2), images)  # axis 2 is the width in both layouts


def affine(
    images: torch.Tensor,
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    sx: torch.Tensor,
    sy: torch.Tensor,
) -> torch.Tensor:
    """albumentations' ``Affine`` (no shear, same output size) on a uint8 batch: rotation by ``angle``
    degrees, scale (sx, sy) and translation (tx, ty) pixels about the image centre ((w-1)/2, (h-1)/2),
    bilinear, BORDER_REFLECT_101, rounded to the nearest grey level.

    albumentations maps a source pixel p to ``R·S·(p - c) + c + t`` with ``R = [[cos, sin], [-sin, cos]]``;
    each output pixel samples the source at the inverse of that map."""
    b, h, w = images.shape[:3]
    x = _channels_first(images)
    dev = x.device
    rad = torch.deg2rad(angle.float())
    cos, sin = torch.cos(rad)[:, None, None], torch.sin(rad)[:, None, None]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    yy, xx = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32),
        torch.arange(w, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    dx = xx[None] - cx - tx.float()[:, None, None]
    dy = yy[None] - cy - ty.float()[:, None, None]
    src_x = (cos * dx - sin * dy) / sx.float()[:, None, None] + cx
    src_y = (sin * dx + cos * dy) / sy.float()[:, None, None] + cy
    # Normalised to [-1, 1] with align_corners=True: -1 and 1 are the first and last pixel centres.
    grid = torch.stack(
        [_reflect101(src_x, w) * (2 / max(w - 1, 1)) - 1, _reflect101(src_y, h) * (2 / max(h - 1, 1)) - 1],
        dim=-1,
    )
    out = F.grid_sample(x, grid.view(b, h, w, 2), mode="bilinear", padding_mode="border", align_corners=True)
    return _like_input(out.round_().clamp_(0, 255), images)


def brightness_contrast(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """albumentations' ``RandomBrightnessContrast`` on uint8 (brightness_by_max): ``v · alpha + beta`` in
    float32, clipped to 0..255 and truncated, as its lookup table computes it (contrast scales about 0,
    not about the mean)."""
    shape = (-1, *([1] * (images.ndim - 1)))
    y = images.float() * alpha.float().view(shape) + beta.float().view(shape)
    return y.clamp_(0, 255).to(torch.uint8)


def dropout(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """albumentations' ``CoarseDropout`` with fill 0: black out each box ``[y0, y1) × [x0, x1)`` of
    ``boxes`` (B×K×4 int64 x0, y0, x1, y1; an empty box changes nothing)."""
    h, w = images.shape[1:3]
    dev = images.device
    ys = torch.arange(h, device=dev)[None, None, :, None]
    xs = torch.arange(w, device=dev)[None, None, None, :]
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    hit = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)).any(dim=1)  # B×H×W
    if images.ndim == 4:
        hit = hit[..., None]
    return images.masked_fill(hit, 0)


def apply(images: torch.Tensor, p: AugParams) -> torch.Tensor:
    """The policy in albumentations' order (flip, affine, brightness/contrast, holes), each transform kept
    only where its sample drew it."""
    keep = (-1, *([1] * (images.ndim - 1)))
    x = flip(images, p.flip)
    x = torch.where(p.affine.view(keep), affine(x, p.angle, p.tx, p.ty, p.sx, p.sy), x)
    x = torch.where(p.color.view(keep), brightness_contrast(x, p.alpha, p.beta), x)
    return dropout(x, p.boxes)


class BatchAugment:
    """The training policy at ``strength`` for batches: ``aug(images, epoch, positions)``.

    Args:
        strength: 0 (off) .. 1 (full policy), as ``augment.build_train_transform``.
        seed: the run's seed (the parameters hash it with the epoch and each sample's position).
    """

    def __init__(self, strength: float, seed: int = 0):
        s = float(strength)
        if not 0.0 < s <= 1.0:
            raise ValueError(f"augmentation strength must be in (0, 1], got {s}")
        self.strength, self.seed = s, seed

    def params(self, images: torch.Tensor, epoch: int, positions: torch.Tensor) -> AugParams:
        h, w = images.shape[1:3]
        return sample_params(uniforms(self.seed, epoch, positions), self.strength, h, w)

    def __call__(self, images: torch.Tensor, epoch: int, positions: torch.Tensor) -> torch.Tensor:
        """uint8 B×H×W (or B×H×W×C) on any device -> the augmented batch, same shape, device and dtype."""
        return apply(images, self.params(images, epoch, positions))
