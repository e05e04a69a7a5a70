"""Shared fixtures: a small procedural demo dataset and paths to the real data/weights in ../shared."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# OpenMP threads that wait by sleeping instead of spinning. On a 2-core machine that other processes also
# load, torch's default (spinning) made a 3-step demo training take 12-63 s instead of 1.5-2 s. Set before
# torch is first imported; the CLI, sweep and Ray processes the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fer_core.apps.demo import make_demo_dataset  # noqa: E402  (imports torch: after the line above)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FER_SHARED", REPO.parent / "shared"))
FER2013 = SHARED / "data" / "fer2013"
AFFECTNET7 = SHARED / "data" / "affectnet7"
LITE0 = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Keep the decoded-image and demo caches (and the experiment key) of a test run out of the user's home."""
    root = tmp_path_factory.mktemp("caches")
    old = {k: os.environ.get(k) for k in ("FER_CACHE_DIR", "FER_DEMO_DIR", "FER_SWEEP_KEY_FILE")}
    os.environ["FER_CACHE_DIR"] = str(root / "decoded")
    os.environ["FER_DEMO_DIR"] = str(root / "demo")
    os.environ["FER_SWEEP_KEY_FILE"] = str(
        root / "key" / "experiment.key"
    )  # nor their signing key in ~/.config
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def ray_temp_root(request):
    """Every Ray started by a test (the sweep subprocesses inherit the variable) keeps its session folders
    under one folder, instead of adding them to /tmp/ray for good. Like pytest's own temporary folders
    (``tmp_path_retention_policy = "failed"`` in pyproject.toml) it is deleted when every test passed and
    kept, for its logs, when one failed. Short on purpose: Ray's unix socket paths must fit in 107 bytes."""
    root = Path(tempfile.mkdtemp(prefix="fer-ray-", dir="/tmp"))
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(root)
    yield root / "ray"  # Ray puts its session_* folders under RAY_TMPDIR/ray
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old
    if request.session.testsfailed:
        print(f"\nRay's session folders (logs) of this run are kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset (10 train / 4 val / 4 test images per class, 32 px): read-only for tests."""
    return make_demo_dataset(
        tmp_path_factory.mktemp("demo") / "data",
        train_per_class=10,
        val_per_class=4,
        test_per_class=4,
        img_size=32,
        seed=1,
    )


@pytest.fixture
def demo_copy(demo_root, tmp_path) -> Path:
    """A private copy of the small demo dataset that a test may break."""
    dst = tmp_path / "data"
    shutil.copytree(demo_root, dst)
    return dst


def tiny_config(data, out, **kw) -> dict:
    """A config that trains in seconds on the small demo set (real model, real loop).

    One torch thread: such small batches gain nothing from a second one, and two wait for each other when
    another process keeps a core of a 2-core machine busy (measured, this config: 1.0-1.5 s with one
    thread, idle or busy; with two on a busy machine, ~2 s with the passive OpenMP wait above, 12-63 s
    without it)."""
    cfg = dict(
        data=str(data),
        out=str(out),
        img_size=32,
        batch_size=8,
        epochs=2,
        steps_per_epoch=3,
        eval_batch_size=64,
        progress=False,
        lr=1e-3,
        warmup_epochs=0.5,
        threads=1,
    )
    cfg.update(kw)
    return cfg


def export_ready_checkpoint(demo_root: Path, out: Path, grayscale: bool = True) -> Path:
    """A tiny trained checkpoint (best.pt under ``out``) whose outputs vary with its input, for export tests."""
    import numpy as np
    import torch
    from torch import nn

    from fer_core.checkpoint import load_model, save_checkpoint
    from fer_core.decode_cache import load_split
    from fer_core.runtime import resolve_runtime
    from fer_core.train import train

    train(tiny_config(demo_root, out, epochs=1, steps_per_epoch=1, grayscale=grayscale))
    path = out / "checkpoints" / "best.pt"
    # One training step leaves a network that ignores its input: BatchNorm's running statistics are still
    # near their initial values, so in eval mode every image gives nearly the same features, and the
    # zero-initialised head maps them to ~1/7 each. Two runtimes would "agree" on anything. So the
    # statistics are recalibrated on real images and the head drawn at random. The variance floor stands in
    # for what training does to channels that are constant over the few calibration images: left near zero,
    # BatchNorm would multiply their rounding noise by up to 1/sqrt(eps) ~ 300, a network no training yields.
    model, pre, _, state = load_model(path, resolve_runtime("cpu", channels_last="off"))
    images = load_split(demo_root, "train", pre.img_size, pre.grayscale).images[:64]
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration pass
    model.train()
    with torch.no_grad():
        model(pre(torch.from_numpy(np.ascontiguousarray(images))))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.clamp_(min=0.1)
        head = model.get_classifier()  # logits of about +-1 on these images: probabilities far from saturated
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    save_checkpoint(dict(state, model=model.state_dict()), path)
    return path
