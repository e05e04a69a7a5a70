"""``fer_core.timing.time_training``: the timing of one TrainConfig's training steps, validation and
checkpoint write, on the small demo set."""

from __future__ import annotations

import dataclasses

import pytest

from fer_core.config import make_config
from fer_core.timing import TrainingTiming, time_training

from .conftest import tiny_config


def test_time_training_measures_steps_validation_and_checkpoint(demo_root, tmp_path):
    cfg = make_config(tiny_config(demo_root, tmp_path / "never-written"))
    before = dataclasses.asdict(cfg)
    t = time_training(cfg, warmup_steps=1, timed_steps=3, chunks=2, eval_images=12)
    assert isinstance(t, TrainingTiming)
    assert dataclasses.asdict(cfg) == before  # the caller's config is left as it was
    assert not (tmp_path / "never-written").exists()  # it wrote into a temporary folder
    assert t.setup_s > 0 and t.warmup_s > 0 and t.checkpoint_s > 0, t
    assert t.images_per_s > 0 and t.eval_images_per_s > 0, t
    # All steps' rate lies between the two chunks' rates; the fastest chunk is at least that.
    assert t.best_images_per_s >= t.images_per_s * (1 - 1e-9), t
    assert t.train_images == 7 * 10  # the demo set's 10 train images per class
    assert t.runtime.startswith("cpu [cpu (1 threads)]"), t.runtime


def test_time_training_without_validation_or_warmup(demo_root, tmp_path):
    cfg = make_config(tiny_config(demo_root, tmp_path / "o"))
    t = time_training(cfg, warmup_steps=0, timed_steps=2)
    assert (t.eval_images_per_s, t.checkpoint_s) == (0.0, 0.0)
    assert t.images_per_s == pytest.approx(t.best_images_per_s)  # one chunk: the same rate
    assert t.warmup_s < t.setup_s  # no warm-up pass ran (building the model alone takes longer)
    with pytest.raises(ValueError, match="timed_steps = 0; it must be at least 1"):
        time_training(cfg, warmup_steps=1, timed_steps=0)
