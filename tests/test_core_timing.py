"""``fer_core.timing``: the timing of one TrainConfig's training steps, validation and checkpoint write, and
of the trainer's own step on a ready batch, on the small demo set."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fer_core.config import make_config
from fer_core.timing import TrainingTiming, time_ready_step, time_training
from fer_core.trainer import Trainer

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


def test_time_ready_step_times_the_trainers_own_step(demo_root, tmp_path):
    trainer = Trainer(make_config(tiny_config(demo_root, tmp_path / "o", ema_decay=0.9)))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    rng = torch.get_rng_state()
    r = time_ready_step(trainer, min_seconds=0.2, warmup_steps=2)
    assert r["seconds"] >= 0.2 and r["batch_size"] == 8, r
    assert r["images_per_s"] == pytest.approx(r["steps"] * 8 / r["seconds"]), r
    # It ran the real step (the weights, the optimizer's count and the EMA moved) and left torch's RNG alone.
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.scheduler.last_epoch == trainer.ema.updates >= 2 + r["steps"]
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ValueError, match="warmup_steps = 0"):
        time_ready_step(trainer, warmup_steps=0)
