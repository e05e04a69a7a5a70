"""``--storage s3://...`` against a real S3-compatible server (moto's, on 127.0.0.1) reached through a TCP
proxy that the tests close and reopen: what multi-node users run, with the storage failures they meet.

Everything listens on 127.0.0.1; the sweep finds the server through AWS_ENDPOINT_URL (what docs/cluster.md tells
users of MinIO/Ceph), with dummy credentials and the EC2 metadata probe off, so nothing else is contacted.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO
from .s3_server import BUCKET, S3
from .sweep_utils import TINY, descendants, kill_all, trial_rows, trial_states

REPORT = ["report.md", "best.pt", "metrics.json", "best_config.yaml", "trials.csv"]


@pytest.fixture
def s3(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3(tmp_path)
    try:
        yield store
    finally:
        store.stop()


def sweep_cmd(name: str, *extra: str, storage: str = f"s3://{BUCKET}/sweeps") -> list[str]:
    return [
        sys.executable,
        str(REPO / "sweeps" / "run.py"),
        "--storage",
        storage,
        "--name",
        name,
        *TINY,
        *extra,
    ]


def run(s3: S3, name: str, *extra: str, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    # cwd: the driver's copy of a URI storage's report goes to ./fer-sweep-reports/, here inside tmp_path
    return subprocess.run(
        sweep_cmd(name, *extra, **kw), cwd=s3.tmp, capture_output=True, text=True, timeout=timeout, env=s3.env
    )


def start(s3: S3, name: str, *extra: str, log_name: str = "first") -> tuple[subprocess.Popen, Path]:
    log = s3.tmp / f"{name}-{log_name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            sweep_cmd(name, *extra),
            cwd=s3.tmp,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=s3.env,
        )
    return proc, log


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def wait_for(s3: S3, proc: subprocess.Popen, log: Path, exp: str, done, timeout: float) -> dict:
    """Poll the bucket until ``done(states)``; returns Tune's trial states then. Fails with the log's tail
    after ``timeout`` seconds."""
    deadline = time.time() + timeout
    states = {}
    while time.time() < deadline:
        states = trial_states(s3.mirror_state(exp))
        if done(states):
            return states
        assert proc.poll() is None, tail(log)
        time.sleep(1)
    pytest.fail(f"{exp}: not reached within {timeout:.0f} s: {states}\n{tail(log)}")


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Wait for the driver ``proc`` to exit; past ``timeout`` seconds it and its Ray are killed and the test
    fails with the log's tail. Returns the log."""
    try:
        proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        kill_all(proc, descendants(proc.pid))
        pytest.fail(f"the driver did not finish within {timeout:.0f} s\n{tail(log)}")
    return log.read_text()


def one_finished_and_another_started(states: dict) -> bool:
    return list(states.values()).count("TERMINATED") >= 1 and len(states) >= 2


def assert_nothing_lost(s3: S3, exp: str, done_before: set, rows_before: dict, total: int) -> None:
    local = s3.mirror_state(exp)
    states, rows_after = trial_states(local), trial_rows(local)
    assert len(states) == total and set(states.values()) <= {"TERMINATED", "ERROR"}, states
    keys = ("epoch", "val_accuracy", "val_loss", "train_loss")
    for trial in done_before:
        assert states[trial] == "TERMINATED", trial
        assert [{k: r[k] for k in keys} for r in rows_after[trial]] == [
            {k: r[k] for k in keys} for r in rows_before[trial]
        ], trial


def assert_report_in_both_places(s3: S3, exp: str, name: str, out: str) -> None:
    """A URI storage's report is written on the driver, in ./fer-sweep-reports/ mirroring the URI (never in a
    local experiment's runs/NAME/report), and copied to STORAGE/NAME/report."""
    local = s3.tmp / "fer-sweep-reports" / "s3" / BUCKET / "sweeps" / name / "report"
    assert not (s3.tmp / "runs").exists()
    uploaded = set(s3.files(f"{exp}/report"))
    for f in REPORT:
        assert (local / f).is_file(), f
        assert f"{exp}/report/{f}" in uploaded, (f, sorted(uploaded))
    assert s3.read(f"{exp}/report/metrics.json") == (local / "metrics.json").read_bytes()
    assert s3.read(f"{exp}/report/best.pt") == (local / "best.pt").read_bytes()
    assert f"report copied to s3://{BUCKET}/{exp}/report" in out


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# ---- before Ray starts: the storage check ----


def test_storage_check_names_the_problem_in_one_line(s3, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    from fer_core.errors import FerError
    from sweeps.state import storage
    from sweeps.state.storage import check_writable

    for k, v in s3.env.items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    check_writable(f"s3://{BUCKET}/ok", "--storage")  # writes and deletes its probe
    assert s3.files("ok") == []

    with pytest.raises(
        FerError, match=r"^--storage s3://no-such-bucket/x: cannot write there: the bucket does not exist"
    ):
        check_writable("s3://no-such-bucket/x", "--storage")
    with pytest.raises(FerError, match="query parameters .* AWS_ENDPOINT_URL"):
        check_writable(f"s3://{BUCKET}/x?endpoint_override=127.0.0.1:1&scheme=http", "--storage")
    with (
        enable_iam_authentication()
    ):  # the server now checks keys, and knows none: the dummy ones are refused
        with pytest.raises(
            FerError, match="cannot write there: no credentials allowed to write there; set AWS_ACCESS_KEY_ID"
        ):
            check_writable(f"s3://{BUCKET}/x", "--storage")

    s3.proxy.close()  # the server is down: refused at once, retried twice, then one line
    t0 = time.perf_counter()
    with pytest.raises(FerError, match="the storage server cannot be reached; check .* AWS_ENDPOINT_URL"):
        check_writable(f"s3://{BUCKET}/x", "--storage")
    assert time.perf_counter() - t0 < 30
    s3.proxy.open()

    # A server that accepts connections and never answers: bounded by the check's own timeouts (here made
    # short), not pyarrow's ~100 s per request.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{hole.getsockname()[1]}")
        monkeypatch.setattr(storage, "REQUEST_TIMEOUT_S", 1)
        t0 = time.perf_counter()
        with pytest.raises(FerError, match="cannot be reached"):
            check_writable(f"s3://{BUCKET}/x", "--storage")
        assert time.perf_counter() - t0 < 15
    finally:
        hole.close()


def test_sweep_refuses_a_missing_bucket_or_experiment_in_one_line_before_ray(s3):
    r = run(s3, "nobucket", storage="s3://no-such-bucket/sweeps", timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert error_lines(r.stderr) == [ln for ln in r.stderr.splitlines() if ln.strip()], r.stderr
    assert error_lines(r.stderr)[0].startswith(
        "error: --storage s3://no-such-bucket/sweeps: cannot write there: "
        "the bucket does not exist; create it or fix --storage"
    )
    assert "Ray" not in r.stdout
    # Tune.can_restore reads the bucket through the same endpoint: nothing there to resume
    r = run(s3, "nothing", "--resume", timeout=300)
    assert r.returncode == 2 and error_lines(r.stderr) == [
        f"error: s3://{BUCKET}/sweeps/nothing: no experiment to resume; run without --resume to start it "
        "(check --storage/--name)"
    ], r.stderr
    assert "Ray" not in r.stdout


# ---- a save carried to storage before its manifest ----


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_save_uploaded_before_its_manifest_is_put_back_signed_on_resume(
    where, tmp_path, request, monkeypatch
):
    """Tune's upload of an earlier save can still be running when the next save is written, and carry it up
    before SignStateCallback's manifest reaches storage (or that manifest write fails in an outage): a driver
    killed then leaves an unsigned state file. --resume puts back the last signed version, never an unsigned
    one."""
    from types import SimpleNamespace

    from ray.train._internal.storage import _FilesystemSyncer

    from fer_core.errors import FerError
    from sweeps.state.signing import (
        SIGNED_COPIES,
        SignStateCallback,
        experiment_id,
        restore_signed_state,
        verify_experiment,
    )
    from sweeps.state.storage import open_storage

    if where == "s3":
        for k, v in request.getfixturevalue("s3").env.items():
            if k.startswith("AWS_"):
                monkeypatch.setenv(k, v)
        uri = f"s3://{BUCKET}/sweeps/racy"
    else:
        uri = str(tmp_path / "runs" / "racy")
    fs, root = open_storage(uri)
    staging = tmp_path / "staging"
    staging.mkdir()
    syncer = _FilesystemSyncer(storage_filesystem=fs)  # Tune's uploader of the staging folder
    trial = SimpleNamespace(  # what the callback reads of a trial: Tune's storage context
        storage=SimpleNamespace(
            experiment_driver_staging_path=str(staging),
            storage_filesystem=fs,
            experiment_fs_path=root,
            syncer=syncer,
        )
    )
    callback = SignStateCallback("racy", experiment_id(uri))
    callback.on_step_begin(0, [trial])
    state, searcher = "experiment_state-s.json", "searcher-state-s.pkl"

    def save(n: int, signed: bool) -> None:  # Tune's save: the state files, then the callbacks' state
        (staging / state).write_text(json.dumps({"trials": n, "pad": "x" * n}))
        (staging / searcher).write_bytes(bytes([n]) * (10 + n))
        if signed:
            callback.get_state()

    def upload(rel: str) -> None:  # an upload of the staging folder that reached this file
        with fs.open_output_stream(f"{root}/{rel}") as f:
            f.write((staging / rel).read_bytes())

    save(1, signed=True)
    syncer.sync_up(str(staging), root)  # Tune's step: the save, its upload in the background ...
    callback.on_step_end(
        1, [trial]
    )  # ... which the callback waits for: the next save is never carried up early
    first = (staging / state).read_bytes()
    with fs.open_input_stream(f"{root}/{state}") as f:
        assert f.readall() == first
    verify_experiment(uri)
    save(2, signed=False)  # the driver is killed before the manifest of save 2 reaches storage ...
    upload(state)  # ... after an upload carried its state file up (its manifest write failed in an outage)
    with pytest.raises(FerError, match=f"{state}: changed after the sweep"):
        verify_experiment(uri)
    assert restore_signed_state(uri) == [state]
    with fs.open_input_stream(f"{root}/{state}") as f:
        assert f.readall() == first
    verify_experiment(uri)

    # A copy in fer_signed/ is trusted only through the manifest: one written there by anyone else is not put back.
    upload(state)
    with fs.open_output_stream(f"{root}/{SIGNED_COPIES}/{state}") as f:
        f.write(b'{"trials": 99}')
    assert restore_signed_state(uri) == []
    with pytest.raises(FerError, match=f"{state}: changed after the sweep"):
        verify_experiment(uri)


# ---- a real sweep (a local Ray on 127.0.0.1) ----

OUTAGE_CAP_S = 120  # the longest the storage stays down waiting for the sweep to notice (an epoch's upload)
# The whole test's time, below pytest's timeout: a stuck phase fails with its log's tail, never pytest's bare timeout.
BUDGET_S = 720
CONNECT_FAILED = ("Could not connect to server", "NETWORK_CONNECTION")


@pytest.mark.slow
def test_sweep_on_s3_rides_out_an_outage_and_resumes_after_the_driver_is_killed(s3):
    """One sweep, three things that happen to multi-node sweeps on object storage, in order (one sweep
    instead of three keeps this to a few minutes on two cores):
    (a) it writes its experiment to the bucket; (c) the storage goes down mid-sweep and comes back:
    the sweep rides it out, or stops with one ``error:`` line; (b) the driver is killed; then
    ``--resume`` from the bucket keeps every finished trial and the report lands where docs/cluster.md says."""
    name = "s3sweep"
    exp = f"sweeps/{name}"
    proc, log = start(s3, name, "num_samples=3")
    t0 = time.perf_counter()

    def left() -> float:
        return BUDGET_S - (time.perf_counter() - t0)

    try:
        # (a) -------------------------------------------------------------------------------------
        states = wait_for(s3, proc, log, exp, one_finished_and_another_started, timeout=left())
        keys = s3.files(exp)
        assert f"{exp}/tuner.pkl" in keys and any(k.endswith("/last.pt") for k in keys), keys
        assert not (s3.tmp / "runs" / name).exists() and not (s3.tmp / "sweeps").exists()  # nothing local
        print(f"first trial finished in the bucket after {time.perf_counter() - t0:.0f} s", flush=True)

        # (c) the storage goes away until the sweep has met it (a checkpoint or state upload failed)
        seen = len(log.read_text())
        s3.proxy.close()
        down = time.perf_counter()

        def noticed() -> bool:  # in the log since the storage went down
            return any(m in log.read_text()[seen:] for m in CONNECT_FAILED)

        cap = min(OUTAGE_CAP_S, max(left(), 0))
        while time.perf_counter() - down < cap and proc.poll() is None and not noticed():
            time.sleep(0.5)
        time.sleep(3)
        s3.proxy.open()
        met = [ln for ln in log.read_text()[seen:].splitlines() if any(m in ln for m in CONNECT_FAILED)]
        print(f"storage down for {time.perf_counter() - down:.0f} s; the sweep met it: {met[:1]}", flush=True)
        assert noticed(), (
            "the sweep wrote nothing to the storage while it was down\n" + log.read_text()[-3000:]
        )

        # progress after the outage: a trial that was not finished before it ends (or the sweep does)
        before = {t for t, st in states.items() if st == "TERMINATED"}

        def another_ended_or_sweep_over(st: dict) -> bool:
            return proc.poll() is not None or any(st[t] in ("TERMINATED", "ERROR") for t in set(st) - before)

        wait_for(s3, proc, log, exp, another_ended_or_sweep_over, timeout=left())
        # (b) the driver is killed, if the sweep is still running; else it finished, or failed in one line
        if proc.poll() is None:
            children = descendants(proc.pid)
            proc.send_signal(signal.SIGKILL)  # the driver only, as a crash or `kill -9` would
            proc.wait(timeout=30)
            killed = True
        else:
            killed = False
    finally:
        kill_all(proc, children if "children" in locals() else descendants(proc.pid))
    first = log.read_text()
    print(
        f"first run: {'killed' if killed else f'exit {proc.returncode}'} after {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    if not killed and proc.returncode != 0:  # failed on the outage: one line, no traceback of its own
        errors = [ln for ln in first.splitlines() if ln.startswith("error:")]
        assert proc.returncode in (1, 2) and len(errors) == 1, first[-3000:]
        assert "Traceback" not in first[first.index(errors[0]) :], first[-3000:]
    local = s3.mirror_state(exp)
    states = trial_states(local)
    done_before, rows_before = {t for t, st in states.items() if st == "TERMINATED"}, trial_rows(local)
    assert done_before >= before

    t1 = time.perf_counter()
    resume, log = start(s3, name, "num_samples=3", "--resume", log_name="resume")
    out = finish(resume, log, timeout=left())
    assert resume.returncode == 0, out[-3000:]
    print(f"resume: {time.perf_counter() - t1:.0f} s", flush=True)
    if killed:  # the killed driver's lease is taken over at once (its process is gone), not after it expires
        assert "taking over the lease of a driver that is gone" in out, out[-3000:]
        assert "its process is no longer running on this host" in out, out[-3000:]
    assert_nothing_lost(s3, exp, done_before, rows_before, total=3)
    assert_report_in_both_places(s3, exp, name, out)
