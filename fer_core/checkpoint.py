"""Atomic checkpoints that carry everything needed to resume, evaluate or predict.

A checkpoint is one dict: model, optimizer, scheduler (and grad-scaler) state, epoch, best metric, the
resolved config, class names, the preprocessing contract, the epoch history and, once one is fitted, the
softmax temperature its predictions are made with. It is written to a
temporary file in the same folder and renamed over the target, so a crash mid-write leaves the previous
file intact. Loading uses ``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch

from .atomic import write_atomic
from .errors import CheckpointError
from .model import build_model
from .preprocess import Preprocess
from .runtime import Runtime, resolve_runtime

FORMAT = "fer_core.checkpoint/1"
REQUIRED = ("format", "model", "config", "class_names", "preprocess", "epoch")


# Checkpoints are written by ``write_atomic``: a process killed mid-write leaves a temporary file (up to
# a whole checkpoint), which ``remove_stale_temporaries`` deletes on the next start.


def remove_stale_temporaries(folder: str | os.PathLike, names=("last.pt", "best.pt")) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (call before writing there again).

    Only one process writes a run's checkpoints, so at its start any temporary file of theirs is stale.

    Args:
        folder: a checkpoints folder.
        names: the checkpoint file names whose temporaries are removed.

    Returns:
        The files removed.
    """
    d = Path(folder)
    if not d.is_dir():
        return []
    stale = [f for n in names for f in d.glob(f".{n}.*") if f.is_file()]
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def nonfinite_weights(weights: dict) -> tuple[int, str | None]:
    """Count the NaN/inf values in a state dict's floating-point tensors.

    Args:
        weights: a model state dict.

    Returns:
        (count, the first key holding one, or None).
    """
    count, first = 0, None
    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad and first is None:
                first = key
            count += bad
    return count, first


def check_finite_weights(weights: dict, source) -> None:
    """Refuse weights with NaN or inf: such a model predicts one class for everything, silently.

    Args:
        weights: a model state dict.
        source: the checkpoint path, named in the message.

    Raises:
        CheckpointError: a non-finite value was found.
    """
    count, first = nonfinite_weights(weights)
    if count:
        raise CheckpointError(
            f"{source}: {count} weight value(s) are NaN or infinite (first in '{first}'): the training "
            "that wrote it diverged; use an earlier checkpoint or retrain with a lower lr or grad_clip"
        )


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` (a dict of tensors, numbers, strings, lists, dicts) atomically to ``path``.

    Args:
        state: the checkpoint dict; "format" is added.
        path: target file (its folder is created).
    """
    target = Path(path)
    write_atomic(target, lambda f: torch.save({**state, "format": FORMAT}, f))
    return target


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically copy a checkpoint file (best.pt from last.pt without serialising twice)."""
    target = Path(dst)
    with open(src, "rb") as s:
        write_atomic(target, lambda f: shutil.copyfileobj(s, f))
    return target


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a fer_core checkpoint safely.

    Args:
        path: a .pt written by ``save_checkpoint``.
        map_location: where tensors go.

    Raises:
        CheckpointError: missing file, not a torch file, or not a fer_core checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found; pass a last.pt/best.pt written by fer_core")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises pickle, zip and runtime errors alike for junk
        raise CheckpointError(
            f"{p}: not a readable checkpoint ({type(e).__name__}); pass a last.pt/best.pt written by fer_core"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise CheckpointError(
            f"{p}: not a fer_core checkpoint (no {', '.join(k for k in REQUIRED if not isinstance(state, dict) or k not in state)}); "
            "for a plain weights file use the 'weights' config key instead"
        )
    if state["format"] != FORMAT:
        raise CheckpointError(
            f"{p}: checkpoint format {state['format']!r} is not {FORMAT!r}; retrain or use the fer_core version that wrote it"
        )
    return state


def temperature_of(state: dict, source) -> float:
    """The softmax temperature a checkpoint deploys with (``fer_core.calibration``): 1 unless one was fitted.

    The one reader of the rule: evaluate, predict and export all take the temperature from here.

    Args:
        state: the checkpoint dict.
        source: the checkpoint path, named in the message.

    Raises:
        CheckpointError: the temperature is not a finite positive number (NaN gives NaN probabilities, a
            negative one inverts the ranking).
    """
    t = float(state.get("temperature", 1.0))
    if not (math.isfinite(t) and t > 0):
        raise CheckpointError(
            f"{source}: its softmax temperature is {t}, not a finite positive number; refit it (the sweep's "
            "report does) or reset it with fer_core.checkpoint.store_temperature(path, 1.0)"
        )
    return t


def store_temperature(path: str | os.PathLike, temperature: float) -> None:
    """Store a fitted softmax temperature in the checkpoint at ``path`` (rewritten atomically)."""
    save_checkpoint({**load_checkpoint(path), "temperature": float(temperature)}, path)


def load_model(path, runtime: Runtime | None = None):
    """Rebuild the model a checkpoint was trained with, ready to deploy: the one loader of evaluate,
    predict and export.

    Args:
        path: a fer_core checkpoint.
        runtime: device settings (default: auto).

    Returns:
        (model in eval mode on the device, Preprocess, class names, checkpoint dict).

    Raises:
        CheckpointError: not a fer_core checkpoint, weights with NaN/inf, or weights that do not fit its own config.
    """
    runtime = runtime or resolve_runtime()
    state = load_checkpoint(path)
    cfg = state["config"]
    model = build_model(cfg["model"], num_classes=len(state["class_names"]), drop_rate=cfg["drop_rate"])
    # A run with weight averaging was evaluated (and chose best.pt) with the EMA weights, so those are
    # what a checkpoint deploys; the raw weights stay in "model" for resuming.
    weights = state["ema"]["module"] if state["ema"] else state["model"]
    check_finite_weights(weights, path)  # evaluate, predict and export all load through here
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit model {cfg['model']} ({str(e).splitlines()[0]}); the checkpoint is damaged"
        ) from None
    model.to(runtime.device).eval()
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return (
        model,
        Preprocess.from_dict(state["preprocess"]),
        list(state["class_names"]),
        state,
    )
