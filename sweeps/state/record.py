"""The experiment's record of its settings (``STORAGE/NAME/fer_sweep.json``), so ``--resume`` continues it.

``write_record`` is the one writer: the driver calls it when the experiment starts and again when a
later phase derives new settings (a time budget's sizing, the retrain's resized length). It is signed
(sweeps/state/signing.py) like the state Ray writes. On ``--resume``:

- with no ``--config``, ``--data``, ``key=value`` or setting flag, the recorded settings are used as they are;
- otherwise the settings given are compared with the record, key by key. Keys that only shape the retrain
  (``retrain_epochs``, ``ensemble_top_k``, ``retrain.*``) may change while the retrain has not started:
  they are applied, said and recorded. Any other difference is refused in one line naming the keys,
  since Ray restores the searcher, scheduler, callbacks (tracking included) and trial settings from
  storage and would silently keep the old ones while the log and report claimed the new ones.
"""

from __future__ import annotations

import dataclasses
import json

import pyarrow.fs as pafs

from fer_core.errors import FerError
from sweeps.config.settings import SweepSettings, settings_from_mapping, to_mapping
from sweeps.state.signing import sign_files
from sweeps.state.storage import open_storage

RECORD = "fer_sweep.json"
# Read only by the retrain and the report, after the search: safe to change until the retrain starts.
RETRAIN_KEYS = ("retrain_epochs", "ensemble_top_k", "retrain.")
# What a time budget decided when the experiment started: kept from the record on a resume with the same
# budget, since the command line still carries the YAML's values.
PLANNED = ("num_samples", "retrain_epochs", "scheduler.max_epochs")
LOCATION = ("name", "storage")  # where the experiment is, not what it is


def flat_settings(s: SweepSettings) -> dict:
    """Every effective setting as ``{"section.key": value}``, JSON-plain (name and storage left out)."""
    out = {}
    for key, value in to_mapping(s).items():
        if key in LOCATION:
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return json.loads(json.dumps(out, default=str))


def write_record(exp: str, s: SweepSettings) -> None:
    """Write (or rewrite) the record into the experiment folder ``exp`` (a path or URI) and sign it."""
    fs, root = open_storage(exp)
    fs.create_dir(root)
    doc = {"version": 1, "settings": to_mapping(s), "given": sorted(s.given)}
    with fs.open_output_stream(f"{root}/{RECORD}") as f:
        f.write(json.dumps(doc, indent=1, default=str).encode())
    sign_files(exp, [RECORD])


def read_record(exp: str) -> SweepSettings:
    """The recorded settings; call after ``verify_experiment``.

    Raises:
        FerError: the experiment has no record (it was not started by this sweep).
    """
    fs, root = open_storage(exp)
    if fs.get_file_info(f"{root}/{RECORD}").type == pafs.FileType.NotFound:
        raise FerError(
            f"{exp}: no {RECORD} in the experiment folder, so its settings are unknown; start a new --name"
        )
    with fs.open_input_stream(f"{root}/{RECORD}") as f:
        doc = json.loads(f.readall())
    s = settings_from_mapping(doc["settings"], f"{exp}/{RECORD}")
    return dataclasses.replace(s, given=frozenset(doc["given"]))


def _show(v) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def resume_settings(
    given: SweepSettings, exp: str, bare: bool, retrain_started: bool
) -> tuple[SweepSettings, list[str]]:
    """The settings a resumed sweep runs with.

    Args:
        given: the settings from this command line (its YAML, flags and ``key=value``).
        exp: the experiment folder (path or URI), already verified.
        bare: the command line set nothing but where the experiment is: use the record as it is.
        retrain_started: the retrain's own experiment exists, so retrain keys are fixed too.

    Returns:
        (settings, applied): applied lists the changes taken over, as "key old -> new"; the record is
        rewritten when there are any.

    Raises:
        FerError: a change that a resume cannot honour, naming every such key (one line).
    """
    saved = dataclasses.replace(read_record(exp), name=given.name, storage=given.storage)
    if bare:
        return saved, []
    if saved.time_budget and given.time_budget == saved.time_budget:
        given = dataclasses.replace(
            given,
            num_samples=saved.num_samples,
            retrain_epochs=saved.retrain_epochs,
            scheduler=dataclasses.replace(given.scheduler, max_epochs=saved.scheduler.max_epochs),
        )
    old, new = flat_settings(saved), flat_settings(given)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    safe = [k for k in changed if not retrain_started and k.startswith(RETRAIN_KEYS)]
    refused = [k for k in changed if k not in safe]
    if refused:
        listed = ", ".join(f"{k} ({_show(old.get(k))} -> {_show(new.get(k))})" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        started = retrain_started and any(k.startswith(RETRAIN_KEYS) for k in refused)
        raise FerError(
            f"--resume: {exp} was started with other settings: {listed}{more}"
            f"{' (the retrain has started)' if started else ''}; resume with only --resume --name (the "
            "experiment's own settings are used), or start a new --name"
        )
    if safe:
        write_record(exp, given)  # a later bare resume and the report see what this run applies
    return given, [f"{k} {_show(old.get(k))} -> {_show(new.get(k))}" for k in safe]
