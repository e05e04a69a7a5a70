"""Mixup / CutMix, weight EMA and flip TTA: each checked against what it must compute, then in a real run."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from fer_core import engine
from fer_core.checkpoint import load_checkpoint, load_model
from fer_core.ema import ModelEma
from fer_core.evaluate import evaluate_checkpoint
from fer_core.mixing import BatchMixer
from fer_core.preprocess import Preprocess
from fer_core.runtime import resolve_runtime
from fer_core.train import train

from .conftest import tiny_config


def _batch(n=7, size=16):  # 7 distinct labels: a label identifies its image
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 7


def test_mixup_is_a_convex_blend_of_a_permutation():
    x, y = _batch()
    torch.manual_seed(3)
    out, ya, yb, lam = BatchMixer(mixup_alpha=0.4, prob=1.0)(x, y)
    assert 0.0 < lam < 1.0 and torch.equal(ya, y)
    # Recover the partner of every image from its label and check the pixels are exactly the blend.
    for i in range(len(y)):
        j = int((y == yb[i]).nonzero()[0])
        assert torch.allclose(out[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)


def test_cutmix_weights_labels_by_pasted_area():
    x, y = _batch(size=32)
    torch.manual_seed(5)
    out, ya, yb, lam = BatchMixer(cutmix_alpha=1.0, prob=1.0)(x, y)
    changed = (out != x).any(dim=1)  # H×W mask per image of pasted pixels
    moved = [i for i in range(len(y)) if yb[i] != y[i]]
    assert moved, "the permutation moved no image"
    for i in moved:
        assert abs(1.0 - changed[i].float().mean().item() - lam) < 1e-6


def test_mixer_off_and_prob_zero_leave_the_batch_alone_and_is_seeded():
    x, y = _batch()
    for mixer in (BatchMixer(), BatchMixer(mixup_alpha=0.4, prob=0.0)):
        out, ya, yb, lam = mixer(x, y)
        assert out is x and lam == 1.0 and torch.equal(yb, y)
    m = BatchMixer(mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.5)
    torch.manual_seed(11)
    first = [m(x, y)[3] for _ in range(20)]
    torch.manual_seed(11)
    assert first == [m(x, y)[3] for _ in range(20)]
    assert any(v == 1.0 for v in first) and any(v != 1.0 for v in first)


def test_ema_averages_with_warmup_and_copies_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    start = copy.deepcopy(model[0].weight.detach())
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)
    d = min(0.9, 2 / 11)  # first update: the warm-up decay, not 0.9
    assert torch.allclose(ema.module[0].weight, d * start + (1 - d) * model[0].weight)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        ModelEma(model, 1.0)


def test_flip_tta_is_the_mean_of_both_views(demo_root):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(7)).eval()
    rt = resolve_runtime("cpu", channels_last="off")
    pre = Preprocess(32, True, (0.5,) * 3, (0.5,) * 3, per_image=True)
    imgs = torch.randint(0, 255, (6, 32, 32), dtype=torch.uint8)
    labels = torch.arange(6)
    model(pre(imgs))  # materialise the lazy layer
    out = engine.evaluate(
        model, [(imgs, labels)], pre, rt, [str(i) for i in range(7)], return_probs=True, tta_flip=True
    )
    x = pre(imgs)
    want = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert np.allclose(out["probs_tta"], want.detach().numpy(), atol=1e-6)
    assert out["val_tta_accuracy"] == float((want.argmax(1) == labels).float().mean())
    assert "val_accuracy" in out and "val_tta_macro_f1" in out


def test_a_run_with_every_regulariser_evaluates_and_deploys_the_ema(demo_root, tmp_path):
    cfg = tiny_config(
        demo_root,
        tmp_path / "run",
        epochs=2,
        mixup_alpha=0.3,
        cutmix_alpha=1.0,
        mix_prob=1.0,
        ema_decay=0.5,
        tta_flip=True,
        drop_path_rate=0.1,
        label_smoothing=0.1,
    )
    res = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    assert all("val_tta_accuracy" in r and "val_accuracy" in r for r in rows)
    state = load_checkpoint(res["best_checkpoint"])
    assert state["ema"]["updates"] == 3 * res["best_epoch"]
    model, *_ = load_model(res["best_checkpoint"], resolve_runtime("cpu"))
    for k, v in model.state_dict().items():  # what load_model deploys is the EMA, not the raw weights
        assert torch.equal(v.cpu(), state["ema"]["module"][k]), k
    m = evaluate_checkpoint(res["best_checkpoint"], str(demo_root), "val", tta_flip=True)
    best = json.loads((tmp_path / "run" / "best_val_metrics.json").read_text())
    assert m["val_accuracy"] == best["val_accuracy"] and m["val_tta_accuracy"] == best["val_tta_accuracy"]
