"""One training epoch and one evaluation pass: the step loops the Trainer (``fer_core.trainer``) runs."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .calibration import tempered_softmax
from .errors import DivergedError
from .metrics import confusion_matrix, summarize
from .preprocess import Preprocess
from .runtime import Runtime

# Steps between the step loop's host reads: the finite-loss check and the progress bar's figures read the
# running sums at the same step, and each read waits for the GPU to finish the queued work; every other step
# runs without one (tests/test_host_sync.py counts them).
HOST_READ_EVERY = 25


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    preprocess: Preprocess,
    runtime: Runtime,
    scaler=None,
    grad_clip: float = 0.0,
    progress: bool = False,
    desc: str = "train",
    mixer=None,
    ema=None,
    max_steps: int = 0,
) -> dict:
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
        mixer: a ``mixing.BatchMixer`` (mixup / CutMix), or None.
        ema: a ``ema.ModelEma`` updated after every optimizer step, or None.
        max_steps: stop after this many steps (0 = the whole loader; ``fer_core.timing`` times such passes).

    Returns:
        {"train_loss", "train_accuracy", "train_images", "train_steps", "epoch_seconds", "images_per_s"},
        loss and accuracy over samples.

    Raises:
        DivergedError (a FloatingPointError): the loss became NaN or infinite (diverged: lower the learning rate).
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
        x, y_a, y_b, lam = mixer(x, y) if mixer is not None else (x, y, y, 1.0)
        with runtime.autocast():
            logits = model(x)
        logits = logits.float()
        loss = (
            loss_fn(logits, y_a)
            if lam == 1.0
            else lam * loss_fn(logits, y_a) + (1.0 - lam) * loss_fn(logits, y_b)
        )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            # fp16 only. With the fused optimizer (CUDA) scaler.step hands its found-inf flag to the kernel;
            # with another it reads the flag on the host, a sync by GradScaler's design.
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
        n = y.shape[0]
        # Accumulate on the device: a .item() per step would force a GPU sync every batch.
        loss_sum += loss.detach() * n
        correct += (logits.argmax(1) == y).sum()
        seen += n
        steps += 1
        # A divergence check every step would sync the GPU every batch; NaN/inf persists in the running
        # sum, so checking it every HOST_READ_EVERY steps catches the same runs a few steps later.
        if steps % HOST_READ_EVERY == 0:
            if not torch.isfinite(loss_sum):
                raise DivergedError(
                    f"training loss became non-finite by step {steps}; the run diverged: lower lr or set grad_clip"
                )
            if progress:  # the check above has waited for the GPU already: these reads cost nothing more
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        if steps == max_steps:
            break
    if not torch.isfinite(loss_sum):
        raise DivergedError(
            f"training loss became non-finite by step {steps}; the run diverged: lower lr or set grad_clip"
        )
    if runtime.is_cuda:
        torch.cuda.synchronize(runtime.device)  # the clock must include queued GPU work
    seconds = time.perf_counter() - t0
    return {
        "train_loss": float(loss_sum.item() / max(seen, 1)),
        "train_accuracy": float(correct.item() / max(seen, 1)),
        "train_images": seen,
        "train_steps": steps,
        "epoch_seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else math.nan,
    }


PROB_KEYS = (
    "probs",
    "labels",
    "logits",
    "probs_tta",
    "logits_flip",
)  # what ``evaluate(return_probs=True)`` adds


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    preprocess: Preprocess,
    runtime: Runtime,
    class_names: list[str],
    loss_fn: nn.Module | None = None,
    prefix: str = "val_",
    return_probs: bool = False,
    tta_flip: bool = False,
    temperature: float = 1.0,
) -> dict:
    """Evaluate on labelled batches: loss, accuracy, balanced accuracy, macro-F1, per-class figures, confusion matrix.

    Args:
        model: the network.
        batches: yields (uint8 images, labels).
        preprocess: uint8 -> normalised input.
        runtime: device and precision.
        class_names: names in label order.
        loss_fn: criterion for the loss figure (None: plain cross-entropy).
        prefix: prepended to every metric key.
        return_probs: also return "probs" (N×C numpy), "labels" (N) and "logits" (N×C, before the
            temperature) under those bare keys (and "probs_tta" and "logits_flip" with ``tta_flip``).
        tta_flip: also score the average of the image's and its mirror's probabilities; those metrics
            come under ``prefix + "tta_"`` (val_tta_accuracy, ...), beside the plain ones.
        temperature: the softmax temperature (``fer_core.calibration``), applied as ``view_probs`` says
            (the plain probabilities as the Predictor and the ONNX graph give them); the losses are those of
            the tempered probabilities.
    """
    model.eval()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    loss_sum, seen = 0.0, 0
    tta_sum = 0.0
    all_probs, all_tta, all_labels, all_logits, all_flipped = [], [], [], [], []
    for images, labels in batches:
        x = preprocess(images, runtime)
        y = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(x).float()
            flipped = model(x.flip(-1)).float() if tta_flip else None
        if return_probs:
            all_logits.append(logits.cpu())
            all_flipped += [flipped.cpu()] if tta_flip else []
        loss_sum += float(loss_fn(logits / temperature, y)) * y.shape[0]
        seen += y.shape[0]
        probs, tta = view_probs(logits, flipped, temperature)
        all_probs.append(probs.cpu())
        if tta_flip:
            tta_sum += float(nn.functional.nll_loss(tta.clamp_min(1e-12).log(), y)) * y.shape[0]
            all_tta.append(tta.cpu())
        all_labels.append(labels.cpu())
    labels_np = torch.cat(all_labels).numpy()
    probs = torch.cat(all_probs).numpy()
    out = probs_metrics(probs, labels_np, class_names, prefix)
    out[prefix + "loss"] = loss_sum / max(seen, 1)
    if tta_flip:
        tta_probs = torch.cat(all_tta).numpy()
        out.update(probs_metrics(tta_probs, labels_np, class_names, prefix + "tta_"))
        out[prefix + "tta_loss"] = tta_sum / max(seen, 1)
    if return_probs:
        out["probs"], out["labels"], out["logits"] = probs, labels_np, torch.cat(all_logits).numpy()
        if tta_flip:
            out["probs_tta"], out["logits_flip"] = tta_probs, torch.cat(all_flipped).numpy()
    return out


def view_probs(
    logits: torch.Tensor, flipped: torch.Tensor | None, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image's probabilities, softmax(logits / T), and, given its mirror image's logits, the flip-TTA
    probabilities: the mean of both views' softmaxes, tempered as a whole (p^(1/T), renormalised), as the
    ensemble's pool is. Tempering the mean rather than each view keeps its argmax, so no accuracy figure, plain
    or TTA, depends on T; at T = 1 both are exactly the untempered ones."""
    probs = tempered_softmax(logits, temperature)
    if flipped is None:
        return probs, None
    mean = (logits.softmax(1) + flipped.softmax(1)) / 2
    return probs, mean if temperature == 1.0 else tempered_softmax(mean.clamp_min(1e-12).log(), temperature)


def probs_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str], prefix: str) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class figures and confusion matrix of argmax(probs).

    Args:
        probs: N×C class probabilities (one model, TTA, or an ensemble's average).
        labels: N true labels.
        class_names: names in label order.
        prefix: prepended to every key.
    """
    cm = confusion_matrix(labels, probs.argmax(1), len(class_names))
    return summarize(cm, class_names, prefix=prefix)


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
