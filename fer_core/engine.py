"""One training epoch and one evaluation pass; ``train.py`` wires them together."""

from __future__ import annotations

import math
import time
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .metrics import confusion_matrix, summarize
from .preprocess import Preprocess
from .runtime import Runtime


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler,
                    loss_fn: nn.Module, preprocess: Preprocess, runtime: Runtime, scaler=None,
                    grad_clip: float = 0.0, progress: bool = False, desc: str = "train") -> dict:
    """Train for one pass over ``loader``.

    Args:
        model: the network (already on the runtime's device).
        loader: yields (uint8 images, labels).
        optimizer, scheduler: stepped once per batch (the schedule is per step, not per epoch).
        loss_fn: criterion taking (logits, labels).
        preprocess: uint8 -> normalised input on the device.
        runtime: device and precision.
        scaler: a GradScaler for fp16, else None.
        grad_clip: max gradient norm (0 = off).
        progress: show a tqdm bar.
        desc: bar label.

    Returns:
        {"train_loss", "train_accuracy", "train_images", "train_steps", "epoch_seconds", "images_per_s"},
        loss and accuracy over samples.

    Raises:
        FloatingPointError: the loss became NaN or infinite (diverged: lower the learning rate).
    """
    model.train()
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    seen, steps = 0, 0
    t0 = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = _progress(loader, total, desc, progress)
    for images, labels in bar:
        x = preprocess(images, runtime)
        y = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = y.shape[0]
        # Accumulate on the device: a .item() per step would force a GPU sync every batch.
        loss_sum += loss.detach() * n
        correct += (logits.argmax(1) == y).sum()
        seen += n
        steps += 1
        # A divergence check every step would sync the GPU every batch; NaN/inf persists in the running
        # sum, so checking it every 25 steps catches the same runs a few steps later.
        if steps % 25 == 0 and not torch.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became non-finite by step {steps}; the run diverged: lower lr or set grad_clip")
        if progress and steps % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    if not torch.isfinite(loss_sum):
        raise FloatingPointError(f"training loss became non-finite by step {steps}; the run diverged: lower lr or set grad_clip")
    seconds = time.perf_counter() - t0
    return {
        "train_loss": float(loss_sum.item() / max(seen, 1)),
        "train_accuracy": float(correct.item() / max(seen, 1)),
        "train_images": seen,
        "train_steps": steps,
        "epoch_seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else math.nan,
    }


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, preprocess: Preprocess, runtime: Runtime,
             class_names: list[str], loss_fn: nn.Module | None = None, prefix: str = "val_",
             return_probs: bool = False) -> dict:
    """Evaluate on labelled batches: loss, accuracy, balanced accuracy, macro-F1, per-class figures, confusion matrix.

    Args:
        model: the network.
        batches: yields (uint8 images, labels).
        preprocess: uint8 -> normalised input.
        runtime: device and precision.
        class_names: names in label order.
        loss_fn: criterion for the loss figure (None: plain cross-entropy).
        prefix: prepended to every metric key.
        return_probs: also return "probs" (N×C numpy) and "labels" (N) under those bare keys.
    """
    model.eval()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    loss_sum, seen = 0.0, 0
    all_probs, all_labels = [], []
    for images, labels in batches:
        x = preprocess(images, runtime)
        y = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(x).float()
        loss_sum += float(loss_fn(logits, y)) * y.shape[0]
        seen += y.shape[0]
        all_probs.append(logits.softmax(1).cpu())
        all_labels.append(labels.cpu())
    probs = torch.cat(all_probs).numpy()
    labels_np = torch.cat(all_labels).numpy()
    cm = confusion_matrix(labels_np, probs.argmax(1), len(class_names))
    out = summarize(cm, class_names, prefix=prefix)
    out[prefix + "loss"] = loss_sum / max(seen, 1)
    if return_probs:
        out["probs"], out["labels"] = probs, labels_np
    return out


def class_weights(counts: np.ndarray, mode: str) -> torch.Tensor | None:
    """Loss weights per class: "none" -> None, "balanced" -> 1/freq, "sqrt" -> 1/sqrt(freq); mean weight 1.

    Args:
        counts: training samples per class.
        mode: none, balanced or sqrt.
    """
    if mode == "none":
        return None
    freq = np.maximum(counts.astype(float), 1.0)
    w = 1.0 / (freq if mode == "balanced" else np.sqrt(freq))
    return torch.tensor(w / w.mean(), dtype=torch.float32)
