"""Real Ray Tune + Optuna sweeps of the demo data on a local Ray bound to 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from .conftest import REPO
from .sweep_utils import (
    LOOPBACK,
    descendants,
    kill_all,
    listening_addresses,
    run_sweep,
    sweep_cmd,
    trial_rows,
    trial_states,
)

REPORT_FILES = [
    "best_config.yaml",
    "best.pt",
    "metrics.json",
    "training_curves.png",
    "confusion_matrix.png",
    "per_class_accuracy.png",
    "sweep_history.png",
    "param_vs_metric.png",
    "param_importance.png",
    "parallel_coordinate.png",
    "sample_predictions.png",
    "reliability.png",
    "report.md",
    "trials.csv",
    "audit.json",
    "optuna.db",
]


@pytest.fixture(scope="module")
def sweep_with_a_failure(tmp_path_factory):
    """4 trials given to Optuna as initial points (so the test is deterministic); one asks for a batch
    larger than the data, which fer_core rejects inside the trial: a real trial failure, retried once
    per FailureConfig, then reported. (TPE's own sampling runs in the kill/resume test.)"""
    storage = tmp_path_factory.mktemp("sweeps")
    cfg = yaml.safe_load((REPO / "sweeps" / "configs" / "default.yaml").read_text())
    cfg["num_samples"] = 4
    cfg["ensemble_top_k"] = 2  # the winner and the runner-up are retrained and averaged
    # One objective and one network: an ensemble of several models has no one speed (test_objectives.py
    # runs the demo's accuracy against latency).
    cfg["objectives"], cfg["pick"] = {"val_accuracy": "max"}, "best"
    del cfg["search_space"]["model"]
    cfg["search_space"]["batch_size"] = {"type": "choice", "values": [8, 16, 4096]}
    cfg["initial_points"] = [
        {"batch_size": 4096, "lr": 1e-3, "aug_strength": 0.2},
        {"batch_size": 8, "lr": 2e-3, "aug_strength": 0.0},
        {"batch_size": 16, "lr": 1e-3, "aug_strength": 0.5},
        {"batch_size": 8, "lr": 5e-4, "aug_strength": 0.3},
    ]
    path = storage / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    r = run_sweep(storage, "ci", "--config", str(path))
    return r, storage / "ci", time.perf_counter() - t0


@pytest.mark.slow
def test_small_sweep_runs_and_reports(sweep_with_a_failure):
    r, exp, seconds = sweep_with_a_failure
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "DEMO data" in r.stdout and "Report:" in r.stdout
    report = exp / "report"
    for name in REPORT_FILES:
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    m = json.loads((report / "metrics.json").read_text())
    for key in ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "best_trial", "params"):
        assert key in m, key
    assert m["trials"]["total"] == 4
    # The driver audited the data once, before Ray: in the log, in report.md and in audit.json.
    assert "[sweeps] audit:" in r.stdout
    # The driver's line is the one that names the best trial (Tune's own rule could name another on a tie).
    assert "[sweeps] best trial " in r.stdout and "Current best trial" not in r.stdout
    audit = json.loads((report / "audit.json").read_text())
    assert set(audit["splits"]) == {"train", "val", "test"}
    md = (report / "report.md").read_text()
    assert "## Data" in md and "`dedupe: none`" in md and m["dedupe"] == "none"
    # Where each trial trained (the failed one never started): in report.md and trials.csv.
    assert "Trials trained on: cpu (3)" in md and "WARNING" not in md
    assert (report / "trials.csv").read_text().splitlines()[0].endswith("device,ray_gpus,error")
    # Optuna's plots of the rebuilt study, each shown in report.md; the contour, or the line saying why not.
    assert all(f"]({name})" in md for name in REPORT_FILES if name.endswith(".png"))
    assert (
        (report / "contour.png").is_file() and "](contour.png)" in md
    ) or "`contour.png` not drawn: " in md
    best = yaml.safe_load((report / "best_config.yaml").read_text())
    assert best["epochs"] == 1 and best["batch_size"] == m["params"]["batch_size"]
    # best_config.yaml, metrics.json and best.pt describe one model: the config stored in the checkpoint.
    from fer_core.checkpoint import load_checkpoint

    stored = load_checkpoint(report / "best.pt")["config"]
    assert all(
        best[k] == stored[k]
        for k in ("model", "lr", "batch_size", "aug_strength", "epochs", "seed", "img_size")
    )
    assert m["retrain_epochs"] == stored["epochs"] and best["keep_checkpoints"] is True  # standalone defaults
    # Every trial ran through the real trainable and reported per epoch via Tune.
    rows = trial_rows(exp)
    assert len(rows) >= 3 and all(r_[0]["epoch"] == 1 for r_ in rows.values())
    print(f"small sweep wall time {seconds:.0f}s")


@pytest.mark.slow
def test_trials_leave_no_checkpoint_copies_in_rays_session_folder(sweep_with_a_failure, ray_temp_root):
    """Checkpoints live in storage; the trials' working folders in Ray's session folder (which Ray never
    deletes) must not keep a second copy of each, or every sweep leaves ~1 GB behind in /tmp/ray."""
    r, exp, _ = sweep_with_a_failure
    assert r.returncode == 0
    # This sweep's trials (other tests' sweeps share the folder: a driver killed on purpose leaves its copies).
    ours = {d.name for d in [*exp.glob("fer_trainable_*"), *exp.glob("retrain/fer_trainable_*")]}
    work = [
        d
        for d in ray_temp_root.glob("session_2*/artifacts/*/*/working_dirs/*")  # not session_latest
        if d.is_dir() and d.name in ours
    ]
    # The 3 trials that ran (one fails at once) and the 2 ensemble retrains, each with its epoch log.
    assert len(work) >= 5 and sum((d / "epochs.jsonl").is_file() for d in work) >= 5, work
    assert [str(f) for d in work for f in d.rglob("*.pt")] == []
    assert len(list(exp.glob("fer_trainable_*/checkpoint_*/last.pt"))) >= 3  # storage still has them


@pytest.mark.slow
def test_report_gives_tta_and_an_ensemble_that_is_the_members_average(sweep_with_a_failure):
    import numpy as np

    from fer_core.engine import probs_metrics
    from fer_core.evaluate import evaluate_checkpoint

    _, exp, _ = sweep_with_a_failure
    report = exp / "report"
    m = json.loads((report / "metrics.json").read_text())
    ens = m["ensemble"]
    assert len(ens["members"]) == 2 and ens["members"][0]["trial_id"] == m["best_trial"]
    assert ens["members"][0]["params"] != ens["members"][1]["params"]
    for key in (
        "val_tta_accuracy",
        "val_tta_macro_f1",
        "test_tta_accuracy",
        "device",
        "wall_seconds",
        "seed",
    ):
        assert key in m, key
    # Recompute the ensemble from its two saved checkpoints: the reported figures are that average.
    scores = [
        evaluate_checkpoint(
            report / "ensemble" / f"member{i}.pt",
            str(json.loads(json.dumps(m["data"]))),
            "val",
            return_probs=True,
            tta_flip=True,
        )
        for i in range(2)
    ]
    classes = list(scores[0]["val_support"])
    avg = probs_metrics(np.mean([s["probs"] for s in scores], axis=0), scores[0]["labels"], classes, "val_")
    avg_tta = probs_metrics(
        np.mean([s["probs_tta"] for s in scores], axis=0), scores[0]["labels"], classes, "val_tta_"
    )
    assert (
        ens["val_accuracy"] == avg["val_accuracy"] and ens["val_tta_macro_f1"] == avg_tta["val_tta_macro_f1"]
    )
    assert scores[0]["val_accuracy"] == m["val_accuracy"]  # member 0 is the winner's best.pt
    md = (report / "report.md").read_text()
    assert (
        "| ensemble of 2 | val | flip |" in md
        and "| winner | test | none |" in md
        and "Seeds: training" in md
    )


@pytest.mark.slow
def test_failed_trial_is_retried_reported_and_the_sweep_goes_on(sweep_with_a_failure):
    r, exp, _ = sweep_with_a_failure
    assert r.returncode == 0
    states = trial_states(exp)
    assert list(states.values()).count("ERROR") == 1 and list(states.values()).count("TERMINATED") == 3
    assert "FAILED trial" in r.stdout and "exceeds the" in r.stdout
    md = (exp / "report" / "report.md").read_text()
    assert "## Failed trials" in md and "batch_size" in md and "exceeds the" in md
    csv_text = (exp / "report" / "trials.csv").read_text()
    assert "failed" in csv_text


@pytest.mark.slow
def test_driver_killed_mid_sweep_resumes_without_losing_trials(tmp_path):
    storage, name = tmp_path, "killed"
    exp = storage / name
    cmd = sweep_cmd(storage, name, "num_samples=4")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy()
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            states = trial_states(exp)
            if list(states.values()).count("TERMINATED") >= 1 and len(states) >= 2:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("no trial completed within 600 s")
        # A local sweep's Ray (GCS, raylet, workers, driver) listens on the loopback interface only.
        addresses = listening_addresses(proc.pid)
        assert addresses and addresses <= LOOPBACK, addresses
        done_before = {t for t, s in states.items() if s == "TERMINATED"}
        rows_before = trial_rows(exp)
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)  # the driver only, as a crash or `kill -9` would
        proc.wait(timeout=30)
    finally:
        # Then Ray's daemons and the orphaned trial worker, which a lost driver leaves running for a few
        # seconds: they must not compete with the resumed run for this machine's two cores.
        kill_all(proc, children if "children" in locals() else descendants(proc.pid))
        log.close()
    assert not (exp / "report").exists()

    r = run_sweep(storage, name, "num_samples=4", "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    states = trial_states(exp)
    assert len(states) == 4 and set(states.values()) <= {"TERMINATED", "ERROR"}
    rows_after = trial_rows(exp)
    for trial in done_before:
        assert states[trial] == "TERMINATED"
        keys = ("epoch", "val_accuracy", "val_loss", "train_loss")
        assert [{k: row[k] for k in keys} for row in rows_after[trial]] == [
            {k: row[k] for k in keys} for row in rows_before[trial]
        ], trial
    assert (exp / "report" / "report.md").is_file()
    assert (exp / "report" / "sweep_history.png").is_file() and "4 trials:" in (
        exp / "report" / "report.md"
    ).read_text()


@pytest.mark.slow
def test_resume_needs_an_experiment_and_a_new_run_needs_a_free_name(tmp_path, sweep_with_a_failure):
    r = run_sweep(tmp_path, "nothing", "--resume", timeout=300)
    assert r.returncode == 2 and "no experiment to resume" in r.stderr and "Ray" not in r.stdout
    _, exp, _ = sweep_with_a_failure
    r = run_sweep(exp.parent, exp.name, timeout=300)
    assert r.returncode == 2 and "an experiment already exists there; pass --resume" in r.stderr


def test_report_warns_when_a_trial_given_a_gpu_trained_on_a_cpu():
    from sweeps.report.trials import device_lines

    trials = [
        {"trial_id": "a", "device": "cuda:0", "ray_gpus": 1},
        {"trial_id": "b", "device": "cpu", "ray_gpus": 1},
        {"trial_id": "c", "device": "cpu", "ray_gpus": 0},
        {"trial_id": "d", "device": "", "ray_gpus": 0},
    ]
    lines = device_lines(trials)
    assert lines[0] == "Trials trained on: cpu (2), cuda:0 (1)"
    assert len(lines) == 2 and lines[1].startswith(
        "WARNING: trial b was given 1 GPU(s) by Ray but trained on cpu"
    )
