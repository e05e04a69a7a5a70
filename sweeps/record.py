"""The experiment's own record of its settings, so that ``--resume`` continues the same experiment.

A fresh sweep writes ``STORAGE/NAME/fer_sweep.json`` (signed with ``tuner.pkl``, see sweeps/manifest.py):
the merged YAML + command line it ran with, the dataset, and every effective setting, flattened.
On ``--resume``:
- with no ``--config``, ``--data`` or ``key=value``, the recorded settings are used as they are;
- otherwise the settings given are compared with the record, key by key. Keys that only shape the retrain
  (``retrain_epochs``, ``ensemble_top_k``, ``retrain.*``) may change while the retrain has not started:
  they are applied, said, and recorded. Any other difference is refused in one line naming the keys,
  since Ray restores the searcher, scheduler, trial resources and trial settings from storage and
  would silently keep the old ones, while the log and report would claim the new ones.
"""

from __future__ import annotations

import copy
import dataclasses
import json

from fer_core.config import config_to_dict
from fer_core.errors import FerError

from .settings import SweepSettings, settings_from_raw

RECORD = "fer_sweep.json"
# Read only by the retrain and the report, after the sweep: safe to change until the retrain starts.
RETRAIN_KEYS = ("retrain_epochs", "ensemble_top_k", "retrain.")
# Where results are also sent, not what the experiment is: a resume may change them.
NOT_COMPARED = ("tracking", "tracking_uri")
# What a time budget decided when the experiment started (sweeps/budget.py): kept from the record on a
# resume with the same budget, since the command line still carries the YAML's values.
PLANNED = ("num_samples", "retrain_epochs")


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def flat_settings(s: SweepSettings) -> dict:
    """Every effective setting as ``{"section.key": value}`` (name and storage left out: they locate the
    experiment, they do not define it)."""
    out = {"data": s.data}
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if f.name in ("name", "storage", "data", "source", "raw", *NOT_COMPARED):
            continue
        if f.name == "train":
            out.update({f"train.{k}": v for k, v in config_to_dict(value).items()})
        elif f.name == "retrain":
            out.update({f"retrain.{k}": v for k, v in value.items()})
        elif f.name == "search_space":
            out.update({f"search_space.{p.name}": dataclasses.asdict(p) for p in value})
        elif dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in dataclasses.asdict(value).items()})
        else:
            out[f.name] = value
    return _plain(out)


def record_of(s: SweepSettings) -> dict:
    """What the experiment keeps: the raw mapping with the resolved dataset and weights paths."""
    raw = copy.deepcopy(s.raw)
    raw["data"] = s.data
    if s.train.weights:
        raw.setdefault("train", {})["weights"] = s.train.weights
    if s.retrain.get("weights"):
        raw.setdefault("retrain", {})["weights"] = s.retrain["weights"]
    return {"version": 1, "raw": _plain(raw), "flat": flat_settings(s)}


def pin_planned(s: SweepSettings) -> None:
    """Write the sizing a time budget decided (trials, ASHA's max_t, retrain epochs) into the raw mapping
    the record keeps, so that a bare ``--resume`` continues that plan instead of planning again."""
    s.raw = copy.deepcopy(s.raw)
    s.raw["num_samples"], s.raw["retrain_epochs"] = s.num_samples, s.retrain_epochs
    scheduler = s.raw.get("scheduler") if isinstance(s.raw.get("scheduler"), dict) else {}
    s.raw["scheduler"] = {**scheduler, "max_epochs": s.scheduler.max_epochs}


def _fs(uri: str):
    from .storage import open_storage  # the driver's one way to open storage (bounded S3 timeouts)

    return open_storage(uri)


def write_record(exp: str, s: SweepSettings) -> None:
    """Write (or rewrite) the record into the experiment folder ``exp`` (a path or URI) and sign it."""
    from .manifest import sign_files

    fs, root = _fs(exp)
    fs.create_dir(root)
    with fs.open_output_stream(f"{root}/{RECORD}") as f:
        f.write(json.dumps(record_of(s), indent=1).encode())
    sign_files(exp, [RECORD])


def read_record(exp: str) -> dict | None:
    """The record (None for experiments started before records were kept). Call after verify_experiment."""
    import pyarrow.fs

    fs, root = _fs(exp)
    if fs.get_file_info(f"{root}/{RECORD}").type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{root}/{RECORD}") as f:
        return json.loads(f.readall())


def _show(v) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def resume_settings(
    given: SweepSettings, exp: str, bare: bool, retrain_started: bool
) -> tuple[SweepSettings, list[str]]:
    """The settings a resumed sweep runs with.

    Args:
        given: the settings from this command line (its YAML, ``--data`` and ``key=value``).
        exp: the experiment folder (path or URI), already verified.
        bare: the command line gave no ``--config``, ``--data`` or ``key=value``: use the record as is.
        retrain_started: the retrain's own experiment exists, so retrain keys are fixed too.

    Returns:
        (settings, applied): applied lists the changes taken over, as "key old -> new".

    Raises:
        FerError: a change that a resume cannot honour, naming every such key (one line).
    """
    rec = read_record(exp)
    if rec is None:
        if bare:
            raise FerError(
                f"{exp}: the experiment keeps no record of its settings (started by an older fer-sweep); "
                "resume it with the same --config, --data and key=value settings it was started with"
            )
        return given, []
    saved = settings_from_raw(rec["raw"], f"{exp}/{RECORD}")
    saved.name, saved.storage = given.name, given.storage
    if bare:
        return saved, []
    if saved.time_budget and given.time_budget == saved.time_budget:
        for key in PLANNED:
            setattr(given, key, getattr(saved, key))
        given.scheduler.max_epochs = saved.scheduler.max_epochs
        pin_planned(given)
    # A key this version has and the record lacks (added since the experiment started) had its default then.
    old = {**flat_settings(SweepSettings()), **rec["flat"]}
    new = flat_settings(given)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    safe = [k for k in changed if not retrain_started and k.startswith(RETRAIN_KEYS)]
    refused = [k for k in changed if k not in safe]
    if refused:
        listed = ", ".join(f"{k} ({_show(old.get(k))} -> {_show(new.get(k))})" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        why = (
            " (the retrain has started)"
            if retrain_started and any(k.startswith(RETRAIN_KEYS) for k in refused)
            else ""
        )
        raise FerError(
            f"--resume: {exp} was started with other settings: {listed}{more}{why}; resume with no --config, "
            "--data or key=value (the experiment's own settings are used), or start a new --name"
        )
    if not safe:
        return given, []
    given.raw = copy.deepcopy(given.raw)
    write_record(exp, given)  # a later bare resume and the report see what this run applies
    return given, [f"{k} {_show(old.get(k))} -> {_show(new.get(k))}" for k in safe]
