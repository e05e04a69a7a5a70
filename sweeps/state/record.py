"""What an experiment records beside Ray's state, so that ``--resume`` continues the same experiment: its
settings, the data it started on, its time budget's plan, the decisions the search ended with (the winner,
the retrain's length, the trials the time limit stopped) and the time each phase took (signed JSON files in
STORAGE/NAME; the resume rules are in docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter

import pyarrow.fs as pafs

from fer_core.datasets import Dataset
from fer_core.errors import FerError
from sweeps.config.settings import LOCATION, SweepSettings, settings_from_mapping, to_mapping
from sweeps.state.signing import write_signed
from sweeps.state.storage import open_storage

RECORD, DATA, PLAN = "fer_sweep.json", "fer_data.json", "fer_plan.json"
WINNER, PHASES = "fer_winner.json", "fer_phases.json"
# Read only by the retrain and the report, after the search: safe to change until the retrain starts.
RETRAIN_KEYS = ("retrain_epochs", "ensemble_top_k", "retrain.", "pick", "int8")


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


def data_fingerprint(dataset: Dataset) -> dict:
    """The data as an experiment records it: its classes and datasets, per split its image count, class
    counts and a hash of its file list with sizes and times, and the file lists of the splits made here
    (a split of a folder without train/ is the record's, not the seed's: a resume reads the same one)."""
    record = dataset.record()
    out: dict = {"classes": record["classes"], "sources": record["sources"], "splits": {}}
    for split in dataset.splits:
        parts = dataset.files[split]
        stats = sorted(
            f"{name}/{os.path.relpath(p, f.root)} {_size_and_time(p)}"
            for name, f in parts.items()
            for p in f.paths
        )
        counts = Counter(label for f in parts.values() for label in f.labels)
        out["splits"][split] = {
            "images": len(stats),
            "classes": {c: counts.get(i, 0) for i, c in enumerate(dataset.classes)},
            "files": hashlib.sha256("\n".join(stats).encode()).hexdigest(),
        }
    made = {s.name for s in dataset.sources if s.split is not None}
    if made:
        out["split_files"] = {
            sp: {n: v for n, v in by.items() if n in made} for sp, by in record["files"].items()
        }
    return out


def check_data(exp: str, dataset: Dataset, record: bool) -> None:
    """Refuse data that changed since the experiment recorded it (one line naming what changed); with
    ``record``, record the data when the experiment has none yet (a new one, or one stopped before)."""
    now, then = data_fingerprint(dataset), _read(exp, DATA)
    if then is None:
        if record:
            _write(exp, DATA, now)
        return
    changed = []
    if then.get("classes") != now["classes"]:
        changed.append(f"classes {', '.join(then.get('classes') or [])} -> {', '.join(now['classes'])}")
    a_splits, b_splits = then.get("splits", {}), now["splits"]
    for split in sorted(a_splits.keys() | b_splits.keys()):
        a, b = a_splits.get(split, {}), b_splits.get(split, {})
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
        roots = ", ".join(str(s.root) for s in dataset.sources)
        raise FerError(
            f"--resume: {roots} changed since {exp} started ({'; '.join(changed)}); resume on the data it "
            "started with, or start a new --name"
        )


def write_plan(exp: str, budget: dict | None, measured: dict) -> None:
    """Record the plan as the search starts: the time budget's (``TimeBudget.to_record``, None without one)
    and the measured objectives per architecture (``sweeps.plan.latency``, empty without them)."""
    _write(exp, PLAN, {"budget": budget, "measured": measured})


def read_plan(exp: str) -> dict:
    """``write_plan``'s document (``budget``, ``measured``); empty values before the search started."""
    return _read(exp, PLAN) or {"budget": None, "measured": {}}


def write_winner(
    exp: str,
    members: list[dict],
    *,
    retrain_epochs: int,
    stopped_by_time: list[str] | frozenset[str] = (),
    budget: dict | None = None,
) -> None:
    """Record, in one file, what the search ended with: the trials the retrain starts from (the winner
    first), the retrain's length, the trials the time limit stopped and the budget as the retrain was
    resized (``TimeBudget.to_record``); chosen once, before the retrain starts."""
    doc = {"members": members, "retrain_epochs": retrain_epochs, "stopped_by_time": sorted(stopped_by_time)}
    _write(exp, WINNER, doc | {"budget": budget})


def read_winner(exp: str) -> dict | None:
    """``write_winner``'s document (``members``, ``retrain_epochs``, ``stopped_by_time``, ``budget``), or
    None while the winner is not chosen."""
    return _read(exp, WINNER)


def write_phases(exp: str, seconds: dict) -> None:
    """Record the seconds each phase has taken so far, over every run of the driver."""
    _write(exp, PHASES, seconds)


def read_phases(exp: str) -> dict:
    return _read(exp, PHASES) or {}


def _show(v) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _with_command_line(saved: SweepSettings, given: SweepSettings) -> SweepSettings:
    """``saved`` with the keys ``given`` took from the command line (its ``origins``) laid over it."""
    raw, new = to_mapping(saved), to_mapping(given)
    for key in given.origins:
        section, _, sub = key.partition(".")
        if key in LOCATION:
            continue
        if sub:
            raw.setdefault(section, {})[sub] = new[section][sub]
        else:
            raw[key] = new[key]
    s = settings_from_mapping(raw, saved.source, given.origins)
    return dataclasses.replace(s, given=saved.given | given.origins.keys())


def resume_settings(
    given: SweepSettings, exp: str, bare: bool, retrain_started: bool, from_file: bool = True
) -> tuple[SweepSettings, list[str]]:
    """The settings a resumed sweep runs with, and the changes it takes over ("key old -> new"); the
    caller records them (not a dry run).

    ``bare``: the command line set only where the experiment is, so the record is used as it is. Without
    ``from_file`` (no --config), the keys the command line set are laid over the record. A time budget's
    plan (trials, epochs, retrain) is kept for the keys the command line did not set. A change a resume
    cannot honour (any but retrain keys before ``retrain_started``) is a one-line FerError naming the key.
    """
    saved = dataclasses.replace(read_record(exp), name=given.name, storage=given.storage)
    if bare:
        return saved, []
    if not from_file:
        given = _with_command_line(saved, given)
    elif saved.time_budget and given.time_budget == saved.time_budget:  # keep what that budget planned
        planned = {k: getattr(saved, k) for k in ("num_samples", "retrain_epochs") if k not in given.origins}
        if "scheduler.max_epochs" not in given.origins:
            planned["scheduler"] = dataclasses.replace(given.scheduler, max_epochs=saved.scheduler.max_epochs)
        given = dataclasses.replace(given, **planned)
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
            f"{' (the retrain has started: its winner and length are recorded)' if started else ''}; resume "
            "with only --resume --name (the experiment's own settings are used), or start a new --name"
        )
    return given, [f"{k} {_show(old.get(k))} -> {_show(new.get(k))}" for k in safe]
