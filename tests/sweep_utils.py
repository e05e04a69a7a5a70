"""Helpers for tests that run sweeps/run.py for real (a local Ray on 127.0.0.1)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

# Tiny but real: 4 trials of the real trainable on 32 px demo faces, ASHA over 2 epochs.
TINY = [
    "time_budget=",  # the demo YAML's time budget off: these tests size their sweeps themselves
    "demo.train_per_class=12",
    "demo.val_per_class=4",
    "demo.test_per_class=4",
    "demo.img_size=32",
    "img_size=32",
    "eval_batch_size=64",
    "scheduler.max_epochs=2",
    "scheduler.grace_period=1",
    "retrain_epochs=1",
    "max_failures=1",
]


def sweep_cmd(storage: Path, name: str, *extra: str) -> list[str]:
    # A test that gives --time-budget wants that budget, not TINY's time_budget= (the two would disagree).
    tiny = [a for a in TINY if "--time-budget" not in extra or not a.startswith("time_budget=")]
    return [sys.executable, "sweeps/run.py", "--storage", str(storage), "--name", name, *tiny, *extra]


def run_sweep(storage: Path, name: str, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_cmd(storage, name, *extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def trial_states(exp: Path) -> dict[str, str]:
    """trial_id -> status, from Tune's latest experiment-state file ({} until one is written)."""
    # The name holds the session's start time; a resumed run writes a new file (and touches the old).
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        state = json.loads(Path(files[-1]).read_text())
    except (json.JSONDecodeError, OSError):  # caught mid-rename: try again next poll
        return {}
    out = {}
    for trial_json, _ in state["trial_data"]:
        t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        out[t["trial_id"]] = t["status"]
    return out


def trial_rows(exp: Path) -> dict[str, list[dict]]:
    """trial_id -> every reported row, from the trials' result.json files."""
    out = {}
    for f in exp.glob("fer_trainable_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def descendants(pid: int) -> list:
    """Every process started (directly or not) by pid, including Ray workers that left its process group."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_and_wait(procs: list) -> None:
    """SIGKILL these psutil processes (those already gone are skipped) and wait until they are gone."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def kill_all(proc: subprocess.Popen, children: list) -> None:
    """SIGKILL proc's process group and the recorded descendants, then wait until they are gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    kill_and_wait(children)
    proc.wait(timeout=60)


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def listening_addresses(pid: int) -> set[str]:
    """The local addresses that pid and its descendants listen on (TCP)."""
    import psutil

    out = set()
    for p in [psutil.Process(pid), *descendants(pid)]:
        try:
            conns = p.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return out
