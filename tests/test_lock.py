"""sweeps.state.lock: one driver at a time holds an experiment, with real processes holding real leases (a
local folder, and moto's S3 server on 127.0.0.1); a killed or silent holder's lease is taken over, and a
holder that finds its lease taken over ends at once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest

from fer_core.errors import ConfigError, FerError
from sweeps.state.lock import LEASE_ENV, LEASE_NAME, LOST_STATUS, Lease

from .conftest import REPO
from .s3_server import BUCKET, S3

# A driver stand-in: takes the lease (at START, an epoch time, when given), says so, holds it for HOLD_S.
HOLDER = """
import sys, time
from fer_core.errors import FerError
from sweeps.state.lock import Lease
uri, lease_s, start, hold_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
time.sleep(max(0.0, start - time.time()))
try:
    with Lease(uri, lease_s=lease_s):
        print("held", flush=True)
        time.sleep(hold_s)
except FerError as e:
    print(f"error: {e}", flush=True)
"""


def holder(uri: str, lease_s: float = 2, start: float = 0, hold_s: float = 600, env=None) -> subprocess.Popen:
    env = {**(env or os.environ), "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", HOLDER, uri, str(lease_s), str(start), str(hold_s)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_held(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line == "held\n", line + proc.stdout.read()


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)  # reaped: its pid is gone, as a killed driver's is
    proc.stdout.close()
    proc.stderr.close()


def _running(proc) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def write_lease(folder, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lease = dict(host="elsewhere-node-7", pid=4242, started="2025-01-01T00:00:00+00:00", token="x" * 32)
    (folder / LEASE_NAME).write_text(json.dumps({**lease, **fields}))


def test_a_held_experiment_is_refused_in_one_line_until_its_holder_exits(tmp_path, capsys):
    exp = tmp_path / "runs" / "x"
    proc = holder(str(exp), lease_s=2)
    try:
        wait_held(proc)
        time.sleep(2.5)  # past its lease time: only its renewals keep it held
        with pytest.raises(FerError) as e:
            Lease(str(exp), lease_s=2).__enter__()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{exp}: held by another driver")
        assert f"host {socket.gethostname()}, pid {proc.pid}, started " in msg
        assert "its lease expires 2s after its last renewal" in msg
    finally:
        kill(proc)
    with Lease(str(exp), lease_s=2) as lease:  # held in this process now: a second one is refused
        held = json.loads((exp / LEASE_NAME).read_text())
        assert (held["host"], held["pid"], held["token"]) == (
            socket.gethostname(),
            os.getpid(),
            lease.mine["token"],
        )
        with pytest.raises(FerError, match=f"pid {os.getpid()}, started"):
            Lease(str(exp), lease_s=2).__enter__()
    assert "taking over" in capsys.readouterr().out  # from the killed holder
    assert not (exp / LEASE_NAME).exists() and sorted(os.listdir(exp)) == []  # released, no temp file left
    with Lease(str(exp), lease_s=2):  # and the next driver takes it, quietly
        pass
    assert "taking over" not in capsys.readouterr().out


def test_a_killed_holders_lease_is_taken_over_and_the_log_says_so(tmp_path, capsys):
    exp = tmp_path / "x"
    proc = holder(str(exp), lease_s=60)  # well within its lease time: only the dead pid makes it stale
    wait_held(proc)
    kill(proc)
    with Lease(str(exp), lease_s=60) as lease:
        assert json.loads((exp / LEASE_NAME).read_text())["token"] == lease.mine["token"]
    out = capsys.readouterr().out
    assert (
        f"[sweeps] taking over the lease of a driver that is gone (host {socket.gethostname()}, pid {proc.pid}"
        in out
    )
    assert "its process is no longer running on this host" in out


def test_a_killed_holders_pid_given_to_a_later_process_does_not_keep_its_lease(tmp_path, capsys):
    """pids wrap around: the killed driver's pid may belong to a process started after its lease was taken."""
    later = subprocess.Popen(["sleep", "60"])
    try:
        write_lease(tmp_path / "x", host=socket.gethostname(), pid=later.pid, renewed=time.time(), lease_s=60)
        with Lease(str(tmp_path / "x"), lease_s=60):
            pass
        out = capsys.readouterr().out
        assert (
            f"taking over the lease of a driver that is gone (host {socket.gethostname()}, pid {later.pid}"
            in out
        )
        assert "its process is no longer running on this host" in out
        # the same live process, named by a lease taken after it started, is a live holder
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        write_lease(tmp_path / "x", host=socket.gethostname(), pid=later.pid, renewed=time.time(), lease_s=60,
                    started=started)  # fmt: skip
        with pytest.raises(FerError, match=f"held by another driver .*pid {later.pid}"):
            Lease(str(tmp_path / "x"), lease_s=60).__enter__()
    finally:
        later.kill()
        later.wait()


def test_a_lease_not_renewed_within_its_time_is_taken_over(tmp_path, capsys):
    write_lease(tmp_path / "x", renewed=time.time() - 100, lease_s=60)
    with Lease(str(tmp_path / "x"), lease_s=60):
        pass
    out = capsys.readouterr().out
    assert "taking over the lease of a driver that is gone (host elsewhere-node-7, pid 4242" in out
    assert "last renewed 100s ago, more than its 60s" in out
    assert not (tmp_path / "x" / LEASE_NAME).exists()


def test_a_live_lease_of_another_host_is_refused_and_left_alone(tmp_path):
    write_lease(tmp_path / "x", renewed=time.time() - 5, lease_s=60)
    before = (tmp_path / "x" / LEASE_NAME).read_text()
    with pytest.raises(FerError) as e:
        Lease(str(tmp_path / "x"), lease_s=2).__enter__()  # the holder's own lease time counts, not ours
    assert str(e.value) == (
        f"{tmp_path / 'x'}: held by another driver (host elsewhere-node-7, pid 4242, started "
        "2025-01-01T00:00:00+00:00, renewed 5s ago); wait for it to finish, or stop it (if it was killed, "
        "its lease expires 60s after its last renewal)"
    )
    assert (tmp_path / "x" / LEASE_NAME).read_text() == before


def test_the_lease_is_renewed_while_held_and_released_on_an_exception(tmp_path):
    exp = tmp_path / "x"
    with pytest.raises(KeyboardInterrupt):
        with Lease(str(exp), lease_s=0.4):
            first = json.loads((exp / LEASE_NAME).read_text())["renewed"]
            time.sleep(0.5)
            assert json.loads((exp / LEASE_NAME).read_text())["renewed"] > first
            raise KeyboardInterrupt
    assert not exp.exists()  # made for the lease and still empty: removed with it


def test_of_two_drivers_starting_at_once_one_holds_the_experiment(tmp_path):
    start = time.time() + 3  # both are past their imports by then
    procs = [holder(str(tmp_path / "x"), start=start, hold_s=4) for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0] for p in procs)
    assert outs[0].startswith(f"error: {tmp_path / 'x'}: held by another driver"), outs
    assert outs[1] == "held\n", outs


def test_an_experiment_on_object_storage_is_held_the_same_way(tmp_path, monkeypatch, capsys):
    store = S3(tmp_path)
    try:
        for k, v in store.env.items():
            if k.startswith("AWS_") or k == "NO_PROXY":
                monkeypatch.setenv(k, v)
        uri = f"s3://{BUCKET}/sweeps/x"
        proc = holder(uri, lease_s=60, env=store.env)
        try:
            wait_held(proc)
            assert store.files("sweeps/x") == [f"sweeps/x/{LEASE_NAME}"]
            with pytest.raises(FerError, match=f"{uri}: held by another driver .*pid {proc.pid}, started"):
                Lease(uri, lease_s=60).__enter__()
        finally:
            kill(proc)
        with Lease(uri, lease_s=60) as lease:
            assert json.loads(store.read(f"sweeps/x/{LEASE_NAME}"))["token"] == lease.mine["token"]
        assert f"driver that is gone (host {socket.gethostname()}, pid {proc.pid}" in capsys.readouterr().out
        assert store.files("sweeps/x") == []
    finally:
        store.stop()


def test_a_holder_stopped_past_its_lease_and_taken_over_ends_at_once_in_one_line(tmp_path):
    exp = tmp_path / "x"
    proc = holder(str(exp), lease_s=1)
    try:
        wait_held(proc)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # past its lease: stale although its process still exists
        with Lease(str(exp), lease_s=60) as lease:
            proc.send_signal(signal.SIGCONT)
            assert proc.wait(timeout=10) == LOST_STATUS  # it would otherwise hold for 600 s
            err = proc.stderr.read()
            assert err == (
                f"error: {exp}: this driver lost the experiment: another driver took it over (host "
                f"{socket.gethostname()}, pid {os.getpid()}, started {lease.mine['started']}); it stops here, "
                "without writing more\n"
            )
            assert json.loads((exp / LEASE_NAME).read_text())["token"] == lease.mine["token"]  # left alone
    finally:
        kill(proc)


def test_a_renewal_that_landed_although_its_answer_was_lost_keeps_the_lease(tmp_path):
    """The storage goes down between a renewal's write and its answer: the lease holds the holder's token
    but not the bytes it knows it wrote. It is still the holder's, which goes on (not a lost lease)."""
    exp = tmp_path / "x"
    proc = holder(str(exp), lease_s=0.4, hold_s=2)
    try:
        wait_held(proc)
        lease = json.loads((exp / LEASE_NAME).read_text())
        landed = exp / "landed.tmp"
        landed.write_text(json.dumps({**lease, "renewed": lease["renewed"] + 0.05}))
        os.replace(landed, exp / LEASE_NAME)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert proc.stdout.read() == "" and proc.stderr.read() == ""
        assert not exp.exists()  # released on exit as its own
    finally:
        kill(proc)


def test_of_two_drivers_replacing_the_same_stale_lease_only_one_wins(tmp_path):
    write_lease(tmp_path / "x", renewed=time.time() - 100, lease_s=60)
    stale = (tmp_path / "x" / LEASE_NAME).read_bytes()
    a, b = Lease(str(tmp_path / "x"), lease_s=60), Lease(str(tmp_path / "x"), lease_s=60)
    assert a._replace(stale)  # both judged the same lease stale; a replaces it first
    assert not b._replace(stale)  # b's replacement of that lease now finds a's: refused
    assert json.loads((tmp_path / "x" / LEASE_NAME).read_text())["token"] == a.mine["token"]
    assert not b._replace(None)  # nor may b create one where a's is
    assert sorted(os.listdir(tmp_path / "x")) == [LEASE_NAME]  # no claim or temporary file left


def test_a_claim_left_by_a_driver_killed_while_taking_over_is_cleared_after_the_lease_time(tmp_path):
    write_lease(tmp_path / "x", renewed=time.time() - 100, lease_s=1)
    stale = (tmp_path / "x" / LEASE_NAME).read_bytes()
    a, b = Lease(str(tmp_path / "x"), lease_s=1), Lease(str(tmp_path / "x"), lease_s=1)
    claim = tmp_path / "x" / f"{LEASE_NAME}.{hashlib.sha256(stale).hexdigest()[:16]}.claim"
    os.link(tmp_path / "x" / LEASE_NAME, claim)  # as a driver killed between its claim and its replace leaves
    assert not a._replace(stale)  # a claim this recent may be a live driver's
    time.sleep(1.2)
    assert b._replace(stale)
    assert json.loads((tmp_path / "x" / LEASE_NAME).read_text())["token"] == b.mine["token"]
    assert sorted(os.listdir(tmp_path / "x")) == [LEASE_NAME]


@pytest.mark.parametrize("fields", [dict(renewed=float("nan")), dict(renewed=time.time(), lease_s=1e12)])
def test_a_lease_no_driver_writes_is_taken_over(tmp_path, fields, capsys):
    write_lease(tmp_path / "x", **{"lease_s": 60, **fields})
    with Lease(str(tmp_path / "x"), lease_s=60):
        pass
    assert (
        "taking over the lease of a driver that is gone (host elsewhere-node-7, pid 4242"
        in capsys.readouterr().out
    )


def test_a_future_dated_lease_is_refused_naming_the_file_to_remove(tmp_path):
    write_lease(tmp_path / "x", renewed=time.time() + 3600, lease_s=60)
    with pytest.raises(FerError) as e:
        Lease(str(tmp_path / "x"), lease_s=60).__enter__()
    assert str(e.value) == (
        f"{tmp_path / 'x'}: held by another driver (host elsewhere-node-7, pid 4242, started "
        "2025-01-01T00:00:00+00:00), whose lease is dated 3600s ahead of this host's clock; if no driver runs on "
        f"this experiment, remove {tmp_path / 'x' / LEASE_NAME}"
    )


def test_a_lease_that_is_a_folder_is_refused_with_the_fix(tmp_path):
    (tmp_path / "x" / LEASE_NAME).mkdir(parents=True)
    with pytest.raises(FerError) as e:
        Lease(str(tmp_path / "x"), lease_s=60).__enter__()
    assert str(e.value) == (
        f"{tmp_path / 'x' / LEASE_NAME} is a folder, not a lease; nothing of the experiment is kept there: remove it"
    )


@pytest.mark.parametrize("value", ["0", "soon", "inf"])
def test_a_bad_lease_time_is_refused_in_one_line(tmp_path, monkeypatch, value):
    monkeypatch.setenv(LEASE_ENV, value)
    with pytest.raises(
        ConfigError, match=f"^{LEASE_ENV}='{value}': the lease time must be a number of seconds"
    ):
        Lease(str(tmp_path / "x"))


@pytest.mark.slow
def test_a_driver_stopped_past_its_lease_ends_and_the_resuming_one_finishes_the_experiment(tmp_path):
    """Driver A is stopped (SIGSTOP) mid-search past its lease, B resumes the experiment, A continues: A ends
    in one line without writing more, B finishes, and the experiment has one report and num_samples trials."""
    import psutil

    from .sweep_utils import descendants, kill_all, sweep_cmd, trial_states

    env = {**os.environ, LEASE_ENV: "3"}
    exp, logs = (
        tmp_path / "x",
        {n: (open(tmp_path / f"{n}.out", "w+"), open(tmp_path / f"{n}.err", "w+")) for n in "ab"},
    )
    a = subprocess.Popen(
        sweep_cmd(tmp_path, "x", "num_samples=3"),
        cwd=REPO,
        env=env,
        stdout=logs["a"][0],
        stderr=logs["a"][1],
        start_new_session=True,
    )
    b, a_children = None, []
    try:
        deadline = time.time() + 600
        while "RUNNING" not in trial_states(exp).values():
            assert a.poll() is None and time.time() < deadline, (tmp_path / "a.err").read_text()[-3000:]
            time.sleep(0.3)
        a_children = descendants(a.pid)
        a.send_signal(signal.SIGSTOP)
        time.sleep(4)  # past A's 3 s lease
        resume = [sys.executable, "sweeps/run.py", "--resume", "--name", "x", "--storage", str(tmp_path)]
        b = subprocess.Popen(
            resume, cwd=REPO, env=env, stdout=logs["b"][0], stderr=logs["b"][1], start_new_session=True
        )
        while "taking over the lease" not in (tmp_path / "b.out").read_text():
            assert b.poll() is None and time.time() < deadline, (tmp_path / "b.err").read_text()[-3000:]
            time.sleep(0.3)
        seen = len((tmp_path / "a.err").read_text())
        a.send_signal(signal.SIGCONT)
        assert a.wait(timeout=60) == LOST_STATUS
        after = (tmp_path / "a.err").read_text()[seen:]
        errors = [ln for ln in after.splitlines() if ln.startswith("error:")]
        assert (
            errors
            == [
                f"error: {exp}: this driver lost the experiment: another driver took it over (host "
                f"{socket.gethostname()}, pid {b.pid}, " + errors[0].split(f"pid {b.pid}, ", 1)[-1]
            ]
            and "Traceback" not in after
        ), after[-3000:]
        assert errors[0].endswith("it stops here, without writing more")
        # A's local Ray ends with it (Ray's reaper), its trial workers too; Ray's two idle agents notice later.
        agents = {"ray::RuntimeEnvAgent", "ray::DashboardAgent"}
        _, alive = psutil.wait_procs(a_children, timeout=60)
        alive = [p for p in alive if _running(p)]  # a zombie has ended (its parent has not reaped it yet)
        assert {p.name() for p in alive} <= agents, f"A's processes outlived it: {alive}"
        assert b.wait(timeout=900) == 0, (tmp_path / "b.err").read_text()[-3000:]
    finally:
        a.send_signal(signal.SIGCONT) if a.poll() is None else None
        kill_all(a, a_children)
        if b is not None:
            kill_all(b, descendants(b.pid) if b.poll() is None else [])
    metrics = json.loads((exp / "report" / "metrics.json").read_text())
    assert (exp / "report" / "report.md").is_file() and (exp / "report" / "best.pt").is_file()
    assert len(list(exp.glob("fer_trainable_*"))) == 3, sorted(p.name for p in exp.iterdir())
    assert set(trial_states(exp).values()) <= {"TERMINATED", "ERROR"}
    assert not (exp / LEASE_NAME).exists()
    winner = json.loads((exp / "fer_winner.json").read_text())["members"][0]["trial_id"]
    assert metrics["best_trial"] == winner and f"`{winner}`" in (exp / "report" / "report.md").read_text()
    assert "retraining it anew" not in (tmp_path / "a.out").read_text()  # A never chose one
