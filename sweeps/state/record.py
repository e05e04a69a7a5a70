"""The experiment's record of its settings (``STORAGE/NAME/fer_sweep.json``), so ``--resume`` continues it.

One writer (``write_record``), signed like Ray's state; the resume rules are in docs/architecture.md.
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
    """The recorded settings; call after ``verify_experiment``. A FerError when there is no record."""
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
    """The settings a resumed sweep runs with, and the changes it takes over ("key old -> new").

    ``bare``: the command line set only where the experiment is, so the record is used as it is. A change
    a resume cannot honour (any but retrain keys before ``retrain_started``) is a one-line FerError.
    """
    saved = dataclasses.replace(read_record(exp), name=given.name, storage=given.storage)
    if bare:
        return saved, []
    if saved.time_budget and given.time_budget == saved.time_budget:  # keep what that budget planned
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
