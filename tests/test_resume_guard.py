"""--resume continues the same experiment, and loads no state the sweep did not write (issue: resume
with a changed config, code from storage)."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys

import pytest

from fer_core.errors import FerError
from sweeps.config.settings import load_settings
from sweeps.driver import settings_for_resume
from sweeps.state.record import RECORD, flat_settings, resume_settings, write_record
from sweeps.state.signing import sign_experiment, verify_experiment

from .conftest import REPO
from .sweep_utils import run_sweep

NO_BUDGET = {"time_budget": ""}  # the demo YAML's time budget off: these settings are sized by hand


def _experiment(root):
    """A folder shaped like a Tune experiment: the files --resume would deserialise, and others."""
    (root / "trial_1" / "checkpoint_000000").mkdir(parents=True)
    (root / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    (root / "searcher-state-s1.pkl").write_bytes(pickle.dumps({"searcher": 1}))
    (root / "experiment_state-s1.json").write_text("{}")
    (root / "trial_1" / "error.pkl").write_bytes(pickle.dumps(ValueError("x")))
    (root / "trial_1" / "result.json").write_text("{}")
    (root / "trial_1" / "checkpoint_000000" / "last.pt").write_bytes(b"weights")
    return root


class _Evil:
    """Unpickling this runs code: what an attacker would plant."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_manifest_accepts_what_was_signed_and_refuses_changes_additions_and_forgeries(tmp_path):
    exp = _experiment(tmp_path / "exp")
    with pytest.raises(FerError, match="not signed"):
        verify_experiment(str(exp))
    assert sign_experiment(str(exp)) == 4  # tuner.pkl, searcher-state, experiment_state, error.pkl
    verify_experiment(str(exp))

    original = (exp / "searcher-state-s1.pkl").read_bytes()
    (exp / "searcher-state-s1.pkl").write_bytes(original + b"x")
    with pytest.raises(FerError, match=r"searcher-state-s1.pkl: changed after the sweep"):
        verify_experiment(str(exp))
    (exp / "searcher-state-s1.pkl").write_bytes(original)
    verify_experiment(str(exp))

    (exp / "trial_1" / "params.pkl").write_bytes(pickle.dumps(_Evil(tmp_path / "pwned")))
    with pytest.raises(FerError, match=r"trial_1/params.pkl: not written by the sweep"):
        verify_experiment(str(exp))
    (exp / "trial_1" / "params.pkl").unlink()

    manifest = exp / "fer_manifest-driver.json"
    doc = json.loads(manifest.read_text())
    doc["files"]["callback-states-x.pkl"] = ["0" * 64]
    manifest.write_text(json.dumps(doc))
    with pytest.raises(FerError, match="signature does not match"):
        verify_experiment(str(exp))


def test_signing_covers_exactly_the_files_tune_deserialises(tmp_path):
    from sweeps.state.signing import covered

    assert covered("tuner.pkl") and covered("experiment_state-x.json") and covered("trial_1/error.pkl")
    assert not covered("trial_1/result.json") and not covered("trial_1/checkpoint_000000/last.pt")
    assert not covered("fer_manifest-driver.json")


def test_a_key_others_can_read_is_refused(tmp_path):
    exp = _experiment(tmp_path / "exp")
    sign_experiment(str(exp))
    key = os.environ["FER_SWEEP_KEY_FILE"]
    os.chmod(key, 0o644)
    try:
        with pytest.raises(FerError, match="readable by others.*chmod 600"):
            verify_experiment(str(exp))
    finally:
        os.chmod(key, 0o600)


def test_resume_refuses_changed_settings_naming_the_keys(tmp_path):
    exp = str(tmp_path / "exp")
    started = load_settings(None, {**NO_BUDGET, "num_samples": 4, "retrain_epochs": 2})
    write_record(exp, started)
    verify_experiment(exp)  # the record is signed as it is written

    changed = load_settings(None, {**NO_BUDGET, "num_samples": 6, "weight_decay": 0.01, "retrain_epochs": 2})
    with pytest.raises(FerError) as e:
        resume_settings(changed, exp, bare=False, retrain_started=False)
    msg = str(e.value)
    assert (
        "\n" not in msg
        and "num_samples (4 -> 6)" in msg
        and "train.weight_decay" in msg
        and "retrain_epochs" not in msg
    )

    same = load_settings(None, {**NO_BUDGET, "num_samples": 4, "retrain_epochs": 2})
    assert resume_settings(same, exp, bare=False, retrain_started=False)[1] == []

    # No config on the command line: the experiment's own settings, not the default YAML's.
    default = load_settings(None, NO_BUDGET)
    resumed, applied = resume_settings(default, exp, bare=True, retrain_started=False)
    assert applied == [] and flat_settings(resumed) == flat_settings(started) and resumed.num_samples == 4


def test_retrain_settings_may_change_until_the_retrain_starts(tmp_path):
    exp = str(tmp_path / "exp")
    write_record(exp, load_settings(None, {**NO_BUDGET, "retrain_epochs": 2}))
    longer = load_settings(None, {**NO_BUDGET, "retrain_epochs": 5})
    with pytest.raises(FerError, match=r"retrain_epochs \(2 -> 5\) \(the retrain has started"):
        resume_settings(longer, exp, bare=False, retrain_started=True)
    settings, applied = resume_settings(longer, exp, bare=False, retrain_started=False)
    assert settings.retrain_epochs == 5 and applied == ["retrain_epochs 2 -> 5"]
    # The driver records it (not on a dry run), signed: a later bare resume runs the retrain it was told to.
    dry = argparse.Namespace(config="x.yaml", dry_run=True)
    assert settings_for_resume(longer, exp, dry, bare=False).retrain_epochs == 5
    assert json.loads((tmp_path / "exp" / RECORD).read_text())["settings"]["retrain_epochs"] == 2
    settings_for_resume(longer, exp, argparse.Namespace(config="x.yaml", dry_run=False), bare=False)
    assert json.loads((tmp_path / "exp" / RECORD).read_text())["settings"]["retrain_epochs"] == 5
    verify_experiment(exp)
    again, _ = resume_settings(load_settings(None, NO_BUDGET), exp, bare=True, retrain_started=False)
    assert again.retrain_epochs == 5


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    storage = tmp_path_factory.mktemp("guard")
    r = run_sweep(storage, "g", "num_samples=2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return storage, storage / "g"


def _bare_resume(storage, name):
    return subprocess.run(
        [sys.executable, "sweeps/run.py", "--storage", str(storage), "--name", name, "--resume"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )


@pytest.mark.slow
def test_a_real_sweep_is_signed_and_resumes_with_its_own_settings(finished):
    storage, exp = finished
    verify_experiment(str(exp))
    verify_experiment(str(exp / "retrain"))
    # Each save was signed straight into the storage, with a copy of what it signed: the last save's state.
    for folder in (exp, exp / "retrain"):
        state = sorted(p.name for p in folder.glob("*-state-*.*") if p.suffix in (".json", ".pkl"))
        assert state and all(
            (folder / "fer_signed" / n).read_bytes() == (folder / n).read_bytes() for n in state
        )
    r = _bare_resume(storage, "g")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "with the settings it was started with" in r.stdout
    # The default YAML asks for 8 trials; the experiment had 2, and its report still says so.
    assert "2 trials" in r.stdout and "8 trials" not in r.stdout
    assert json.loads((exp / "report" / "metrics.json").read_text())["retrain_epochs"] == 1

    r = run_sweep(storage, "g", "num_samples=5", "--resume", timeout=300)
    assert (
        r.returncode == 2 and "num_samples (2 -> 5)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    )


@pytest.mark.slow
def test_resume_refuses_planted_state_before_anything_is_unpickled(finished, tmp_path):
    storage, exp = finished
    marker = tmp_path / "pwned"
    (exp / "callback-states-2030-01-01_00-00-00.pkl").write_bytes(pickle.dumps({0: _Evil(marker)}))
    r = _bare_resume(storage, "g")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "callback-states-2030-01-01_00-00-00.pkl: not written by the sweep" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not marker.exists()
    assert "Started a local Ray instance" not in r.stdout + r.stderr
