"""The one training config: a typed dataclass whose field help texts drive the CLI and the YAML checks.

Only entry points (``python -m fer_core.train``, ``sweeps/run.py``) map YAML and ``key=value`` strings onto
it; library functions receive a ``TrainConfig`` (or typed keyword arguments). Every default carries the
reason it was chosen.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .metrics import SELECTABLE


def _opt(default, help: str, choices: tuple | None = None, low=None, high=None):
    """A dataclass field with a help text and optional allowed values / numeric bounds."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


@dataclass
class TrainConfig:
    """Everything one training run needs. See ``python -m fer_core.train --help`` for each key."""

    # --- data -------------------------------------------------------------------------------------------
    data: Any = _opt(
        "",
        "Dataset root: a folder holding train/ and val/ (test/ optional) with one folder per class, or the class folders themselves (split here, see split). Or a list of roots trained on together, each a path or a mapping {root, name, classes, exclude, split, group, weight}: val is reported per dataset (NAME/val_accuracy, ...) and pooled (val_accuracy).",
    )
    classes: Any = _opt(
        None,
        "The classes in label order: a list of names (folders of those names), or a mapping class -> folder or list of folders (negative: [angry, disgust, fear, sad]). Empty: the sorted folder names of train/ (of the first dataset, with several; the others' folders match by name, case and common expression synonyms aside: Anger is angry).",
    )
    exclude: Any = _opt(None, "Folder names to leave out (a list), e.g. [contempt].")
    split: Any = _opt(
        None,
        "For a root without train/: the shares of val and test and the seed, {val: 0.15, test: 0.15, seed: 0} (the default): stratified by class, the file lists kept with the run.",
    )
    group: str = _opt(
        "",
        'For a root without train/: a regular expression over file names whose match (its first group, if it has one) keeps the images of one person or sequence in one split, e.g. "^(S\\d+)_" for CK+.',
    )
    out: str = _opt("runs/train", "Output folder: checkpoints/, epochs.jsonl, config.yaml, metrics JSON.")
    img_size: int = _opt(
        48,
        "Square input size in pixels. FER2013 is 48 px; larger (upscaled) inputs cost compute but can add accuracy.",
        low=16,
        high=512,
    )
    grayscale: bool = _opt(
        True,
        "Decode images as grayscale and repeat the channel 3x for the ImageNet stem (FER data is gray; colour adds nothing but memory).",
    )
    normalize: str = _opt(
        "auto",
        'Input normalisation: per_image (each image to zero mean, unit std), weights (the pretrained weights\' mean/std), or auto = weights when the run starts from ImageNet weights (pretrained or a weights file), per_image from scratch: the winner of each case on FER2013 (docs/measured.md, "Accuracy experiments").',
        choices=("auto", "per_image", "weights"),
    )
    dedupe: str = _opt(
        "none",
        "cross_split = leave out train images that are exact or near duplicates of a val or test image (found by fer_core.audit), for leak-free val/test figures. Off by default so results stay comparable with published ones on the official splits.",
        choices=("none", "cross_split"),
    )
    audit: bool = _opt(
        True,
        "Audit the dataset before training (counts, duplicates, split mismatch; fer_core.audit), print its summary and write OUT/audit.json. Sweeps audit once in the driver and turn it off for trials.",
    )
    max_train_samples: int = _opt(
        0,
        "Use a class-stratified subset of at most this many train images (0 = all). For quick CPU runs.",
        low=0,
    )
    max_val_samples: int = _opt(0, "Class-stratified subset of the val split (0 = all).", low=0)
    strict: bool = _opt(False, "Fail on a corrupt image instead of warning and skipping it.")
    cache_dir: str = _opt(
        "", "Where decoded uint8 image caches go ('' = $FER_CACHE_DIR or ~/.cache/fer_core)."
    )
    # --- model ------------------------------------------------------------------------------------------
    model: str = _opt("efficientnet_b0", "timm model name.")
    pretrained: bool = _opt(
        False,
        "Load timm's ImageNet weights from the hub (needs internet; off so nothing downloads by default).",
    )
    weights: str = _opt(
        "",
        "Local weights file (.safetensors or torch state dict) to start from; the classifier is dropped when its shape differs.",
    )
    drop_rate: float = _opt(
        0.2, "Dropout before the classifier (timm's default for efficientnet_b0).", low=0.0, high=0.95
    )
    drop_path_rate: float = _opt(
        0.0, "Stochastic depth rate; helps long runs, slows short ones.", low=0.0, high=0.9
    )
    bn_momentum: float = _opt(
        0.0,
        "Override BatchNorm momentum (0 = keep the model's). 0.1 makes tf_* models (TF-style BN, 0.01) adapt 10x faster in short fine-tunes.",
        low=0.0,
        high=1.0,
    )
    # --- optimisation -----------------------------------------------------------------------------------
    epochs: int = _opt(10, "Number of epochs.", low=1)
    steps_per_epoch: int = _opt(
        0,
        "Cap on optimizer steps per epoch (0 = a full pass). Makes epochs comparable across subset sizes.",
        low=0,
    )
    batch_size: int = _opt(64, "Training batch size.", low=1)
    eval_batch_size: int = _opt(
        0,
        "Evaluation batch size (0 = auto: 1024 on CUDA, 256 on CPU; no gradients, so larger is cheaper per image on a GPU).",
        low=0,
    )
    optimizer: str = _opt("adamw", "Optimizer.", choices=("adamw", "adam", "sgd"))
    lr: float = _opt(2e-3, "Peak learning rate (after warm-up).", low=1e-7, high=10.0)
    weight_decay: float = _opt(
        0.05,
        "Decoupled weight decay (AdamW) or L2 (Adam/SGD); not applied to norms and biases.",
        low=0.0,
        high=1.0,
    )
    momentum: float = _opt(0.9, "SGD momentum (ignored by Adam/AdamW).", low=0.0, high=1.0)
    warmup_epochs: float = _opt(
        1.0, "Linear warm-up length in epochs (fractions allowed) before the cosine decay.", low=0.0
    )
    min_lr_ratio: float = _opt(
        0.01,
        "Cosine decays to lr * min_lr_ratio, not zero, so the last epoch still learns.",
        low=0.0,
        high=1.0,
    )
    label_smoothing: float = _opt(
        0.1,
        "Label smoothing; FER labels are noisy (about 1 in 10 disputed), so a little helps.",
        low=0.0,
        high=0.5,
    )
    class_weighting: str = _opt(
        "none",
        "Loss weights per class: none, balanced (1/frequency) or sqrt (1/sqrt(frequency), milder). FER2013's disgust is 1.5% of train.",
        choices=("none", "balanced", "sqrt"),
    )
    mixup_alpha: float = _opt(
        0.0,
        "Mixup: Beta(a, a) blend of image pairs and their labels (0 = off; 0.2-0.4 typical). Regularises long runs, slows short ones.",
        low=0.0,
        high=10.0,
    )
    cutmix_alpha: float = _opt(
        0.0,
        "CutMix: paste a box from another image, labels weighted by area (0 = off; 1.0 typical).",
        low=0.0,
        high=10.0,
    )
    mix_prob: float = _opt(
        0.5,
        "Share of batches mixed when mixup or CutMix is on (the rest train on clean images).",
        low=0.0,
        high=1.0,
    )
    ema_decay: float = _opt(
        0.0,
        "Evaluate and keep an exponential moving average of the weights with this per-step decay (0 = off; 0.999 averages ~1,000 steps).",
        low=0.0,
        high=0.99999,
    )
    tta_flip: bool = _opt(
        False,
        "Also evaluate with horizontal-flip test-time augmentation; reported separately as val_tta_* (the plain metrics still pick the best epoch).",
    )
    aug_strength: float = _opt(
        0.5, "One knob in [0, 1] scaling the whole augmentation policy (0 = none).", low=0.0, high=1.0
    )
    augment_backend: str = _opt(
        "auto",
        "Who augments training batches: albumentations (per image on CPU, in the data-loader workers), torch (the same policy on a whole batch on the device, the decoded train split kept there; per-sample parameters hashed from seed, epoch and position), or auto = torch on CUDA, albumentations elsewhere.",
        choices=("auto", "albumentations", "torch"),
    )
    grad_clip: float = _opt(0.0, "Clip the gradient norm to this value (0 = off).", low=0.0)
    # --- run --------------------------------------------------------------------------------------------
    seed: int = _opt(
        0,
        "Seed for weights init, data order and augmentation (each epoch reseeds from it, so resume is exact).",
    )
    best_metric: str = _opt("val_accuracy", "Metric that decides best.pt.", choices=SELECTABLE)
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N.")
    precision: str = _opt(
        "auto",
        "auto (bf16 autocast on CUDA that supports it, fp16 on CUDA without bf16, fp32 on CPU), fp32, bf16 or fp16.",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    channels_last: str = _opt(
        "auto",
        "Memory format: auto (= on: measured 1.7x faster on CPU, and what GPU tensor cores want), on or off.",
        choices=("auto", "on", "off"),
    )
    compile: str = _opt(
        "auto",
        "torch.compile the model for training: auto (= off: measured slower on CPU after ~100 s compiling; not yet measured on GPUs), on or off.",
        choices=("auto", "on", "off"),
    )
    threads: int = _opt(
        0,
        "CPU threads for torch and OpenCV, and this process's CPU share that auto workers come out of (0 = all this process may use; a sweep trial gets its CPU allocation).",
        low=0,
    )
    num_workers: int = _opt(
        -1,
        "DataLoader workers (-1 = auto: none on CPU where compute is the bottleneck, the CPU share minus 1, up to 8, on CUDA; one worker augments ~4,800 img/s at 48 px).",
        low=-1,
    )
    progress: bool = _opt(True, "Show a progress bar per epoch.")
    keep_checkpoints: bool = _opt(
        True,
        "Keep OUT/checkpoints/last.pt and best.pt. Off (sweep trials): each epoch's last.pt lives only until the report callback has taken it (Ray copies it to storage), and no best.pt is written.",
    )


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert ``value`` to the declared type of TrainConfig's ``key`` or raise a one-line ConfigError."""
    if _HINTS[key] is Any:  # data, classes, exclude, split: their shape is fer_core.datasets' to check
        return value
    meta = FIELDS[key].metadata
    return coerce(
        value,
        _HINTS[key],
        f"{source}: key '{key}'",
        choices=meta["choices"],
        low=meta["low"],
        high=meta["high"],
        example=FIELDS[key].default,
    )


def coerce(value: Any, typ: type, where: str, *, choices=None, low=None, high=None, example=None) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to ``typ`` (bool, int, float or str) and check
    it against ``choices`` and ``[low, high]``; raise a one-line ConfigError naming ``where`` otherwise."""
    if typ is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "on",
            "1",
            "false",
            "no",
            "off",
            "0",
        ):
            out = value.lower() in ("true", "yes", "on", "1")
        else:
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            # YAML reads "1e-3" (no dot) as a string, so numbers arrive as text too.
            num = float(value) if isinstance(value, str) else value
            finite = math.isfinite(num)
            out = typ(num) if finite else num
            if typ is int and finite and float(num) != out:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where} must be {'an integer' if typ is int else 'a number'}, got {value!r}"
            ) from None
        # NaN passes every range check (all comparisons are false) and inf passes open ones; either would
        # train a model of NaN weights or fail deep inside torch, so both stop here.
        if not finite:
            hint = f"; give a plain number such as {example!r}" if example is not None else ""
            kind = "integer" if typ is int else "number"
            raise ConfigError(f"{where} must be a finite {kind}, got {value!r}{hint}")
        if low is not None and out < low or high is not None and out > high:
            if high is None:
                raise ConfigError(f"{where} must be >= {low}, got {out}")
            raise ConfigError(f"{where} = {out} is outside [{low}, {high}]")
    else:
        if value is None:
            value = ""
        if isinstance(value, bool) and choices and "on" in choices:
            value = "on" if value else "off"  # YAML reads a bare on/off as a boolean
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        out = str(value)
    if choices and out not in choices:
        raise ConfigError(f"{where} = {out!r} is not one of {', '.join(choices)}")
    return out


def resolve_normalize(cfg: TrainConfig) -> str:
    """``normalize: auto`` made concrete: ``weights`` when the run starts from ImageNet weights, ``per_image``
    from scratch. Measured on FER2013 (300 steps, seeds 0 and 1, full val): from scratch per-image scored
    higher; from Lite0 ImageNet weights the weights' own mean/std did, as the weights were trained with it."""
    if cfg.normalize != "auto":
        return cfg.normalize
    return "weights" if cfg.pretrained or cfg.weights else "per_image"


def unknown_key_error(key: str, source: str, known) -> ConfigError:
    """A ConfigError for an unknown key, suggesting the closest known one."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"{source}: unknown key '{key}'{hint}")


def make_config(
    values: Mapping[str, Any] | None = None, source: str = "config", base: TrainConfig | None = None
) -> TrainConfig:
    """Build a TrainConfig from a mapping, checking every key and type.

    Args:
        values: key -> value (YAML-loaded or strings from the command line).
        source: where the values came from, named in error messages (a file path, "command line").
        base: config to start from (defaults to TrainConfig()).

    Raises:
        ConfigError: unknown key, wrong type, or value outside its allowed range.
    """
    out = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in (values or {}).items():
        if key not in FIELDS:
            raise unknown_key_error(key, source, FIELDS)
        setattr(out, key, _coerce(key, value, source))
    return out


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping, with one-line errors for a missing file, bad syntax, or a non-mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; pass an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{p}:{where} is not valid YAML ({getattr(e, 'problem', e)}); fix the syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of key: value, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str], source: str = "command line") -> dict:
    """Turn ``["lr=1e-3", "epochs=3"]`` into a dict (values stay strings or YAML scalars, coerced later)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: '{item}' is not key=value; write e.g. lr=0.001")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain dict of a config (for YAML files, checkpoints and Ray)."""
    return dataclasses.asdict(cfg)


def config_help() -> str:
    """One paragraph per key: name, default and help. Used by ``--help``."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        choices = f" [{'|'.join(f.metadata['choices'])}]" if f.metadata["choices"] else ""
        lines.append(f"  {f.name}={f.default!r}{choices}\n      {f.metadata['help']}")
    return "\n".join(lines)
