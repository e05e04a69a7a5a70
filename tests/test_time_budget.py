"""Time-budgeted sweeps, --dry-run, and tracking, run for real (issue: "I have 30 minutes"): a local Ray on
127.0.0.1, the real probe, Tune, Optuna, MLflow's own client and TensorBoard's own event reader."""

from __future__ import annotations

import json
import os

import pytest

from fer_core.config import make_config
from sweeps.config.settings import load_settings, parse_duration
from sweeps.plan.budget import count_images
from sweeps.state.record import read_record

from .sweep_utils import run_sweep, trial_rows

pytestmark = pytest.mark.slow

BUDGET = "100s"


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """A real sweep of the tiny demo under a time budget, tracked in MLflow (a local folder)."""
    root = tmp_path_factory.mktemp("budget")
    mlruns = root / "mlruns"
    r = run_sweep(root, "b", "--time-budget", BUDGET, "--tracking-uri", str(mlruns), timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return root / "b", mlruns, r


def test_a_budgeted_sweep_plans_reports_and_keeps_its_budget(budgeted):
    exp, _, r = budgeted
    assert "[sweeps] time budget 1m40s:" in r.stdout and "retrain resized after the search" in r.stdout
    m = json.loads((exp / "report" / "metrics.json").read_text())
    t = m["timing"]
    # The plan the budget made is the one that ran: trial count, ASHA's max_t, the retrain's epochs.
    assert len(trial_rows(exp)) <= t["budget"]["num_samples"]
    assert max(len(rows) for rows in trial_rows(exp).values()) <= t["budget"]["max_epochs"]
    record = read_record(str(exp))
    assert record.num_samples == t["budget"]["num_samples"] and record.time_budget == BUDGET
    assert record.retrain_epochs == m["retrain_epochs"]
    # Every phase is timed, and the whole job (up to the report) stayed inside the budget.
    assert set(t["phases"]) == {"start-up and probe", "search", "retrain", "report", "total"}
    assert t["phases"]["total"] <= parse_duration(BUDGET, "budget")
    report = (exp / "report" / "report.md").read_text()
    assert "## Time" in report and "time budget 1m40s" in report and "| search |" in report
    assert "| report | " in report and "| total | " in report and "(being written)" not in report
    assert "Time: start-up and probe" in r.stdout and "(time budget 1m40s:" in r.stdout
    # Progress with an ETA in each long phase.
    for phase in ("[sweeps] search: ", "[sweeps] retrain: ", "[sweeps] report 1/5: "):
        assert phase in r.stdout
    assert "ETA" in r.stdout.split("[sweeps] retrain: ")[1].splitlines()[0]


def test_mlflow_holds_each_trials_params_and_epochs_and_the_report(budgeted, tmp_path):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    exp, mlruns, _ = budgeted
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlruns}/mlflow.db")
    experiment = client.get_experiment_by_name("b")
    runs = client.search_runs([experiment.experiment_id])
    sweep = [r for r in runs if r.data.tags.get("fer_sweep.phase") == "sweep"]
    retrain = [r for r in runs if r.data.tags.get("fer_sweep.phase") == "retrain"]
    rows = trial_rows(exp)
    assert len(rows) >= 1 and len(retrain) == 1
    space = {p.name for p in load_settings(None, {}).search_space}
    # A run per trial that started (one the time limit stopped before its first epoch has params only).
    by_trial = {next((t for t in rows if t in r.data.tags["trial_name"]), None): r for r in sweep}
    assert set(rows) <= set(by_trial)
    for trial_id, trial_rows_ in rows.items():
        run = by_trial[trial_id]
        assert space <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        # One point per epoch, equal to what the trial reported.
        assert [h.step for h in history] == [row["training_iteration"] for row in trial_rows_]
        assert [h.value for h in history] == pytest.approx([row["val_accuracy"] for row in trial_rows_])
    assert sum(r.data.tags.get("fer_sweep.winner") == "true" for r in sweep) == 1
    winner = json.loads((exp / "report" / "metrics.json").read_text())
    run = retrain[0]
    assert run.data.tags["fer_sweep.winner_trial"] == winner["best_trial"]
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == winner["retrain_epochs"]
    files = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {
        "report/report.md",
        "report/best.pt",
        "report/metrics.json",
        "report/confusion_matrix.png",
    } <= files
    assert (mlruns / "mlflow.db").is_file() and (mlruns / "artifacts").is_dir()
    # The report as it stays: attached after its time table is complete.
    md = client.download_artifacts(run.info.run_id, "report/report.md", str(tmp_path))
    text = open(md).read()
    assert "| total | " in text and "(being written)" not in text


def test_tensorboard_reads_each_trials_epoch_metrics(budgeted):
    """What `tensorboard --logdir STORAGE/NAME` shows: Ray's event file in every trial folder, one point
    per epoch for the epoch metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp, _, _ = budgeted
    rows = trial_rows(exp)
    folders = [d for d in exp.glob("fer_trainable_*/") if (d / "result.json").is_file()]
    folders = [d for d in folders if (d / "result.json").read_text().strip()]
    assert len(folders) == len(rows) >= 1
    for folder in folders:
        trial_id = json.loads((folder / "result.json").read_text().splitlines()[0])["trial_id"]
        acc = EventAccumulator(str(folder))
        acc.Reload()
        for metric in ("val_accuracy", "val_macro_f1", "train_loss"):
            points = acc.Scalars(f"ray/tune/{metric}")
            assert [p.step for p in points] == [r["training_iteration"] for r in rows[trial_id]]
            assert [p.value for p in points] == pytest.approx([r[metric] for r in rows[trial_id]], rel=1e-6)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    r = run_sweep(tmp_path, "d", "--dry-run", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    data = out.split("Data: ")[1].splitlines()[0]
    counts = count_images(make_config({"data": data}))
    assert f"train {counts.train} images, val {counts.val}, test {counts.test}" in out
    assert "audit: " in out and "Resources:" in out and "trial at once" in out
    assert "lr: loguniform 0.0003 .. 0.01" in out and "batch_size: choice of [16, 32, 64]" in out
    assert "rungs at epochs [1, 2]" in out  # TINY: grace 1, max 2
    assert f"Output: {tmp_path / 'd'}" in out and "Estimated time on this machine" in out and "total ~" in out
    assert not (tmp_path / "d").exists()  # nothing written: no record, no Tune experiment


def test_a_budget_that_fits_nothing_is_refused_before_training(tmp_path):
    r = run_sweep(tmp_path, "n", "--time-budget", "20s", timeout=300)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    # One line of ours (Ray, started for the probe, adds its own notice about token authentication).
    ours = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and ours[0].startswith("error: --time-budget: 20s cannot fit one useful trial")
    assert "give at least" in ours[0]
    assert not list(tmp_path.glob("n/fer_trainable_*"))  # no trial started
