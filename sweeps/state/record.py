"""What an experiment records beside Ray's state, so that ``--resume`` continues the same experiment: its
settings, the data it started on, the winner chosen once and the time each phase took (signed JSON files
in STORAGE/NAME; the resume rules are in docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow.fs as pafs

from fer_core.data import CLASS_NAMES, scan_split
from fer_core.errors import FerError
from sweeps.config.settings import SweepSettings, settings_from_mapping, to_mapping
from sweeps.state.signing import write_signed
from sweeps.state.storage import open_storage

RECORD, DATA, WINNER, PHASES = "fer_sweep.json", "fer_data.json", "fer_winner.json", "fer_phases.json"
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


def _write(exp: str, name: str, doc) -> None:
    write_signed(exp, name, json.dumps(doc, indent=1, default=str).encode())


def _read(exp: str, name: str):
    """A recorded document, or None when the experiment has none (call after ``verify_experiment``)."""
    fs, root = open_storage(exp)
    if fs.get_file_info(f"{root}/{name}").type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{root}/{name}") as f:
        return json.loads(f.readall())


def write_record(exp: str, s: SweepSettings) -> None:
    """Write (or rewrite) the settings' record into the experiment folder ``exp`` (a path or URI), signed;
    it names that folder (``check_location``)."""
    doc = {"version": 1, "experiment": exp, "settings": to_mapping(s), "given": sorted(s.given)}
    _write(exp, RECORD, doc)


def check_location(exp: str) -> None:
    """Refuse (one line) to resume an experiment that was moved or copied to ``exp``: Ray's state still
    sends its unfinished trials to the folder it started in (call after ``verify_experiment``)."""
    doc = _read(exp, RECORD) or {}
    then = doc.get("experiment", exp)
    if then != exp:
        raise FerError(
            f"--resume: {exp} was started as {then} and moved or copied here; Ray's state would send its "
            f"unfinished trials back to {then}, so resume it where it started (move it back), or start a new --name"
        )


def read_record(exp: str) -> SweepSettings:
    """The recorded settings; call after ``verify_experiment``. A FerError when there is no record."""
    doc = _read(exp, RECORD)
    if doc is None:
        raise FerError(
            f"{exp}: no {RECORD} in the experiment folder, so its settings are unknown; start a new --name"
        )
    s = settings_from_mapping(doc["settings"], f"{exp}/{RECORD}")
    return dataclasses.replace(s, given=frozenset(doc["given"]))


def _size_and_time(path) -> str:
    st = os.stat(path)
    return f"{st.st_size} {st.st_mtime_ns}"


def data_fingerprint(data: str) -> dict:
    """Per split: its image count, class counts and a hash of its file list with sizes and times."""
    out = {}
    for split in ("train", "val", "test"):
        if split == "test" and not (Path(data) / "test").is_dir():
            continue
        files = scan_split(data, split)
        stats = sorted(f"{os.path.relpath(p, data)} {_size_and_time(p)}" for p in files.paths)
        counts = Counter(files.labels)
        classes = {c: counts.get(i, 0) for i, c in enumerate(CLASS_NAMES)}
        files_hash = hashlib.sha256("\n".join(stats).encode()).hexdigest()
        out[split] = {"images": len(files.paths), "classes": classes, "files": files_hash}
    return out


def check_data(exp: str, data: str, record: bool) -> None:
    """Refuse data that changed since the experiment recorded it (one line naming what changed); with
    ``record``, record the data when the experiment has none yet (a new one, or one stopped before)."""
    now, then = data_fingerprint(data), _read(exp, DATA)
    if then is None:
        if record:
            _write(exp, DATA, now)
        return
    changed = []
    for split in sorted(then.keys() | now.keys()):
        a, b = then.get(split, {}), now.get(split, {})
        if a.get("images") != b.get("images"):
            changed.append(f"{split} {a.get('images', 'none')} -> {b.get('images', 'none')} images")
        elif a.get("classes") != b.get("classes"):
            moved = [
                f"{c} {n} -> {b['classes'].get(c)}"
                for c, n in a["classes"].items()
                if b["classes"].get(c) != n
            ]
            changed.append(f"{split} class counts {', '.join(moved)}")
        elif a.get("files") != b.get("files"):
            changed.append(f"{split} files replaced or changed (same counts)")
    if changed:
        raise FerError(
            f"--resume: {data} changed since {exp} started ({'; '.join(changed)}); resume on the data it "
            "started with, or start a new --name"
        )


def write_winner(exp: str, members: list[dict]) -> None:
    """Record the trials the retrain starts from (the winner first), chosen once before it starts."""
    _write(exp, WINNER, {"members": members})


def read_winner(exp: str) -> list[dict] | None:
    doc = _read(exp, WINNER)
    return None if doc is None else doc["members"]


def write_phases(exp: str, seconds: dict) -> None:
    """Record the seconds each phase has taken so far, over every run of the driver."""
    _write(exp, PHASES, seconds)


def read_phases(exp: str) -> dict:
    return _read(exp, PHASES) or {}


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
