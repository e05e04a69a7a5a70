"""The driver's planning steps (sweeps/plan/) without a cluster: a time budget fitted to the probe's rates
derives new settings and leaves the given ones, the retrain is resized into new values from what the search
measured, the --dry-run printout, a trial's fixed config and threads, and the probe's timing call."""

from __future__ import annotations

import dataclasses
import inspect
import time

import pytest
import ray

import fer_core.timing
from fer_core.config import TrainConfig, make_config
from fer_core.errors import FerError
from fer_core.timing import TrainingTiming
from sweeps.config.settings import load_settings
from sweeps.plan import probe
from sweeps.plan.budget import Counts, Estimate, Rates, split_budget, waves
from sweeps.plan.dry_run import print_dry_run
from sweeps.plan.resources import NodeShape, assigned_threads, place_trials
from sweeps.tune.trainable import trial_config

from .conftest import REPO

NO_BUDGET = {"time_budget": ""}  # the demo YAML's time budget off: these settings are sized by hand

RATES = Rates(
    train_images_per_s=100.0,
    eval_images_per_s=400.0,
    retrain_images_per_s=80.0,
    start_s=5.0,
    checkpoint_s=0.1,
    params={"batch_size": 32},
    seconds=3.0,
    runtime="cpu",
)
EST = Estimate(trial_epoch_s=6.0, retrain_epoch_s=7.0, report_s=10.0, start_s=5.0, counts=Counts(700, 210))
BIG = [NodeShape("local", 64)]


def test_waves_are_rounds_of_the_retrain():
    assert [waves(1, 8), waves(3, 2), waves(4, 0), waves(4, 4), waves(5, 2)] == [1, 2, 4, 1, 3]


def test_a_time_budget_derives_new_settings_and_leaves_the_given_ones(demo_root, monkeypatch, capsys):
    monkeypatch.setattr(probe, "run_probe", lambda settings, **kw: RATES)
    # No caps: the demo YAML's num_samples, max_epochs and retrain_epochs would bound every size.
    given = dataclasses.replace(load_settings(None, {"time_budget": "10m"}), given=frozenset())
    before = place_trials(given, BIG)
    budget, sized, placement, est = probe.fit_budget(
        given, data=str(demo_root), placement=before, nodes=BIG, t0=time.monotonic(), source="--time-budget"
    )
    assert (sized.num_samples, sized.scheduler.max_epochs, sized.retrain_epochs) == (
        budget.num_samples,
        budget.max_epochs,
        budget.retrain_epochs,
    )
    assert (budget.num_samples, budget.retrain_epochs) != (8, 40)  # sized, not the YAML's
    assert (given.num_samples, given.scheduler.max_epochs, given.retrain_epochs) == (8, 3, 40)
    # Placed again for the new trial count: 16 four-CPU slots, no longer capped at the YAML's 8 trials.
    assert before.concurrent == 8 and placement.concurrent == min(16, sized.num_samples)
    assert est.counts.train == 70 and est.retrain_speed == pytest.approx(0.8)
    out = capsys.readouterr().out
    assert "[sweeps] probe: 100 img/s training (80 with the retrain's config)" in out
    assert "[sweeps] time budget 10m00s:" in out

    plain = load_settings(None, NO_BUDGET)
    none, same, kept, _ = probe.fit_budget(
        plain, data=str(demo_root), placement=before, nodes=BIG, t0=time.monotonic(), source="x"
    )
    assert none is None and same is plain and kept is before


def test_a_budget_that_fits_nothing_names_its_source_and_changes_nothing(demo_root, monkeypatch):
    monkeypatch.setattr(probe, "run_probe", lambda settings, **kw: RATES)
    s = load_settings(None, {"time_budget": "20s"})
    with pytest.raises(
        FerError, match=r"^cfg.yaml: 'time_budget': 20s cannot fit one useful trial.*give at least"
    ):
        probe.fit_budget(
            s,
            data=str(demo_root),
            placement=place_trials(s, BIG),
            nodes=BIG,
            t0=0.0,
            source="cfg.yaml: 'time_budget'",
        )


class _Result:  # what the search leaves of a trial: Ray's Result.metrics
    def __init__(self, **metrics):
        self.metrics = metrics


def test_the_retrain_is_resized_into_new_values_from_the_winners_timing():
    s = dataclasses.replace(load_settings(None, NO_BUDGET), given=frozenset())
    budget = split_budget(s, budget_s=600, elapsed_s=20, est=EST, concurrent=1, source="x")
    placement = place_trials(s, [NodeShape("local", 4)])  # one 4-CPU trial at once
    # The winner: 3 epochs of 20 s, 10 s of them training 672 images (21 batches of 32) at 50 img/s.
    results = [
        _Result(trial_id="a", training_iteration=3, time_total_s=60.0, images_per_s=50.0, epoch_seconds=10.0),
        _Result(trial_id="b", training_iteration=1, time_total_s=30.0),
    ]
    members = [{"trial_id": "a", "params": {"batch_size": 32}}]
    kwargs = dict(data="/data", results=results, members=members, placement=placement, sweep_s=200.0)
    t0 = time.monotonic() - 300  # half the budget is spent
    resized, noted, limit_s = probe.resize_retrain(s, budget=budget, t0=t0, **kwargs)
    epoch_s = 672 / 50 + 10.0  # its training rate over the retrain's images, and the rest of its epoch
    start_s = (200.0 - 90.0) / 2  # the slot-time the two trials spent outside their training function
    left = 300 - budget.margin_s - budget.est.report_s - start_s
    assert resized.retrain_epochs == int(left // epoch_s) == 7 and s.retrain_epochs == 40
    assert limit_s == pytest.approx(start_s + left + budget.margin_s / 2, abs=0.5)
    assert noted.notes[-1].startswith("retrain resized after the search: 7 epochs") and noted.lines()[-1]
    assert budget.notes == () and noted.notes[:-1] == budget.notes  # the budget given is left as it was
    # Nothing to change: the same settings (the record is rewritten only when they change).
    seven = dataclasses.replace(s, retrain_epochs=7)
    assert probe.resize_retrain(seven, budget=budget, t0=t0, **kwargs)[0] is seven


def test_dry_run_prints_the_plan_and_its_estimate(capsys):
    s = load_settings(None, NO_BUDGET)
    placement = place_trials(s, [NodeShape("local", 4)])
    print_dry_run(
        s,
        data="/data",
        findings={},
        placement=placement,
        est=EST,
        budget=None,
        exp="runs/demo",
        t0=time.monotonic(),
    )
    out = capsys.readouterr().out
    assert out.startswith("Dry run: ") and "  train 700 images, val 210, no test split" in out
    assert "  plan: each trial 4 CPU + 0 GPU" in out and "Search: 8 trials" in out
    assert "  lr: loguniform 0.0003 .. 0.01" in out and "rungs at epochs [1, 2, 3]" in out
    # 8 trials one at a time of 5 s + 1.75 expected epochs of 6 s; one retrain of 5 s + 40 epochs of 7 s.
    assert "search ~2m04s" in out and "retrain ~4m45s" in out and "report ~10s" in out
    # The demo's second objective: what would be timed before the search, and how the model is picked.
    assert "Objectives: val_accuracy (max), latency_ms (min); ASHA stops trials on val_accuracy" in out
    assert (
        "2 architecture(s) for the objectives (efficientnet_b0/48/gray, mobilenetv3_small_100/48/gray)" in out
    )
    assert "the pick rule 'knee'" in out
    budget = split_budget(s, budget_s=60, elapsed_s=1, est=EST, concurrent=1, source="x")
    print_dry_run(
        s,
        data="/data",
        findings={},
        placement=placement,
        est=EST,
        budget=budget,
        exp="runs/demo",
        t0=time.monotonic(),
    )
    out = capsys.readouterr().out
    assert f"search ~{budget.sweep_s:.0f}s" in out and "  time budget 1m00s:" in out


def test_a_trials_config_is_the_train_section_with_the_retrains_overrides():
    s = load_settings(REPO / "sweeps" / "configs" / "fer2013-cpu.yaml", {"weights": ""})
    base, retrain = trial_config(s, data="/d"), trial_config(s, data="/d", retrain=True)
    assert base["data"] == retrain["data"] == "/d" and base["audit"] is False  # the driver audited once
    assert (base["epochs"], retrain["epochs"]) == (s.scheduler.max_epochs, s.retrain_epochs)
    assert all(retrain[k] == v for k, v in s.retrain.items()) and base["ema_decay"] != retrain["ema_decay"]
    assert base["threads"] == s.train.threads  # a trial's threads come from its own Ray allocation
    assert isinstance(make_config(retrain), TrainConfig)


class _Context:
    def __init__(self, resources: dict):
        self.resources = resources

    def get_assigned_resources(self) -> dict:
        return self.resources


@pytest.mark.parametrize(
    "assigned, threads", [({"CPU": 2.0}, {"threads": 2}), ({"CPU": 0.5}, {"threads": 1}), ({}, {})]
)
def test_a_trials_threads_are_its_own_cpu_allocation(monkeypatch, assigned, threads):
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context(assigned))
    assert assigned_threads() == threads


def test_the_probe_times_the_trials_config_through_fer_core(monkeypatch):
    """On its worker the probe times the trial's config at the probe's point, on the worker's CPUs, with
    validation plain; the retrain's config only when it is given (its steps cost otherwise)."""
    calls, real = [], inspect.signature(fer_core.timing.time_training)

    def fake(cfg, **kwargs):
        real.bind(cfg, **kwargs)  # called as fer_core.timing.time_training takes its arguments
        calls.append((cfg, kwargs))
        ips = 50.0 if cfg.ema_decay else 100.0
        return TrainingTiming(1.0, 0.5, ips, ips, 400.0 if kwargs["eval_images"] else 0.0, 0.1, "cpu", 70)

    monkeypatch.setattr(probe, "time_training", fake)
    monkeypatch.setattr(probe, "assigned_threads", lambda: {"threads": 3})
    s = load_settings(REPO / "sweeps" / "configs" / "fer2013-cpu.yaml", {"weights": "", "tta_flip": True})
    base, retrain = trial_config(s, data="/d"), trial_config(s, data="/d", retrain=True)
    trial, retrain_ips, call_s = probe._ProbeActor().run(base, {"batch_size": 16}, retrain)
    assert (trial.best_images_per_s, retrain_ips) == (100.0, 50.0) and call_s >= 0
    (cfg, kwargs), (retrain_cfg, retrain_kwargs) = calls
    assert isinstance(cfg, TrainConfig) and (cfg.batch_size, cfg.threads, cfg.tta_flip) == (16, 3, False)
    assert kwargs == dict(
        warmup_steps=probe.PROBE_WARMUP,
        timed_steps=probe.PROBE_STEPS,
        chunks=probe.PROBE_CHUNKS,
        eval_images=probe.PROBE_EVAL_IMAGES,
    )
    assert retrain_cfg.ema_decay and retrain_kwargs["eval_images"] == 0
    calls.clear()
    assert probe._ProbeActor().run(base, {}, None)[1] == 100.0 and len(calls) == 1
