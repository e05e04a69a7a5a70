"""The sweep's settings and experiment state between runs of the driver: one frozen settings value, the
record a resume reads, the time limit a resume restores, where a URI storage's report goes, and the
signing key a fresh cluster needs."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fer_core.errors import FerError
from sweeps.config.settings import load_settings, settings_from_mapping, to_mapping
from sweeps.driver import settings_for_resume
from sweeps.run import build_arg_parser, resolve_settings
from sweeps.state.record import write_record
from sweeps.state.signing import DEFAULT_KEY, KEY_ENV, sign_files, verify_experiment
from sweeps.state.storage import report_folder
from sweeps.tune.runs import Deadline

ROOT = Path(__file__).resolve().parents[1]


def test_settings_are_one_frozen_value_that_a_record_rebuilds_exactly():
    s = load_settings(None, {"num_samples": 3, "scheduler.max_epochs": 2, "weight_decay": 0.002})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_samples = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.scheduler.max_epochs = 4
    again = settings_from_mapping(to_mapping(s), "record")
    assert dataclasses.replace(again, given=s.given, source=s.source) == s
    assert {"num_samples", "scheduler.max_epochs", "retrain_epochs"} <= s.given
    assert "ensemble_top_k" not in s.given  # not in the demo YAML: a default, not a cap


def test_a_restored_time_limit_never_binds():
    """Bug: the search's time limit is pickled into Tune's state and decided whether it still bound by
    comparing process ids; in a container the driver is PID 1 on every start, so a resumed budgeted search
    stopped at its first result. A copy restored from the state (here: the same process) must not bind."""
    d = Deadline(0.0)
    assert not d.stop_all()  # past the deadline, but no trial has reported: a run with no result is worse
    assert d("t1", {"training_iteration": 1}) is True and d.stop_all()
    restored = pickle.loads(pickle.dumps(d))
    assert restored("t2", {"training_iteration": 1}) is False and not restored.stop_all()
    assert not Deadline(3600)("t1", {}) and not Deadline(3600).stop_all()
    # The retrain's: each trial stops at its next reported epoch (with that epoch's checkpoint).
    r = Deadline(0.0, whole_run=False)
    assert r("t1", {}) is True and not r.stop_all()


def _resume(tmp_path: Path, *argv: str):
    args = build_arg_parser().parse_intermixed_args(["--storage", str(tmp_path), "--name", "exp", *argv])
    bare = len(argv) == 1  # --resume alone
    return settings_for_resume(resolve_settings(args), str(tmp_path / "exp"), args, bare)


def test_resume_refuses_a_new_tracking_target_that_tune_would_not_use(tmp_path):
    """Bug: ``--tracking mlflow`` with ``--resume`` was accepted, but ``Tuner.restore`` keeps the callbacks
    the search started with: the search logged to the old place (or nowhere), the report to the new one."""
    write_record(str(tmp_path / "exp"), load_settings(None, {"storage": str(tmp_path), "name": "exp"}))
    with pytest.raises(FerError) as e:
        _resume(tmp_path, "--resume", "--tracking", "mlflow")
    assert "tracking" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FerError, match="tracking_uri"):
        _resume(tmp_path, "--resume", "--tracking-uri", str(tmp_path / "mlruns"))
    assert _resume(tmp_path, "--resume").tracking == "none"  # the recorded target, as Tune restores it


def test_a_uri_storage_report_never_lands_in_a_local_experiment_folder():
    """Bug: with a URI ``--storage`` the driver's copy of the report went to ./runs/NAME/report, which is
    also the report folder of the local experiment of the same name."""
    local = report_folder(load_settings(None, {"name": "demo"}))
    remote = report_folder(load_settings(None, {"name": "demo", "storage": "s3://bucket/sweeps"}))
    other = report_folder(load_settings(None, {"name": "demo", "storage": "s3://other/sweeps"}))
    assert local == Path("runs/demo/report").resolve()
    assert len({local, remote, other}) == 3
    runs = Path("runs").resolve()
    assert runs not in remote.parents and runs not in other.parents


@pytest.mark.parametrize("launcher", ["cluster.yaml", "cluster-onprem.yaml"])
def test_the_launcher_files_carry_the_users_signing_key_to_the_head(launcher):
    """Bug: the key was created in the head node's home, where the driver runs, and `ray down` destroyed it;
    resuming the sweep from its bucket on a fresh cluster was refused. The key is the user's: the launcher
    copies it to the nodes like the Ray auth token."""
    mounts = yaml.safe_load((ROOT / launcher).read_text())["file_mounts"]
    key = DEFAULT_KEY.removeprefix("~/")
    carried = {dst: src for dst, src in mounts.items() if src == DEFAULT_KEY}
    assert carried and all(dst.endswith(key) for dst in carried), mounts


def test_a_fresh_head_with_the_users_key_resumes_what_another_head_signed(tmp_path, monkeypatch):
    """The cluster flow of docs/cluster.md in small: `python -m sweeps.manifest key` makes the user's key, one head
    signs the experiment in shared storage, a fresh head with that key copied to it verifies it."""
    user = tmp_path / "laptop" / "experiment.key"
    made = subprocess.run(
        [sys.executable, "-m", "sweeps.manifest", "key"],
        env={**os.environ, KEY_ENV: str(user)},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert made.returncode == 0 and made.stdout.strip() == str(user) and user.stat().st_mode & 0o077 == 0
    exp = tmp_path / "bucket" / "exp"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"state")
    for head in ("head1", "head2"):  # each head gets its own copy of the user's key, as file_mounts does
        copy = tmp_path / head / "experiment.key"
        copy.parent.mkdir()
        copy.write_bytes(user.read_bytes())
        copy.chmod(0o600)
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "head1" / "experiment.key"))
    sign_files(str(exp), ["tuner.pkl"])
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "head2" / "experiment.key"))
    verify_experiment(str(exp))
