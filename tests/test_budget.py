"""The time budget's arithmetic (sweeps/plan/budget.py) and its settings: durations, ASHA's expected
length, the budget's split, the refusal of one that fits nothing, and resuming a budgeted sweep."""

from __future__ import annotations

import dataclasses

import pytest

from fer_core.config import config_to_dict, make_config
from fer_core.errors import ConfigError, FerError
from fer_core.trainer import Trainer
from sweeps.config.settings import load_settings, parse_duration
from sweeps.plan.budget import (
    Caps,
    Counts,
    Estimate,
    asha_epochs,
    asha_rungs,
    count_images,
    epoch_images,
    margin_for,
    measured_retrain_epoch_s,
    split_budget,
)
from sweeps.plan.probe import probe_params, steps_cost_alike
from sweeps.state.record import read_record, resume_settings, write_record

from .conftest import REPO

CONFIGS = REPO / "sweeps" / "configs"


def test_durations_need_a_unit_and_name_the_flag():
    assert parse_duration("90s", "x") == 90
    assert parse_duration("30m", "x") == 1800
    assert parse_duration("1h30m", "x") == 5400
    assert parse_duration("2.5h", "x") == 9000
    for bad in ("30", "abc", "0m", "", "5 minutes", "m30"):
        with pytest.raises(FerError) as e:
            parse_duration(bad, "--time-budget")
        assert str(e.value).startswith("--time-budget: ") and "\n" not in str(e.value)


def test_a_bad_time_budget_or_tracker_in_yaml_is_refused_naming_the_key():
    with pytest.raises(FerError, match="'time_budget'.*30 minutes"):
        load_settings(None, {"time_budget": "30 minutes"})
    with pytest.raises(ConfigError, match="'tracking' = 'wandb' is not one of none, mlflow"):
        load_settings(None, {"tracking": "wandb"})
    assert load_settings(None, {"time_budget": "6m"}).time_budget == "6m"


def test_asha_expected_epochs_and_rungs():
    assert asha_epochs(1, 1, 2) == 1
    assert asha_epochs(3, 1, 2) == pytest.approx(1 + 0.5 + 0.25)  # rungs 1, 2, 3
    assert asha_epochs(30, 5, 3) == pytest.approx(5 + 10 / 3 + 15 / 9)  # rungs 5, 15, 30
    assert asha_rungs(3, 1, 2) == [1, 2, 3]
    assert asha_rungs(30, 5, 3) == [5, 15, 30]


def test_the_probe_trains_at_the_middle_of_the_space():
    s = load_settings(None, {})
    p = probe_params(s.search_space)
    assert p["batch_size"] == 32 and p["lr"] == pytest.approx((3e-4 * 1e-2) ** 0.5)
    assert p["aug_strength"] == pytest.approx(0.4)


def test_epoch_images_follow_the_trainer(demo_root):
    """The plan's epoch length is the one Trainer actually runs (subset, batches, val subset)."""
    counts = count_images(make_config({"data": str(demo_root)}))
    for cfg in (
        {"batch_size": 32, "max_train_samples": 100, "max_val_samples": 50},
        {"batch_size": 16, "steps_per_epoch": 5},
    ):
        t = Trainer_for(demo_root, cfg)
        train, val = epoch_images({**cfg, "tta_flip": False}, counts)
        assert train == t.steps_per_epoch * cfg["batch_size"] and val == len(t.val_idx)


def test_epoch_images_leave_out_what_dedupe_drops(demo_root):
    """dedupe: cross_split trains on fewer images (the demo's train split shares near duplicates with val and
    test); the plan's epoch is the Trainer's. Before, the plan counted the whole split."""

    cfg = {"batch_size": 8, "dedupe": "cross_split"}
    t = Trainer_for(demo_root, cfg)
    counts = count_images(make_config({"data": str(demo_root), "img_size": 48, **cfg}))
    assert len(t.dropped_duplicates) > 0 and counts.train - counts.duplicates == len(t.train_idx)
    train, _ = epoch_images({**cfg, "tta_flip": False}, counts)
    assert train == t.steps_per_epoch * cfg["batch_size"] < counts.train // 8 * 8


def Trainer_for(root, cfg):  # noqa: N802 - reads as the class it builds

    return Trainer(make_config({"data": str(root), "img_size": 48, "progress": False, **cfg}))


EST = Estimate(trial_epoch_s=6.0, retrain_epoch_s=7.0, report_s=10.0, start_s=5.0, counts=Counts(700, 210))


def _split(settings, budget_s, concurrent=1):
    return split_budget(
        settings, budget_s=budget_s, elapsed_s=20, est=EST, concurrent=concurrent, source="--time-budget"
    )


def _uncapped(**overrides):
    """Settings whose sizes were all left to the budget (the demo YAML sets them, and so caps them)."""
    return dataclasses.replace(load_settings(None, overrides), given=frozenset())


def _fits(budget, budget_s):
    """Everything the budget sets aside, start to end, stays inside it."""
    return (
        budget.elapsed_s
        + budget.sweep_s
        + budget.retrain_s
        + budget.est.report_s
        + 2 * EST.start_s
        + budget.margin_s
        <= budget_s + 1e-6
    )


def test_a_longer_budget_buys_a_longer_retrain_and_more_search():
    s = _uncapped()
    short, long = _split(s, 120), _split(s, 360)
    assert _fits(short, 120) and _fits(long, 360)
    assert long.retrain_epochs > short.retrain_epochs >= 1
    assert long.num_samples >= short.num_samples >= 1
    assert short.sweep_s > 0 and long.sweep_s > short.sweep_s
    assert long.margin_s == margin_for(360) == 36
    # Two slots run trials side by side: the same search time holds about twice the trials.
    wide = _split(s, 360, concurrent=2)
    assert wide.num_samples >= 2 * long.num_samples - 1


def test_explicit_sizes_are_upper_bounds_and_leftover_time_goes_to_the_retrain():
    s = load_settings(None, {"num_samples": 2, "retrain_epochs": 80})
    caps = Caps.from_settings(s)
    assert (caps.num_samples, caps.retrain_epochs, caps.max_epochs) == (2, 80, 3)
    assert Caps.from_settings(_uncapped()) == Caps()  # sizes the command did not give are not caps
    free, capped = _split(_uncapped(), 600), _split(s, 600)
    assert capped.num_samples == 2 and capped.retrain_epochs > free.retrain_epochs and _fits(capped, 600)
    assert any("num_samples caps" in n for n in capped.notes)


def test_a_budget_that_fits_nothing_is_refused_in_one_line():
    s = _uncapped()
    with pytest.raises(FerError) as e:
        _split(s, 40)
    msg = str(e.value)
    assert msg.startswith("--time-budget: 40s cannot fit one useful trial") and "give at least" in msg
    assert "\n" not in msg
    # The smallest budget it names does fit.
    least = parse_duration(msg.split("give at least ")[1].split(",")[0], "x")
    assert _fits(_split(s, least), least)


def test_the_retrain_epoch_is_measured_from_the_winners_trial():
    counts = Counts(train=1000, val=200)
    base = {"batch_size": 50, "max_train_samples": 500, "max_val_samples": 100, "steps_per_epoch": 0}
    retrain = {**base, "max_train_samples": 0, "max_val_samples": 0}
    # 3 epochs of 20 s each: 10 s training 500 images (50 img/s), 10 s validating 100 and saving.
    last = {"training_iteration": 3, "time_total_s": 60.0, "images_per_s": 50.0, "epoch_seconds": 10.0}
    got = measured_retrain_epoch_s(last, {}, counts, base, retrain)
    assert got == pytest.approx(1000 / 50 + 10 * 200 / 100)
    assert measured_retrain_epoch_s({}, {}, counts, base, retrain) is None


def test_a_budgeted_sweep_resumes_with_its_plan(tmp_path):
    """The record keeps what the budget decided; the same command with --resume continues it, another
    budget is refused (the trials already run were sized for the first)."""
    exp = str(tmp_path / "exp")
    started = load_settings(None, {"time_budget": "6m"})
    started = dataclasses.replace(
        started,
        num_samples=3,
        retrain_epochs=9,
        scheduler=dataclasses.replace(started.scheduler, max_epochs=2),
    )
    write_record(exp, started)
    assert read_record(exp).num_samples == 3

    again, applied = resume_settings(load_settings(None, {"time_budget": "6m"}), exp, False, False)
    assert (again.num_samples, again.retrain_epochs, again.scheduler.max_epochs, applied) == (3, 9, 2, [])
    bare, _ = resume_settings(load_settings(None, {}), exp, True, False)
    assert (bare.num_samples, bare.time_budget) == (3, "6m")
    with pytest.raises(FerError, match=r"time_budget \(\"6m\" -> \"2m\"\)"):
        resume_settings(load_settings(None, {"time_budget": "2m"}), exp, False, False)


def test_the_retrain_is_probed_too_when_its_steps_cost_otherwise():
    """fer2013-cpu.yaml's retrain keeps an EMA of the weights the trials do not: its steps are slower, so
    the probe times both configs and the winner's measured rate is scaled by their ratio."""
    s = load_settings(CONFIGS / "fer2013-cpu.yaml", {"weights": ""})
    trial = config_to_dict(s.train)
    retrain = {**trial, **s.retrain}
    assert not steps_cost_alike(trial, retrain)
    sizes_only = {**trial, "max_train_samples": 0, "steps_per_epoch": 0, "epochs": 9, "tta_flip": False}
    assert steps_cost_alike(trial, sizes_only)
    counts = Counts(train=1000, val=200)
    base = {"batch_size": 50, "max_train_samples": 500, "max_val_samples": 100, "steps_per_epoch": 0}
    last = {"training_iteration": 3, "time_total_s": 60.0, "images_per_s": 50.0, "epoch_seconds": 10.0}
    slower = measured_retrain_epoch_s(last, {}, counts, base, {**base, "max_train_samples": 0}, speed=0.8)
    assert slower == pytest.approx(1000 / 40 + 10 * 100 / 100)


def test_an_unusable_tracking_uri_is_one_line_before_anything_runs(tmp_path):
    from sweeps.tune.tracking import check_tracking

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    s = load_settings(None, {"tracking_uri": f"sqlite:///{blocked}/sub/mlflow.db", "tracking": "mlflow"})
    with pytest.raises(FerError) as e:
        check_tracking(s)
    assert str(e.value).startswith(f"tracking_uri sqlite:///{blocked}/sub/mlflow.db: MLflow cannot open it")
    assert "\n" not in str(e.value)
    ok = load_settings(None, {"tracking_uri": str(tmp_path / "mlruns"), "tracking": "mlflow"})
    check_tracking(ok)  # the local default's shape: a folder, created with its store
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
