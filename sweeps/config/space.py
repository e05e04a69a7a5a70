"""The search space: declared once in YAML, checked here, and mapped to Optuna distributions in one function.

YAML form (each key is a fer_core TrainConfig key)::

    search_space:
      lr:            {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      batch_size:    {type: choice, values: [32, 64, 128]}
      aug_strength:  {type: uniform, low: 0.0, high: 0.8}
      drop_path_rate: {type: quniform, low: 0.0, high: 0.3, q: 0.05}
      seed:          {type: randint, low: 0, high: 1000}
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import optuna.distributions as d

from fer_core.config import FIELDS, TrainConfig, make_config, unknown_key_error
from fer_core.errors import ConfigError

TYPES = ("loguniform", "uniform", "quniform", "randint", "choice")
# Keys a trial must not vary: they define where data and outputs live, not how well the model trains.
NOT_SEARCHABLE = {"data", "out", "cache_dir", "progress", "device", "threads", "num_workers", "epochs"}
NOT_SEARCHABLE |= {"compile", "channels_last", "eval_batch_size"}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter. Args: name: TrainConfig key; kind: one of TYPES; low/high/q/values: its range."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    q: float | None = None
    values: tuple | None = None

    @property
    def is_log(self) -> bool:
        return self.kind == "loguniform"


def parse_space(spec: Any, source: str) -> list[Param]:
    """Check a YAML search-space mapping (``spec``, from the file ``source``) and return its parameters;
    raises ConfigError, one line naming the key, for an empty space, an unknown or unsearchable key, an
    unknown type, an impossible range, or a value that the key's type rejects."""
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(
            f"{source}: 'search_space' is empty; declare at least one parameter, e.g. lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}"
        )
    params = []
    for name, p in spec.items():
        where = f"{source}: search_space.{name}"
        if name not in FIELDS:
            raise unknown_key_error(name, f"{source}: search_space", FIELDS)
        if name in NOT_SEARCHABLE:
            raise ConfigError(
                f"{where} cannot be searched (it sets where things run or live, or the epoch budget); set it under 'train' instead"
            )
        if not isinstance(p, dict) or "type" not in p:
            raise ConfigError(f"{where} must be a mapping with a 'type' ({', '.join(TYPES)})")
        kind = p["type"]
        if kind not in TYPES:
            raise ConfigError(f"{where}.type = {kind!r} is not one of {', '.join(TYPES)}")
        allowed = {"type", "values"} if kind == "choice" else {"type", "low", "high"}
        if kind == "quniform":
            allowed.add("q")
        extra, names = set(p) - allowed, ", ".join(sorted(allowed))
        if extra:
            raise ConfigError(
                f"{where}: unknown field '{sorted(extra)[0]}' for type {kind} (allowed: {names})"
            )
        if kind == "choice":
            values = p.get("values")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.values must be a non-empty list")
            for v in values:
                make_config({name: v}, source=where)  # the key's own type and range check each value
            params.append(Param(name, kind, values=tuple(values)))
            continue
        try:
            low, high = float(p["low"]), float(p["high"])
            q = float(p["q"]) if kind == "quniform" else None
        except KeyError as e:
            raise ConfigError(f"{where} needs '{e.args[0]}'") from None
        except (TypeError, ValueError):
            fields = "low/high/q" if kind == "quniform" else "low/high"
            raise ConfigError(f"{where}: {fields} must be numbers") from None
        # NaN compares false with everything and inf is no range to sample from: say so before the range checks.
        bounds = {"low": low, "high": high, "q": q}
        bad = [f"{k} = {v:g}" for k, v in bounds.items() if v is not None and not math.isfinite(v)]
        if bad:
            raise ConfigError(
                f"{where}: {', '.join(bad)} is not a finite number; give plain numbers for low and high"
            )
        if not low < high:
            raise ConfigError(f"{where}: low ({low:g}) must be below high ({high:g})")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {low:g}")
        if q is not None and not 0 < q <= high - low:
            raise ConfigError(f"{where}: q must be in (0, high - low], got {q:g}")
        if kind == "randint" and (low != int(low) or high != int(high)):
            raise ConfigError(f"{where}: randint needs integer low and high")
        for v in (low, high if kind != "randint" else high - 1):
            make_config({name: int(v) if kind == "randint" else v}, source=where)
        params.append(Param(name, kind, low, high, q))
    return params


def to_spec(p: Param) -> dict:
    """A parameter back in its YAML form (``parse_space`` of it gives the same ``Param``)."""
    if p.kind == "choice":
        return {"type": p.kind, "values": list(p.values)}
    return {"type": p.kind, "low": p.low, "high": p.high, **({"q": p.q} if p.q is not None else {})}


def to_optuna(params: list[Param]) -> dict:
    """The search space as Optuna distributions: what ``OptunaSearch(space=...)`` samples from, and the
    distributions of the study that the report rebuilds from the finished trials."""
    out = {}
    for p in params:
        if p.kind in ("loguniform", "uniform"):
            out[p.name] = d.FloatDistribution(p.low, p.high, log=p.is_log)
        elif p.kind == "quniform":
            out[p.name] = d.FloatDistribution(p.low, p.high, step=p.q)
        elif p.kind == "randint":
            out[p.name] = d.IntDistribution(int(p.low), int(p.high) - 1)  # YAML's high is exclusive
        else:
            out[p.name] = d.CategoricalDistribution(list(p.values))
    return out


# The TrainConfig keys that change the exported graph; every other searched key leaves its speed alone.
ARCH_KEYS = ("model", "img_size", "grayscale")


def architectures(space: tuple[Param, ...], train: TrainConfig, where: str) -> list[dict]:
    """Every combination of ``ARCH_KEYS`` a trial can get: the searched choices, else the fixed value; a key
    searched as a range is a ConfigError (each architecture is timed before the search, so they are listed)."""
    values = {}
    for key in ARCH_KEYS:
        p = next((p for p in space if p.name == key), None)
        if p is not None and p.kind != "choice":
            raise ConfigError(
                f"{where}: search_space.{key} is a {p.kind} range; with a measured objective each architecture is "
                f"timed once before the search, so search {key} as a choice, e.g. {{type: choice, values: [40, 48, 64]}}"
            )
        values[key] = list(p.values) if p is not None else [getattr(train, key)]
    return [dict(zip(ARCH_KEYS, combo)) for combo in itertools.product(*values.values())]


def arch_key(config) -> str:
    """The name of a config's architecture (a TrainConfig or a trial's mapping): ``efficientnet_lite0/48/gray``."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return f"{get('model')}/{get('img_size')}/{'gray' if get('grayscale') else 'rgb'}"
