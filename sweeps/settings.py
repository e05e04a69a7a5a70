"""Sweep settings: the YAML file's shape, defaults and checks (all before Ray starts).

A sweep YAML has these top-level keys (all optional except search_space)::

    name, storage, data, metric, mode, num_samples, max_concurrent_trials, seed, max_failures,
    retrain_epochs, ensemble_top_k, time_budget (e.g. 30m: sizes trials and retrain, sweeps/budget.py),
    tracking (none | mlflow), tracking_uri, resources: {cpus_per_trial, gpus_per_trial},
    scheduler: {max_epochs, grace_period, reduction_factor}, demo: {...}, train: {TrainConfig keys},
    search_space: {...}, initial_points: [{param: value, ...}, ...], retrain: {TrainConfig keys}
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fer_core.config import FIELDS, TrainConfig, load_yaml, make_config, unknown_key_error
from fer_core.errors import ConfigError
from fer_core.metrics import SELECTABLE, lower_is_better

from .space import Param, parse_space

METRICS = SELECTABLE
TRACKERS = ("none", "mlflow")


@dataclass
class Scheduler:
    max_epochs: int = 10  # epochs each trial may train (ASHA's max_t)
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: float = 2.0  # keep the top 1/rf at each rung


@dataclass
class Resources:
    # Planned per node (sweeps/placement.py): a trial runs on one node, so it never asks for more than one has.
    cpus_per_trial: Any = (
        "auto"  # auto: each node's CPUs split across the trials it holds (CPU-only: <= 4 each)
    )
    gpus_per_trial: Any = "auto"  # auto: one whole GPU per trial when a node has (or can launch) GPUs, else 0; 0.25 = 4 trials share a GPU


@dataclass
class Demo:
    train_per_class: int = 200
    val_per_class: int = 60
    test_per_class: int = 60
    img_size: int = 48
    seed: int = 0


@dataclass
class SweepSettings:
    name: str = "fer-sweep"
    storage: str = "runs"
    data: str = ""  # empty: the built-in demo data
    metric: str = "val_accuracy"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent_trials: int = 0  # 0 = as many as the resources allow
    seed: int = 0  # TPE sampler seed
    max_failures: int = 1  # retries per trial (from its last checkpoint) before it counts as failed
    retrain_epochs: int = 10
    ensemble_top_k: int = 0
    # The whole job's wall-clock budget ("30m", "2h"): trials, ASHA's max_t and the retrain are sized to it
    # from a probe on this machine (sweeps/budget.py); num_samples, scheduler.max_epochs and retrain_epochs,
    # when given, are upper bounds. Empty: no budget, those keys are used as they are.
    time_budget: str = ""
    # Experiment tracking besides Ray's own files: "mlflow" logs each trial's params and epoch metrics, and the
    # report, to tracking_uri (empty: a local ./mlruns folder; sweeps/tracking.py).
    tracking: str = "none"
    tracking_uri: str = ""
    resources: Resources = field(default_factory=Resources)
    scheduler: Scheduler = field(default_factory=Scheduler)
    demo: Demo = field(default_factory=Demo)
    train: TrainConfig = field(default_factory=TrainConfig)
    search_space: list[Param] = field(default_factory=list)
    initial_points: list[dict] = field(default_factory=list)
    # TrainConfig keys that change for the retrain only (e.g. the full train split instead of a trial's subset)
    retrain: dict = field(default_factory=dict)
    source: str = "defaults"
    # The merged YAML + command line these settings were built from: the experiment keeps it
    # (sweeps/record.py), so a bare --resume rebuilds exactly these settings with the same checks.
    raw: dict = field(default_factory=dict, repr=False)


_SCALARS = {
    "name": str,
    "storage": str,
    "data": str,
    "metric": str,
    "mode": str,
    "num_samples": int,
    "max_concurrent_trials": int,
    "seed": int,
    "max_failures": int,
    "retrain_epochs": int,
    "ensemble_top_k": int,
    "time_budget": str,
    "tracking": str,
    "tracking_uri": str,
}
_SECTIONS = {"resources": Resources, "scheduler": Scheduler, "demo": Demo}
TOP_KEYS = set(_SCALARS) | set(_SECTIONS) | {"train", "search_space", "initial_points", "retrain"}


def _typed(value, typ, where):
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be {'an integer' if typ is int else 'a number'}, got {value!r}")
    # YAML's .nan / .inf are floats: NaN slips through every later range check and int() of either crashes.
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if typ is int and int(value) != value:
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    return typ(value)


def _section(cls, values, where):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping")
    obj = cls()
    names = {f.name: f for f in fields(cls)}
    for k, v in values.items():
        if k not in names:
            raise unknown_key_error(k, where, names)
        default = getattr(obj, k)
        if isinstance(default, str) and isinstance(v, str):  # "auto"
            if v != "auto":
                raise ConfigError(f"{where}.{k} must be a number or 'auto', got {v!r}")
            setattr(obj, k, v)
        else:
            setattr(
                obj, k, _typed(v, type(default) if not isinstance(default, str) else float, f"{where}.{k}")
            )
    return obj


CLI = "command line"


def _check_override(key: str, value) -> None:
    """Check one command-line ``key=value`` on its own, so that a typo or a bad value names the command
    line (not the YAML file it is merged into) and suggests the nearest sweep or train key."""
    section, _, sub = key.partition(".")
    if sub:
        if section == "train":
            make_config({sub: value}, source=f"{CLI}: train")
        elif section in _SECTIONS:
            _section(_SECTIONS[section], {sub: value}, f"{CLI}: '{section}'")
        else:
            close = difflib.get_close_matches(section, [*_SECTIONS, "train"], n=1)
            hint = f" (did you mean '{close[0]}.{sub}'?)" if close else ""
            raise ConfigError(
                f"{CLI}: '{key}': only resources., scheduler., demo. and train. keys take a dot{hint}"
            )
    elif key in _SCALARS:
        _typed(
            value if value is not None or _SCALARS[key] is not str else "", _SCALARS[key], f"{CLI}: '{key}'"
        )
    elif key not in TOP_KEYS:
        if key not in FIELDS:
            raise unknown_key_error(key, CLI, TOP_KEYS | set(FIELDS))
        make_config({key: value}, source=CLI)


def load_settings(path: str | Path | None, overrides: dict | None = None) -> SweepSettings:
    """Read, merge and check a sweep YAML.

    Args:
        path: YAML file (None: sweeps/configs/default.yaml).
        overrides: values from the command line; a key that is a TrainConfig key goes under ``train``,
            a dotted key (``scheduler.max_epochs``) into its section, anything else is top level.

    Raises:
        ConfigError: any unknown key, wrong type or impossible value, naming the file and key.
    """
    path = Path(path) if path else Path(__file__).parent / "configs" / "default.yaml"
    raw = load_yaml(path)
    src = str(path)
    for key, value in (overrides or {}).items():
        _check_override(key, value)
        section, _, sub = key.partition(".")
        if sub:
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{src}: '{section}' must be a mapping")
            raw[section][sub] = value
        elif key in TOP_KEYS:
            raw[key] = value
        else:
            raw.setdefault("train", {})
            raw["train"][key] = value
    return settings_from_raw(raw, src)


def settings_from_raw(raw: dict, src: str) -> SweepSettings:
    """Check a merged sweep mapping (YAML + command line) and build the settings from it.

    Args:
        raw: the mapping, shaped like a sweep YAML.
        src: where it came from, named in every error.
    """
    import copy

    raw = copy.deepcopy(raw)
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key_error(key, src, TOP_KEYS)
    s = SweepSettings(source=src, raw=copy.deepcopy(raw))
    for key, typ in _SCALARS.items():
        if key in raw:
            setattr(
                s,
                key,
                _typed(raw[key] if raw[key] is not None or typ is not str else "", typ, f"{src}: '{key}'"),
            )
    for key, cls in _SECTIONS.items():
        if key in raw:
            setattr(s, key, _section(cls, raw[key], f"{src}: '{key}'"))
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{src}: 'train' must be a mapping of fer_core config keys")
    s.train = make_config(train, source=f"{src}: train")
    retrain = raw.get("retrain") or {}
    if not isinstance(retrain, dict):
        raise ConfigError(f"{src}: 'retrain' must be a mapping of fer_core config keys")
    make_config(retrain, source=f"{src}: retrain")  # checks keys and types
    s.retrain = dict(retrain)
    s.search_space = parse_space(raw.get("search_space"), src)
    _check(s, raw.get("initial_points") or [], src)
    return s


def _check(s: SweepSettings, points, src: str) -> None:
    if s.metric not in METRICS:
        raise ConfigError(f"{src}: 'metric' = {s.metric!r} is not one of {', '.join(METRICS)}")
    if s.time_budget:
        from .budget import parse_duration

        parse_duration(s.time_budget, f"{src}: 'time_budget'")
    if s.tracking not in TRACKERS:
        raise ConfigError(f"{src}: 'tracking' = {s.tracking!r} is not one of {', '.join(TRACKERS)}")
    if s.mode not in ("max", "min"):
        raise ConfigError(f"{src}: 'mode' must be max or min, got {s.mode!r}")
    if lower_is_better(s.metric) != (s.mode == "min"):
        raise ConfigError(
            f"{src}: 'mode' = {s.mode} does not fit metric {s.metric} (loss is minimised, the others maximised)"
        )
    for key, low in (
        ("num_samples", 1),
        ("retrain_epochs", 0),
        ("max_failures", 0),
        ("max_concurrent_trials", 0),
        ("ensemble_top_k", 0),
    ):
        if getattr(s, key) < low:
            raise ConfigError(f"{src}: '{key}' must be >= {low}, got {getattr(s, key)}")
    sch = s.scheduler
    if sch.max_epochs < 1 or sch.grace_period < 1 or sch.grace_period > sch.max_epochs:
        raise ConfigError(
            f"{src}: scheduler needs 1 <= grace_period ({sch.grace_period}) <= max_epochs ({sch.max_epochs})"
        )
    if sch.reduction_factor <= 1:
        raise ConfigError(f"{src}: scheduler.reduction_factor must be > 1, got {sch.reduction_factor}")
    for key in ("cpus_per_trial", "gpus_per_trial"):
        v = getattr(s.resources, key)
        if v != "auto" and (
            v < 0
            or (key == "cpus_per_trial" and v < 1)
            or (key == "gpus_per_trial" and v > 1 and v != int(v))
        ):
            raise ConfigError(
                f"{src}: resources.{key} = {v} is impossible (cpus >= 1; gpus a fraction in (0, 1] or a whole number)"
            )
    if not s.name or "/" in s.name:
        raise ConfigError(f"{src}: 'name' must be a non-empty folder name without '/', got {s.name!r}")
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"{src}: 'initial_points' must be a list of mappings of searched parameters")
    names = {p.name for p in s.search_space}
    for i, point in enumerate(points):
        for k, v in point.items():
            if k not in names:
                raise ConfigError(
                    f"{src}: initial_points[{i}].{k} is not in search_space ({', '.join(sorted(names))})"
                )
            make_config({k: v}, source=f"{src}: initial_points[{i}]")
    s.initial_points = points
