"""Training augmentation: one ``strength`` in [0, 1] scales a whole albumentations policy.

A single knob is what makes augmentation tunable by a sweep: the search needs one dimension, not a dozen
interacting probabilities. At strength s every magnitude and probability below grows linearly with s;
s = 0 returns None (no transform at all, not an identity pipeline that still costs time).

Validation and test use no transform: images are already decoded at the input size, and normalisation is
done batched on the device (``preprocess.Preprocess``), so evaluation is deterministic by construction.
"""

from __future__ import annotations

import albumentations as A
import cv2


def build_train_transform(strength: float, img_size: int, seed: int = 0) -> A.Compose | None:
    """The training policy at a given strength.

    At strength 1: horizontal flip (p 0.5; expressions are left-right symmetric), rotation up to ±20°,
    shift up to ±10 %, scale ±15 % (faces in FER crops vary about that much), brightness and contrast
    ±30 %, and one or two occluding boxes of up to a quarter of the side (hands, glasses, hair cover faces
    in the wild). Flip stays at p 0.5 for any s > 0: it is free, label-preserving and always helps.

    Args:
        strength: 0 (off) .. 1 (full policy).
        img_size: input size, to size the occlusion boxes in pixels.
        seed: initial seed of the pipeline (the dataset reseeds it per sample).

    Returns:
        An albumentations Compose working on uint8 H×W or H×W×3 arrays, or None at strength 0.
    """
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"augmentation strength must be in [0, 1], got {s}")
    if s == 0.0:
        return None
    max_hole = max(1, int(round(img_size * 0.25 * s)))
    min_hole = max(1, max_hole // 2)
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                rotate=(-20 * s, 20 * s),
                translate_percent=(-0.10 * s, 0.10 * s),
                scale=(1 - 0.15 * s, 1 + 0.15 * s),
                border_mode=cv2.BORDER_REFLECT_101,  # reflect, so no black corners the model could learn
                p=min(1.0, 0.9 * s + 0.1),
            ),
            A.RandomBrightnessContrast(
                brightness_limit=0.3 * s, contrast_limit=0.3 * s, p=min(1.0, 0.8 * s + 0.1)
            ),
            A.CoarseDropout(
                num_holes_range=(1, 2),
                hole_height_range=(min_hole, max_hole),
                hole_width_range=(min_hole, max_hole),
                fill=0,
                p=0.5 * s,
            ),
        ],
        seed=seed,
    )
