"""A resume reads the decisions the first run recorded, applies or refuses the keys it is given (never
ignores them), writes nothing while deciding, and keeps the phase clock running on a thread of its own."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import time
from pathlib import Path

import pytest

from fer_core.errors import FerError
from sweeps.config.settings import load_settings
from sweeps.plan.budget import Counts, Estimate, TimeBudget
from sweeps.state.record import read_winner, resume_settings, write_record, write_winner
from sweeps.state.signing import verify_experiment, write_signed
from sweeps.tune.progress import EpochProgress, Phases
from sweeps.tune.runs import match_searcher_to_trials

from . import kill_resume_check
from .conftest import REPO

BUDGETED = {"time_budget": "30m", "num_samples": 6, "retrain_epochs": 4, "scheduler.max_epochs": 3}


def _hashes(folder: Path) -> dict[str, str]:
    """Every file's hash, the killed driver's lease included (a dry run takes no lease)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_a_budgeted_resume_applies_an_explicit_retrain_key_and_says_so(tmp_path):
    exp = str(tmp_path / "exp")
    write_record(exp, load_settings(None, BUDGETED))
    # The same YAML and budget, retrain_epochs=5 on the command line: applied, not the recorded 4.
    given = load_settings(None, {**BUDGETED, "retrain_epochs": 5})
    settings, applied = resume_settings(given, exp, bare=False, retrain_started=False)
    assert settings.retrain_epochs == 5 and applied == ["retrain_epochs 4 -> 5"]
    # Keys the command line did not set keep the budget's plan.
    assert settings.num_samples == 6 and settings.scheduler.max_epochs == 3
    # Without --config: only the command line's key is laid over the record (the default YAML is not compared).
    alone = load_settings(None, {"retrain_epochs": 2})
    settings, applied = resume_settings(alone, exp, bare=False, retrain_started=False, from_file=False)
    assert (
        settings.retrain_epochs == 2
        and settings.time_budget == "30m"
        and applied == ["retrain_epochs 4 -> 2"]
    )
    # Once the retrain has started the same key is refused in one line naming it.
    with pytest.raises(FerError, match=r"retrain_epochs \(4 -> 2\) \(the retrain has started") as e:
        resume_settings(alone, exp, bare=False, retrain_started=True, from_file=False)
    assert "\n" not in str(e.value)


def test_deciding_a_resume_writes_nothing(tmp_path):
    exp = tmp_path / "exp"
    write_record(str(exp), load_settings(None, {"time_budget": "", "retrain_epochs": 2}))
    before = _hashes(exp)
    given = load_settings(None, {"time_budget": "", "retrain_epochs": 3})
    assert resume_settings(given, str(exp), bare=False, retrain_started=False)[1] == ["retrain_epochs 2 -> 3"]
    assert _hashes(exp) == before  # the driver records an applied change, unless a dry run


def test_the_search_decisions_are_recorded_together_and_read_back(tmp_path):
    exp = str(tmp_path / "exp")
    est = Estimate(trial_epoch_s=2.5, retrain_epoch_s=3.0, report_s=9.0, start_s=4.0, counts=Counts(10, 4, 2))
    budget = TimeBudget(300.0, 30.0, 20.0, 6, 3, 150.0, 7, 60.0, est, notes=("retrain resized",))
    assert TimeBudget.from_record(budget.to_record()) == budget
    members = [{"trial_id": "a", "best": 0.5, "params": {"lr": 0.01}}]
    write_winner(exp, members, retrain_epochs=7, stopped_by_time={"b", "c"}, budget=budget.to_record())
    verify_experiment(exp)
    doc = read_winner(exp)
    assert doc["members"] == members and doc["retrain_epochs"] == 7 and doc["stopped_by_time"] == ["b", "c"]
    assert TimeBudget.from_record(doc["budget"]).lines() == budget.lines()


def test_phase_times_are_recorded_while_a_phase_runs_without_any_callback():
    saved = []
    phases = Phases(earlier={"search": 10.0}, save=lambda s: saved.append(dict(s)), every_s=0.05)
    with phases.ticking("search"):
        time.sleep(0.3)
    assert len(saved) >= 2 and saved[-1]["search"] > 10.2
    count = len(saved)
    time.sleep(0.15)
    assert len(saved) == count  # the thread ends with the phase


def _saved_search(exp: Path, live: set, counter: int) -> None:
    """The state files Tune saves (and uploads one by one): the trial list, ``a`` and ``b`` ended, and
    the searcher's, made ``counter`` trials, with ``max_concurrent_trials`` counting ``live`` as running."""
    trials = [{"trial_id": "a", "status": "TERMINATED"}, {"trial_id": "b", "status": "ERROR"}]
    state = {"trial_data": [[json.dumps(t), "{}"] for t in trials]}
    write_signed(str(exp), "experiment_state-2026-01-01_00-00-00.json", json.dumps(state).encode())
    limiter = {
        "max_concurrent": 1,
        "batch": False,
        "live_trials": live,
        "num_unfinished_live_trials": len(live),
    }
    search = {"counter": counter, "total_samples": 3, "finished": False, "name:ConcurrencyLimiter": limiter}
    write_signed(str(exp), "search_gen_state-2026-01-01_00-00-00.json", pickle.dumps(search))


def test_a_restored_search_counts_as_running_only_the_trials_its_trial_list_has_not_ended(tmp_path):
    """A driver killed between Tune's uploads of the trial list and the searcher's state: restored as saved,
    the searcher would count an ended trial (b), or one the list never got (c), as running, suggest nothing
    more within ``max_concurrent_trials`` and never finish: the resumed search would wait forever."""
    search_file = tmp_path / "search_gen_state-2026-01-01_00-00-00.json"
    _saved_search(tmp_path, live={"b", "c"}, counter=3)
    assert match_searcher_to_trials(str(tmp_path)) == ["b", "c"]
    search = pickle.loads(search_file.read_bytes())
    assert search["counter"] == 2  # c is made again: the list never got it
    assert search["name:ConcurrencyLimiter"]["live_trials"] == set()
    assert search["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] == 0
    verify_experiment(str(tmp_path))  # the rewritten state is signed
    saved = search_file.read_bytes()
    assert match_searcher_to_trials(str(tmp_path)) == [] and search_file.read_bytes() == saved  # agrees now


def test_the_phase_clock_rides_out_a_failing_save(capsys):
    saved, down = [], [True, True]

    def save(seconds):
        if down and down.pop():
            raise OSError("AWS Error NETWORK_CONNECTION: Could not connect to server")
        saved.append(dict(seconds))

    phases = Phases(save=save, every_s=0.05)
    with phases.ticking("search"):
        time.sleep(0.4)
    assert saved  # the thread went on after the storage came back
    err = capsys.readouterr().err
    assert err.count("WARNING: could not record the phase times") == 1 and "Traceback" not in err, err


def test_a_restored_progress_callback_prints_this_runs_line(capsys):
    # Tune pickles its callbacks with the experiment; Tuner.restore runs those copies, not this run's.
    restored = pickle.loads(pickle.dumps(EpochProgress("search", total_epochs=12)))
    mine = EpochProgress("search", total_epochs=5, deadline=time.time() + 600)
    restored.setup()
    for _ in range(5):
        restored.on_trial_result(0, [], None, {})
    assert mine.done == 5 and restored.done == 0
    assert "[sweeps] search: 5/~5 epochs" in capsys.readouterr().out


@pytest.mark.slow
def test_a_budgeted_sweep_killed_in_its_search_resumes_to_the_plan_it_recorded(tmp_path):
    """Killed during the search: a resumed dry run (with a key) writes nothing, and the resumed run reports
    the budget and plan recorded at the start, the winner and retrain length recorded with the winner, the
    retrain's trained epochs; its phase record grows from the killed run's."""
    seen = {}

    def dry_run(exp, resume):
        before = _hashes(exp)
        r = subprocess.run(
            [*resume, "--dry-run", "retrain_epochs=3"], cwd=REPO, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert _hashes(exp) == before
        seen["phases"] = json.loads((exp / "fer_phases.json").read_text())

    got, before, rc = kill_resume_check.run(tmp_path, "k", "search", between=dry_run)
    assert rc == 0
    exp = tmp_path / "k"
    winner, plan = (json.loads((exp / name).read_text()) for name in ("fer_winner.json", "fer_plan.json"))
    assert (
        got["winner"] == winner["members"][0]["params"] and got["retrain_epochs"] == winner["retrain_epochs"]
    )
    assert got["budget"] == TimeBudget.from_record(winner["budget"]).to_dict()
    assert got["plan"] == {k: plan["budget"][k] for k in ("num_samples", "max_epochs")} | {
        "retrain_epochs_planned": plan["budget"]["retrain_epochs"]
    }
    assert "time budget 30m00s" in (exp / "report" / "report.md").read_text()
    after = json.loads((exp / "fer_phases.json").read_text())
    assert seen["phases"] == before and sum(after.values()) > sum(before.values())
    assert all(after[k] >= v for k, v in before.items()) and {"search", "retrain", "report"} <= after.keys()
