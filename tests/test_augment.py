import numpy as np
import pytest

from fer_core.augment import build_train_transform


def _img():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (48, 48), dtype=np.uint8)


def test_strength_zero_is_no_transform():
    assert build_train_transform(0.0, 48) is None


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_gray_in_gray_out_and_seeded(strength):
    t = build_train_transform(strength, 48)
    img = _img()
    t.set_random_seed(5)
    a = t(image=img)["image"]
    t.set_random_seed(5)
    b = t(image=img)["image"]
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)


def test_strength_scales_change():
    img = _img()
    diffs = {}
    for s in (0.1, 1.0):
        t = build_train_transform(s, 48)
        total = 0.0
        for k in range(30):
            t.set_random_seed(k)
            total += np.abs(t(image=img)["image"].astype(float) - img).mean()
        diffs[s] = total / 30
    assert diffs[1.0] > diffs[0.1] > 0


def test_bad_strength():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        build_train_transform(1.5, 48)
