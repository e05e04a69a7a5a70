"""The sweep's settings: YAML, ``key=value`` and flags resolved once into one frozen, checked value.

Later phases never change it: they make a new value with ``dataclasses.replace`` (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_core.config import (
    FIELDS,
    TrainConfig,
    coerce,
    config_to_dict,
    load_yaml,
    make_config,
    unknown_key_error,
)
from fer_core.datasets import absolute
from fer_core.errors import ConfigError, FerError
from fer_core.metrics import DATASET_METRIC, SELECTABLE, lower_is_better
from sweeps.config.space import Param, architectures, parse_space, to_spec

TRACKERS = ("none", "mlflow")
# Objectives a trial reports beside its epoch metric, each with the direction that is better: measured once per
# architecture of the search space, before the search (sweeps/plan/latency.py).
MEASURED = {"latency_ms": "min", "throughput": "max"}
DEFAULT_YAML = Path(__file__).parent.parent / "configs" / "default.yaml"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text, where: str) -> float:
    """Seconds in a duration like ``90s``, ``30m``, ``2h`` or ``1h30m``; a FerError naming ``where`` (the flag
    or YAML key) when it is not one, or not positive."""
    s = str(text).strip().lower().replace(" ", "")
    parts = _DURATION.findall(s)
    if not s or "".join(a + u for a, u in parts) != s:
        example = "e.g. 90s, 30m, 2h or 1h30m"
        raise FerError(f"{where}: {text!r} is not a duration; write it with a unit, {example}")
    seconds = sum(float(a) * _UNITS[u] for a, u in parts)
    if seconds <= 0:
        raise FerError(f"{where}: {text!r} must be longer than zero")
    return seconds


def fmt_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _key(default, low=None, choices=None):
    return field(default=default, metadata={"low": low, "choices": choices})


@dataclass(frozen=True)
class Scheduler:
    max_epochs: int = _key(10, low=1)  # epochs each trial may train (ASHA's max_t)
    grace_period: int = _key(1, low=1)  # epochs before ASHA may stop a trial
    reduction_factor: float = _key(2.0)  # keep the top 1/rf at each rung


@dataclass(frozen=True)
class Resources:
    # auto: each node's CPUs split across the trials it holds (sweeps/plan/resources.py)
    cpus_per_trial: float | str = "auto"
    # auto: one whole GPU per trial where nodes have GPUs, else 0; 0.25 = four trials share a GPU
    gpus_per_trial: float | str = "auto"


@dataclass(frozen=True)
class Latency:
    # onnxruntime threads of the measurement: one core, as one stream of many on a server or a phone's big
    # core runs it, and a figure that does not depend on how many cores the measuring machine has
    threads: int = _key(1, low=1)
    batch: int = _key(64, low=2)  # the batch size of the throughput (images per second)


@dataclass(frozen=True)
class Demo:
    train_per_class: int = _key(200, low=1)
    val_per_class: int = _key(60, low=1)
    test_per_class: int = _key(60, low=0)
    img_size: int = _key(48, low=16)
    seed: int = 0


@dataclass(frozen=True)
class SweepSettings:
    name: str = "fer-sweep"
    storage: str = "runs"
    # empty: the built-in demo data; else a dataset folder or a list of them (fer_core.datasets), made absolute
    data: Any = ""
    # The pooled val metric by default: the one figure every run has, over all its val images; with several
    # datasets NAME/val_accuracy (balanced_accuracy, macro_f1) optimises one of them alone.
    metric: str = "val_accuracy"
    eval_data: Any = ()  # datasets the report also evaluates the winner on (their test/, else val/)
    mode: str = _key("max", choices=("max", "min"))
    # What the search optimises, the metric first: {metric: mode} alone (the default), or with measured ones
    # after it, e.g. {val_accuracy: max, latency_ms: min}: a Pareto front (sweeps/report/pareto.py)
    objectives: dict = field(default_factory=dict)
    # Which trial is retrained (sweeps/report/pareto.py): best, knee, "fastest within 1 point", or limits
    # such as "latency_ms <= 4" (the most accurate trial within them)
    pick: str = "best"
    int8: bool = False  # the report also quantizes the winner to INT8 and weighs it against FP32
    num_samples: int = _key(8, low=1)
    max_concurrent_trials: int = _key(0, low=0)  # 0 = as many as the resources allow
    seed: int = 0  # TPE sampler seed
    max_failures: int = _key(1, low=0)  # retries per trial (from its last checkpoint) before it fails
    retrain_epochs: int = _key(10, low=0)
    ensemble_top_k: int = _key(0, low=0)
    # The whole job's wall time ("30m", "2h"): trials, ASHA's max_t and the retrain are sized to it
    # (sweeps/plan/budget.py); num_samples, scheduler.max_epochs and retrain_epochs given explicitly are caps.
    time_budget: str = ""
    tracking: str = _key("none", choices=TRACKERS)  # mlflow: trials and report also go to MLflow
    tracking_uri: str = ""  # empty: a local ./mlruns folder
    resources: Resources = field(default_factory=Resources)
    scheduler: Scheduler = field(default_factory=Scheduler)
    latency: Latency = field(default_factory=Latency)
    demo: Demo = field(default_factory=Demo)
    train: TrainConfig = field(default_factory=TrainConfig)
    search_space: tuple[Param, ...] = ()
    initial_points: tuple[dict, ...] = ()
    # TrainConfig keys that change for the retrain only (e.g. an EMA of the weights)
    retrain: dict = field(default_factory=dict)
    # The dotted keys the YAML or command line set explicitly (a time budget plans below them).
    given: frozenset = frozenset()
    source: str = "defaults"  # where the values came from, named in messages
    # Where keys set on the command line came from ({"train.lr": "command line", "name": "--name"}): source_of
    origins: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # The metric alone is the objective of settings built without one (``objectives: {}``).
        if not self.objectives:
            object.__setattr__(self, "objectives", {self.metric: self.mode})


_SECTIONS = {"resources": Resources, "scheduler": Scheduler, "latency": Latency, "demo": Demo}
_MAPPINGS = ("train", "retrain", "search_space", "objectives")
_NOT_SCALAR = {*_SECTIONS, *_MAPPINGS, "initial_points", "given", "source", "origins"}
_SCALARS = {f.name: f for f in dataclasses.fields(SweepSettings) if f.name not in _NOT_SCALAR}
TOP_KEYS = {*_SCALARS, *_SECTIONS, *_MAPPINGS, "initial_points"}
CLI = "command line"
# Where an experiment is, not what it is (also flags: --name, --storage). They name folders: YAML reads
# name=2024 or name=true as a number or a boolean, whose text may not be what was typed (010 is 8), so they
# must be text.
LOCATION = ("name", "storage")


def _typed(f: dataclasses.Field, value, where: str):
    """One value of a settings field, converted and checked by fer_core's own rules."""
    if f.name in ("data", "eval_data"):  # a folder or a list of them: fer_core.datasets checks the shape
        return value
    if f.name == "metric":
        if value in SELECTABLE or (isinstance(value, str) and DATASET_METRIC.match(value)):
            return value
        raise ConfigError(
            f"{where} = {value!r} is not one of {', '.join(SELECTABLE)}, or NAME/val_accuracy (balanced_accuracy, "
            "macro_f1) for one dataset NAME of several"
        )
    if f.name in LOCATION and not isinstance(value, str):
        flag, kind = f"--{f.name} {value}", "boolean" if isinstance(value, bool) else type(value).__name__
        kind = "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else kind
        raise ConfigError(
            f"{where} = {value} is read as a {kind}, not a folder name; pass {flag} (the flag "
            f"takes it as written) or quote it in YAML ({f.name}: '{value}')"
        )
    if f.default == "auto" and isinstance(value, str):
        if value != "auto":
            raise ConfigError(f"{where} must be a number or 'auto', got {value!r}")
        return value
    typ = float if f.default == "auto" else type(f.default)
    return coerce(value, typ, where, choices=f.metadata.get("choices"), low=f.metadata.get("low"))


def _section(cls, values, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise unknown_key_error(k, where, names)
    return cls(**{k: _typed(names[k], v, f"{where}.{k}") for k, v in values.items()})


def check_name(name: str, source: str) -> None:
    """The experiment folder is STORAGE/NAME: a name must stay one plain folder inside STORAGE, one line of
    text that reads as typed in a path or a URI."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute():
        raise ConfigError(
            f"{source} = {name!r}: give a plain folder name (no '/', not '..' or empty); the experiment "
            "goes to STORAGE/NAME and must stay inside --storage"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "holds a control character (a newline, a tab)"
    elif not name.strip():
        why = "is only spaces"
    elif name != name.strip():
        why = "has spaces at its start or end"
    elif any(c in name for c in "?#"):
        # STORAGE/NAME is also a URI (s3://...), where '?' starts a query and '#' a fragment.
        why = "holds '?' or '#', which end the path of a storage URI"
    else:
        return
    raise ConfigError(f"{source} = {name!r}: the name {why}; give a folder name of printable characters")


def _check_override(key: str, value, where: str) -> None:
    """Check one command-line value on its own, so that a typo names the command line (not the YAML)."""
    if key == "name":
        check_name(_typed(_SCALARS[key], value, where), where)
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
                f"{CLI}: '{key}': only resources., scheduler., latency., demo. and train. keys take a dot{hint}"
            )
    elif key in _SCALARS:
        _typed(_SCALARS[key], value, where)
    elif key not in TOP_KEYS:
        if key not in FIELDS:
            raise unknown_key_error(key, CLI, TOP_KEYS | set(FIELDS))
        make_config({key: value}, source=CLI)


def load_settings(
    path: str | Path | None, overrides: dict | None = None, flags: dict | None = None
) -> SweepSettings:
    """Read the sweep YAML ``path`` (None: sweeps/configs/default.yaml) and merge ``key=value`` overrides
    (TrainConfig keys go under ``train``, dotted ones into their section) and top-level flags into it.

    A ConfigError names the file or flag and the key that is unknown, mistyped or impossible.
    """
    path = Path(path) if path else DEFAULT_YAML
    raw = load_yaml(path)
    overrides, flags = overrides or {}, flags or {}
    named = {k: f"{CLI}: '{k}'" for k in overrides} | {k: "--" + k.replace("_", "-") for k in flags}
    for key in overrides.keys() & flags.keys():
        if str(overrides[key]) != str(flags[key]):
            raise ConfigError(
                f"{named[key]} {flags[key]!r} and {CLI}: {key}={overrides[key]} disagree; give the setting once"
            )
    origins = {}
    for key, value in (overrides | flags).items():
        _check_override(key, value, named[key])
        section, _, sub = key.partition(".")
        if not sub and key not in TOP_KEYS:
            section, sub = "train", key
        if sub:
            if not isinstance(raw.setdefault(section, {}), dict):
                raise ConfigError(f"{path}: '{section}' must be a mapping")
            raw[section][sub] = value
        else:
            raw[key] = value
        origins[f"{section}.{sub}" if sub else key] = named[key] if key in flags else CLI
    s = settings_from_mapping(raw, str(path), origins)
    # Not in settings_from_mapping: a record lists every train key, searched ones too.
    for section in ("train", "retrain"):
        for key in sorted((raw.get(section) or {}).keys() & {p.name for p in s.search_space}):
            raise ConfigError(
                f"{origins.get(f'{section}.{key}', path)}: {section}.{key} = {raw[section][key]} is also searched "
                f"(search_space.{key} in {origins.get('search_space', path)}); a fixed value and a searched range "
                "cannot both hold: drop one"
            )
    return s


def settings_from_mapping(raw: dict, src: str, origins: dict | None = None) -> SweepSettings:
    """Check a YAML-shaped mapping and build the settings from it (also how a record is read back).
    Makes ``data`` and ``weights`` absolute: trials run in folders of their own, and a resume compares them.
    ``origins``: where keys not from ``src`` came from (``SweepSettings.origins``).
    """
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key_error(key, src, TOP_KEYS)
    values = {k: _typed(f, raw[k], f"{src}: '{k}'") for k, f in _SCALARS.items() if k in raw}
    values |= {k: _section(cls, raw[k], f"{src}: '{k}'") for k, cls in _SECTIONS.items() if k in raw}
    for key in ("train", "retrain"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ConfigError(f"{src}: '{key}' must be a mapping of fer_core config keys")
    train = make_config(raw.get("train") or {}, source=f"{src}: train")
    retrain = dict(raw.get("retrain") or {})
    make_config(retrain, source=f"{src}: retrain")
    for key in ("data", "eval_data"):
        if values.get(key):
            values[key] = absolute(values[key], key)
    train = dataclasses.replace(train, weights=_weights(train.weights, "train"))
    if retrain.get("weights"):
        retrain["weights"] = _weights(retrain["weights"], "retrain")
    space = tuple(parse_space(raw.get("search_space"), src))
    values["objectives"] = _objectives(raw, values, src, origins or {})
    values["metric"], values["mode"] = next(iter(values["objectives"].items()))
    given = {k for k in raw if k not in _SECTIONS}
    given |= {f"{k}.{sub}" for k in _SECTIONS if isinstance(raw.get(k), dict) for sub in raw[k]}
    values["initial_points"] = _initial_points(raw.get("initial_points") or [], space, src)
    s = SweepSettings(
        **values, train=train, retrain=retrain, search_space=space, given=frozenset(given), source=src,
        origins=dict(origins or {}),
    )  # fmt: skip
    _check(s)
    return s


def _weights(value: str, where: str) -> str:
    """A local weights file, made absolute; a missing one is one line now, not an error in every trial."""
    if not value:
        return value
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise FerError(
            f"{where}.weights: {value}: weights file not found; point it at a local ImageNet weights file "
            "(.safetensors or torch state dict), or pass weights= model=efficientnet_b0 to train from scratch"
        )
    return str(path)


def _objectives(raw: dict, values: dict, src: str, origins: dict) -> dict:
    """The objectives, the metric first: ``objectives:`` checked, or ``{metric: mode}`` without it."""
    spec = raw.get("objectives")
    metric, mode = values.get("metric", "val_accuracy"), values.get("mode", "max")
    if not spec:
        return {metric: mode}
    where = f"{origins.get('objectives', src)}: 'objectives'"
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where} must be a mapping of name: max|min, e.g. {{val_accuracy: max, latency_ms: min}}"
        )
    first, first_mode = next(iter(spec.items()))
    _typed(_SCALARS["metric"], first, f"{where}: its first entry (the metric ASHA stops trials on)")
    # metric= or mode= on the command line replace the file's first objective; set beside it, they must agree.
    replaces = {k for k in ("metric", "mode") if k in origins and "objectives" not in origins}
    for key, value in (("metric", first), ("mode", first_mode)):
        if key in raw and raw[key] != value and key not in replaces:
            raise ConfigError(
                f"{where} starts with {first}: {first_mode}, but {origins.get(key, src)}: '{key}' = {raw[key]}; "
                f"the first objective is the metric: drop '{key}' or make them agree"
            )
    first = metric if "metric" in replaces else first
    first_mode = mode if "mode" in replaces else first_mode
    spec = {first: first_mode, **{k: v for k, v in list(spec.items())[1:] if k != first}}
    measured = ", ".join(f"{k} ({v})" for k, v in MEASURED.items())
    for name, direction in spec.items():
        if direction not in ("max", "min"):
            raise ConfigError(f"{where}: {name} = {direction!r}; each objective is max or min")
        if name == first:
            continue
        if name not in MEASURED:
            close = difflib.get_close_matches(str(name), [*MEASURED, *SELECTABLE], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"{where}: no trial reports {name!r}{hint}; after the metric ({first}) come measured objectives: "
                f"{measured}"
            )
        if direction != MEASURED[name]:
            raise ConfigError(
                f"{where}: {name} is better {'lower' if MEASURED[name] == 'min' else 'higher'}; "
                f"write {name}: {MEASURED[name]}"
            )
    return dict(spec)


def _initial_points(points, space: tuple[Param, ...], src: str) -> tuple[dict, ...]:
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"{src}: 'initial_points' must be a list of mappings of searched parameters")
    names = {p.name for p in space}
    for i, point in enumerate(points):
        for k, v in point.items():
            if k not in names:
                raise ConfigError(
                    f"{src}: initial_points[{i}].{k} is not in search_space ({', '.join(sorted(names))})"
                )
            make_config({k: v}, source=f"{src}: initial_points[{i}]")
    return tuple(points)


def source_of(s: SweepSettings, key: str) -> str:
    """Where ``key`` (``mode``, ``scheduler.max_epochs``) got its value, as messages name it: ``FILE: 'key'``,
    ``command line: 'key'``, the flag (``--time-budget``), or ``'key' (default)``."""
    origin = s.origins.get(key)
    if origin is None and key not in s.given:
        return f"'{key}' (default)"
    return origin if origin and origin.startswith("--") else f"{origin or s.source}: '{key}'"


def _check(s: SweepSettings) -> None:
    """Rules between keys (each key's own type and range is checked as it is read), naming each key's source."""
    check_name(s.name, source_of(s, "name"))
    if s.time_budget:
        parse_duration(s.time_budget, source_of(s, "time_budget"))
    if lower_is_better(s.metric) != (s.mode == "min"):
        raise ConfigError(
            f"{source_of(s, 'mode')} = {s.mode} does not fit metric {s.metric} ({source_of(s, 'metric')}): "
            f"loss is minimised, the others maximised; set mode to {'max' if s.mode == 'min' else 'min'}"
        )
    _check_objectives(s)
    sch = s.scheduler
    if sch.grace_period > sch.max_epochs:
        raise ConfigError(
            f"{source_of(s, 'scheduler.grace_period')}: scheduler needs 1 <= grace_period ({sch.grace_period}) "
            f"<= max_epochs ({sch.max_epochs}, {source_of(s, 'scheduler.max_epochs')}); lower one or raise the other"
        )
    if sch.reduction_factor <= 1:
        raise ConfigError(
            f"{source_of(s, 'scheduler.reduction_factor')} must be > 1, got {sch.reduction_factor}"
        )
    for key in ("cpus_per_trial", "gpus_per_trial"):
        v = getattr(s.resources, key)
        if v != "auto" and (
            v < 0
            or (key == "cpus_per_trial" and v < 1)
            or (key == "gpus_per_trial" and v > 1 and v != int(v))
        ):
            raise ConfigError(
                f"{source_of(s, 'resources.' + key)} = {v:g} is impossible (cpus >= 1; gpus a fraction in (0, 1] "
                "or a whole number)"
            )


def _check_objectives(s: SweepSettings) -> None:
    """The objectives with what the sweep does with them: an architecture per measured combination, a pick
    rule that reads them, one model retrained."""
    # The rule's grammar is the report's (sweeps.report.pareto), whose plots import these settings.
    from sweeps.report.pareto import parse_pick

    rule = parse_pick(s.pick, s.objectives, source_of(s, "pick"))
    if rule.kind != "best" and len(s.objectives) < 2:
        raise ConfigError(
            f"{source_of(s, 'pick')} = {s.pick!r} chooses on a front of several objectives, and this sweep has one "
            f"({s.metric}); add objectives: {{{s.metric}: {s.mode}, latency_ms: min}}, or pick: best"
        )
    if any(name in MEASURED for name in s.objectives):
        architectures(s.search_space, s.train, source_of(s, "search_space"))
    if len(s.objectives) > 1 and s.ensemble_top_k > 1:
        raise ConfigError(
            f"{source_of(s, 'ensemble_top_k')} = {s.ensemble_top_k} with several objectives: an ensemble runs "
            f"{s.ensemble_top_k} models, so its speed is not any trial's on the front; set ensemble_top_k: 0"
        )


def to_mapping(s: SweepSettings) -> dict:
    """The settings as a YAML-shaped mapping of every effective value: what the experiment records, and
    what ``settings_from_mapping`` turns back into the same settings."""
    out = {k: getattr(s, k) for k in _SCALARS}
    out |= {k: dataclasses.asdict(getattr(s, k)) for k in _SECTIONS}
    return out | {
        "objectives": dict(s.objectives),
        "train": config_to_dict(s.train),
        "retrain": dict(s.retrain),
        "search_space": {p.name: to_spec(p) for p in s.search_space},
        "initial_points": [dict(p) for p in s.initial_points],
    }
