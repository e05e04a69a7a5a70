"""The report folder written for real: two tiny checkpoints trained by fer_core on the demo data stand in for
the retrains (as Ray ``Result`` objects, without starting Ray), beside a hand-made trials table."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from ray.tune import Checkpoint, Result

from fer_core.audit import audit_dataset
from fer_core.checkpoint import load_checkpoint
from fer_core.evaluate import evaluate_checkpoint
from fer_core.train import train
from sweeps.config.settings import Scheduler, SweepSettings
from sweeps.config.space import parse_space
from sweeps.report.folder import write_report
from sweeps.report.markdown import print_summary, started_from
from sweeps.report.plots import STATES
from sweeps.report.trials import top_trials
from sweeps.tune.progress import Phases

from .conftest import tiny_config

SPACE = parse_space(
    {
        "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "aug_strength": {"type": "uniform", "low": 0.0, "high": 0.8},
    },
    "test",
)
SETTINGS = SweepSettings(name="r", search_space=SPACE, scheduler=Scheduler(max_epochs=3), ensemble_top_k=3)


def _trial(tid, status, curve, lr, aug):
    return {
        "trial_id": tid,
        "status": status,
        "error": "RuntimeError: boom" if status == "failed" else "",
        "params": {"lr": lr, "aug_strength": aug},
        "intermediate": dict(enumerate(curve, start=1)),
        "epochs": len(curve),
        "best_val_accuracy": max(curve, default=float("nan")),
        "last_val_accuracy": curve[-1] if curve else float("nan"),
        "device": "cpu" if curve else "",
        "ray_gpus": 0,
    }


TRIALS = pd.DataFrame(
    [
        _trial("a", "completed", [0.30, 0.42, 0.50], 3e-3, 0.2),
        _trial("b", "stopped_asha", [0.20], 1e-4, 0.7),
        _trial("c", "stopped_time", [0.28, 0.35], 8e-3, 0.5),
        _trial("d", "failed", [0.25], 2e-3, 0.1),
        _trial("e", "failed", [], 5e-4, 0.3),
        _trial("f", "completed", [0.31, 0.40, 0.44], 1e-3, 0.0),
        _trial("g", "completed", [0.26, 0.33, 0.47], 6e-3, 0.4),
    ]
)


def _retrain(demo_root, out, cache_dir, **kw) -> Result:
    train(tiny_config(demo_root, out, epochs=1, cache_dir=str(cache_dir), **kw))
    history = pd.read_json(out / "epochs.jsonl", lines=True)
    ckpt = Checkpoint.from_directory(out / "checkpoints")
    return Result(metrics={}, checkpoint=ckpt, error=None, path=str(out), metrics_dataframe=history)


@pytest.fixture(scope="module")
def report(demo_root, tmp_path_factory):
    """The report of a sweep whose trials decoded into their own cache_dir (the default cache elsewhere)."""
    tmp = tmp_path_factory.mktemp("report")
    custom, default = tmp / "custom-cache", tmp / "default-cache"
    finals = [_retrain(demo_root, tmp / "m0", custom), _retrain(demo_root, tmp / "m1", custom, seed=1)]
    failed = Result(metrics={}, checkpoint=None, error=RuntimeError("out of memory"), path=str(tmp / "m2"))
    for f in custom.iterdir():
        f.unlink()  # what training decoded: the report decodes again, into the same folder
    audit = audit_dataset(demo_root, img_size=32, cache_dir=tmp / "audit-cache")
    phases = Phases()
    phases.end("search")
    phases.end("retrain")
    budget = SimpleNamespace(lines=lambda: ["time budget 5m: 7 trials"], to_dict=lambda: {"num_samples": 7})
    members = top_trials(TRIALS, SETTINGS, 3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FER_CACHE_DIR", str(default))
        out = tmp / "elsewhere" / "report"
        returned = write_report(
            SETTINGS,
            str(demo_root),
            TRIALS,
            members,
            [*finals, failed],
            out=out,
            phases=phases,
            audit=audit,
            budget=budget,
        )
    assert returned == out
    return SimpleNamespace(out=out, custom=custom, default=default, phases=phases, members=members)


def test_every_decode_uses_the_trials_cache_dir_not_the_default_one(report):
    assert not report.default.exists() or not list(report.default.iterdir()), list(report.default.iterdir())
    decoded = {p.name.split("-")[0] for p in report.custom.glob("*.npy")}
    assert decoded == {"val", "test"}


def test_the_folder_has_every_file_and_the_ensemble(report):
    names = [
        "best.pt",
        "best_config.yaml",
        "metrics.json",
        "report.md",
        "trials.csv",
        "audit.json",
        "training_curves.png",
        "confusion_matrix.png",
        "per_class_accuracy.png",
        "sample_predictions.png",
        "saliency_by_class.png",
        "confusions.png",
        "report.html",
        "sweep_history.png",
        "param_vs_metric.png",
        "param_importance.png",
        "parallel_coordinate.png",
        "contour.png",
        "reliability.png",
        "optuna.db",
        "model.onnx",
        "model_card.md",
        "ensemble/member0.pt",
        "ensemble/member1.pt",
    ]
    assert all((report.out / n).stat().st_size > 0 for n in names)
    assert sorted(p.name for p in report.out.iterdir()) == sorted({n.split("/")[0] for n in names})
    m = json.loads((report.out / "metrics.json").read_text())
    assert [e["trial_id"] for e in m["ensemble"]["members"]] == ["a", "g"] and m["best_trial"] == "a"
    assert [e["seed"] for e in m["ensemble"]["members"]] == [42, 42] or m["ensemble"]["members"][0][
        "seed"
    ] >= 0
    assert m["ensemble"]["failed_members"][0]["trial_id"] == "f" and "val_tta_accuracy" in m["ensemble"]
    assert {"val_accuracy", "test_macro_f1", "val_tta_accuracy"} <= set(m)
    config = yaml.safe_load((report.out / "best_config.yaml").read_text())
    assert config["threads"] == 0 and config["cache_dir"] == str(report.custom) and "out" not in config


def test_trials_are_counted_by_how_they_ended(report):
    m = json.loads((report.out / "metrics.json").read_text())
    assert m["trials"] == {"total": 7, "completed": 3, "stopped_asha": 1, "stopped_time": 1, "failed": 2}
    md = (report.out / "report.md").read_text()
    assert "7 trials: 3 completed, 1 stopped early by ASHA, 1 stopped by the time limit, 2 failed." in md
    assert "| c | stopped by the time limit | 2 |" in md and "| b | stopped early by ASHA | 1 |" in md
    assert "## Failed trials" in md and "- `e` with" in md
    csv = pd.read_csv(report.out / "trials.csv")
    assert (
        "stopped_early" not in csv
        and csv.set_index("trial_id")["status"].to_dict() == TRIALS.set_index("trial_id")["status"].to_dict()
    )


def test_the_report_is_written_once_with_its_own_time_and_the_total(report):
    m = json.loads((report.out / "metrics.json").read_text())
    phases = m["timing"]["phases"]
    assert list(phases) == ["search", "retrain", "report", "total"]
    assert phases["report"] == round(report.phases.seconds["report"], 1) > 0  # write_report ended the phase
    assert m["wall_seconds"] == phases["total"] >= phases["report"]
    assert m["timing"]["plan"] == ["time budget 5m: 7 trials"] and m["timing"]["budget"] == {"num_samples": 7}
    md = (report.out / "report.md").read_text()
    time_table = md.split("## Time")[1].split("##")[0]
    assert "    time budget 5m: 7 trials" in time_table
    assert [row.split(" | ")[0] for row in time_table.splitlines() if row.startswith("| ")][1:] == [
        "| search",
        "| retrain",
        "| report",
        "| total",
    ]


def test_summary_says_how_trials_ended_and_the_scores(report, capsys):
    print_summary(TRIALS, SETTINGS, report.out, "Time: total 1s")
    text = capsys.readouterr().out
    assert "7 trials: 3 completed, 1 stopped early by ASHA, 1 stopped by the time limit, 2 failed." in text
    assert (
        "FAILED trial e" in text
        and "| winner | test | flip |" in text
        and "| ensemble of 2 | val | none |" in text
    )
    assert text.rstrip().endswith(f"Report: {report.out / 'report.md'}\nTime: total 1s")


def test_optuna_db_holds_the_study_of_trials_csv(report):
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{report.out / 'optuna.db'}")
    assert study.metric_names == ["val_accuracy"] and study.direction == optuna.study.StudyDirection.MAXIMIZE
    csv = pd.read_csv(report.out / "trials.csv").set_index("trial_id")
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert sorted(by_id) == sorted(csv.index)
    for tid, row in csv.iterrows():
        t = by_id[tid]
        assert t.state == STATES[row["status"]] and t.user_attrs["status"] == row["status"], tid
        assert t.params == pytest.approx({"lr": row["lr"], "aug_strength": row["aug_strength"]}), tid
        assert len(t.intermediate_values) == row["epochs"], tid
        if row["epochs"]:
            assert t.intermediate_values[max(t.intermediate_values)] == pytest.approx(
                row["last_val_accuracy"]
            )
            assert max(t.intermediate_values.values()) == pytest.approx(row["best_val_accuracy"])
        expected = None if row["status"] == "failed" else row["best_val_accuracy"]
        assert t.value == pytest.approx(expected), tid


def test_the_winner_deploys_its_fitted_temperature(report, demo_root):
    m = json.loads((report.out / "metrics.json").read_text())
    c = m["calibration"]
    t = load_checkpoint(report.out / "best.pt")["temperature"]
    assert c["temperature"] == t != 1.0 and c["split"] == "test" and c["fitted_on"] == "val"
    assert "temperature" not in load_checkpoint(report.out / "ensemble" / "member0.pt")  # pooled as trained
    # metrics.json's figures are those best.pt gives now, its temperature applied (computed without a second
    # pass): the loss and the flip-TTA figures, which depend on it.
    val = evaluate_checkpoint(report.out / "best.pt", str(demo_root), "val", tta_flip=True)
    for key in ("val_loss", "val_tta_loss", "val_accuracy", "val_tta_accuracy", "val_tta_macro_f1"):
        assert val[key] == pytest.approx(m[key], abs=1e-5), key
    ens = m["ensemble"]["calibration"]
    assert ens["temperature"] > 0 and ens["split"] == "test" and set(ens["before"]) == {"ece", "nll"}
    md = (report.out / "report.md").read_text()
    section = md.split("## Calibration")[1].split("\n## ")[0]
    assert (
        f"T = {t:.3f}" in section
        and "on test" in section
        and "![reliability diagram](reliability.png)" in section
    )
    row = f"| winner | {t:.3f} | {c['before']['ece']:.4f} | {c['after']['ece']:.4f} |"
    assert row in section and "| ensemble of 2 |" in section
    worse = [k for k in ("ece", "nll") if c["after"][k] > c["before"][k]]
    assert ("The winner's" in section) == bool(worse), section


def test_the_report_says_what_the_winner_started_from_and_one_wall_time(report):
    md = (report.out / "report.md").read_text()
    assert "## Winner, retrained from random initialisation" in md and "from scratch" not in md
    assert "epochs from random initialisation (not from its trial's checkpoint)" in md
    assert "Search: Optuna TPE (seed 0), ASHA (grace" in md and "{" not in md.split("\n## ")[0]
    header = re.search(r"Wall time: (\S+) ", md).group(1)
    total = [r for r in md.split("## Time")[1].splitlines() if r.startswith("| total |")][0]
    assert total == f"| total | {header} |", (header, total)
    assert started_from({"weights": "../w/tf_efficientnet_lite0.in1k.safetensors", "pretrained": False}) == (
        "the weights file `tf_efficientnet_lite0.in1k.safetensors`"
    )
    assert started_from({"weights": "", "pretrained": True}) == "ImageNet weights from timm's hub"
