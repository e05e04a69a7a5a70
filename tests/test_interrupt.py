"""Ctrl-C stops a sweep cleanly in any phase, says what was kept and how to go on, and the command it
prints finishes the experiment."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO
from .sweep_utils import descendants, kill_all, sweep_cmd, trial_states

pytestmark = pytest.mark.slow  # real sweeps on a local Ray


def _interrupt_when(tmp_path: Path, name: str, ready, what: str) -> subprocess.CompletedProcess:
    """Start a tiny sweep in a session of its own, press Ctrl-C (SIGINT to its whole process group, as a
    terminal does) once ``ready(exp)`` holds, and return how it ended."""
    cmd = sweep_cmd(tmp_path, name, "num_samples=3")
    out, err = open(tmp_path / f"{name}.out", "w+"), open(tmp_path / f"{name}.err", "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, start_new_session=True)
    children = []
    try:
        deadline = time.time() + 600
        while not ready(tmp_path / name):
            assert proc.poll() is None and time.time() < deadline, (
                f"{what} never came: " + Path(err.name).read_text()[-3000:]
            )
            time.sleep(0.3)
        children = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            kill_all(proc, children or descendants(proc.pid))
        else:
            kill_all(proc, children)
    return subprocess.CompletedProcess(
        cmd, proc.returncode, Path(out.name).read_text(), Path(err.name).read_text()
    )


def _continue(r: subprocess.CompletedProcess) -> list[str]:
    """The command the interrupted sweep printed, as arguments to run from the repository root."""
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("interrupted:"))
    command = shlex.split(line.split("continue it with: ", 1)[1])
    assert command[:2] == ["python", "sweeps/run.py"], line
    return [sys.executable, *command[1:]]


def _assert_clean_stop(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 130, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Tuner.restore" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert "every trial failed" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "--resume --name" in lines[0], r.stderr[-3000:]


@pytest.mark.parametrize(
    "phase, ready",
    [
        ("search", lambda exp: "TERMINATED" in trial_states(exp).values()),
        ("retrain", lambda exp: bool(trial_states(exp / "retrain"))),
    ],
)
def test_one_ctrl_c_stops_cleanly_and_its_command_finishes_the_sweep(tmp_path, phase, ready):
    r = _interrupt_when(tmp_path, phase, ready, f"the {phase}")
    _assert_clean_stop(r)
    assert not (tmp_path / phase / "report" / "report.md").exists()
    done = subprocess.run(_continue(r), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / phase / "report" / "report.md").is_file()
    states = trial_states(tmp_path / phase)
    assert len(states) == 3 and set(states.values()) == {"TERMINATED"}, states


def test_a_driver_killed_in_the_retrain_resumes_with_the_winner_it_announced(tmp_path):
    """Killed once the retrain has reported an epoch (SIGKILL, nothing saved on the way out), the resumed
    run retrains and reports the winner the killed driver announced, recorded before its retrain began,
    and its time table counts the killed run's search too."""
    name, exp = "killed", tmp_path / "killed"
    cmd = sweep_cmd(tmp_path, name, "num_samples=3")
    cmd += ["retrain_epochs=3"]
    log = open(tmp_path / "first.log", "w+")
    started, announced_at = time.monotonic(), None
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    children = []
    try:
        deadline = time.time() + 600
        while not any(exp.glob("retrain/*/result.json")) or not any(
            f.stat().st_size for f in exp.glob("retrain/*/result.json")
        ):
            assert proc.poll() is None and time.time() < deadline, Path(log.name).read_text()[-3000:]
            if announced_at is None and "retraining it anew" in Path(log.name).read_text():
                announced_at = time.monotonic()  # the search (and the start-up before it) ended about here
            time.sleep(0.3)
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)  # the driver only, as a crash would
        proc.wait(timeout=30)
    finally:
        kill_all(proc, children or descendants(proc.pid))
    announced = next(ln for ln in Path(log.name).read_text().splitlines() if "retraining it anew" in ln)
    winner = re.search(r"\[sweeps\] (?:best|chosen) trial (\w+):", announced).group(1)

    r = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((exp / "report" / "metrics.json").read_text())
    assert metrics["best_trial"] == winner, (metrics["best_trial"], announced)
    assert f"`{winner}`" in (exp / "report" / "report.md").read_text()
    phases = metrics["timing"]["phases"]
    first_run = [k for k in phases if k.startswith("start-up")]
    assert sum(phases[k] for k in first_run) + phases["search"] >= 0.8 * (announced_at - started), phases
    assert phases["total"] >= phases["search"] + phases["retrain"], phases


def test_a_second_driver_new_or_resuming_is_refused_while_the_first_runs(tmp_path):
    """Two drivers on one experiment wrote two searches into one folder; the second is refused in one line
    naming the holder, and the first finishes undisturbed."""
    cmd = sweep_cmd(tmp_path, "x", "num_samples=2")
    log = open(tmp_path / "first.log", "w+")
    first = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not trial_states(tmp_path / "x"):
            assert first.poll() is None and time.time() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.3)
        for extra in ([], ["--resume"]):
            r = subprocess.run([*cmd, *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
            assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
            assert "held by another driver" in errors[0] and f"pid {first.pid}" in errors[0], errors
        assert first.wait(timeout=900) == 0, Path(log.name).read_text()[-3000:]
    finally:
        if first.poll() is None:
            kill_all(first, descendants(first.pid))
    assert (tmp_path / "x" / "report" / "report.md").is_file()
    assert not (tmp_path / "x" / ".fer-lease").exists()
