"""Timing on the cluster itself: the probe of a trial's config on a trial's resources (``run_probe``), the
time budget fitted to it (``fit_budget``) and the retrain resized to what the search measured
(``resize_retrain``); the arithmetic is ``sweeps.plan.budget``'s."""

from __future__ import annotations

import dataclasses
import math
import time

import ray

from fer_core.config import make_config
from fer_core.errors import FerError
from fer_core.timing import time_training
from sweeps.config.settings import SweepSettings, fmt_duration, parse_duration
from sweeps.config.space import Param
from sweeps.plan.budget import (
    Estimate,
    Rates,
    TimeBudget,
    count_images,
    estimate,
    measured_retrain_epoch_s,
    measured_start_s,
    size_retrain,
    split_budget,
)
from sweeps.plan.resources import NodeShape, Placement, assigned_threads, place_trials
from sweeps.tune.trainable import trial_config

# Warm-up steps absorb the first steps' allocations; the timed steps run in chunks and the fastest counts,
# since Ray's own start-up still runs beside the probe (on 2 cores it slowed one-chunk probes by up to 2x).
PROBE_WARMUP, PROBE_STEPS, PROBE_CHUNKS = 4, 12, 3
PROBE_EVAL_IMAGES = 256
MAX_PARALLEL = 4  # probes at once: enough to see trials sharing a node slow each other


def probe_params(space: tuple[Param, ...]) -> dict:
    """The point of the search space the probe trains at: each parameter's middle (the median choice, the
    geometric middle of a log range), so the probe's speed is that of a typical trial."""
    out = {}
    for p in space:
        if p.kind == "choice":
            values = sorted(p.values, key=lambda v: (isinstance(v, str), v))
            out[p.name] = values[(len(values) - 1) // 2]
        elif p.kind == "randint":
            out[p.name] = int((p.low + p.high - 1) // 2)
        elif p.is_log:
            out[p.name] = math.sqrt(p.low * p.high)
        else:
            mid = (p.low + p.high) / 2
            out[p.name] = round(mid / p.q) * p.q if p.q else mid
    return out


# TrainConfig keys that change how long an epoch is, or what it learns, but not the cost of a step.
_STEP_COST_FREE = set(
    """data out epochs max_train_samples max_val_samples steps_per_epoch warmup_epochs tta_flip seed lr
    weight_decay label_smoothing min_lr_ratio class_weighting audit progress keep_checkpoints best_metric
    dedupe""".split()
)


def steps_cost_alike(base: dict, retrain_base: dict) -> bool:
    """Whether a retrain step costs what a trial step does (else the probe times the retrain's config too)."""
    keys = (base.keys() | retrain_base.keys()) - _STEP_COST_FREE
    return all(base.get(k) == retrain_base.get(k) for k in keys)


def _time(base: dict, params: dict, eval_images: int):
    """``fer_core.timing.time_training`` of this TrainConfig mapping at ``params`` on this worker's CPUs, with
    validation timed plain (the estimate adds flip TTA's second pass itself)."""
    cfg = make_config({**base, **params, **assigned_threads(), "tta_flip": False}, source="time-budget probe")
    return time_training(
        cfg, warmup_steps=PROBE_WARMUP, timed_steps=PROBE_STEPS, chunks=PROBE_CHUNKS, eval_images=eval_images
    )


class _ProbeActor:
    def run(self, base: dict, params: dict, retrain_base: dict | None) -> tuple:
        """(a trial's timing, the retrain's training rate, seconds in this call)."""
        # A trial's process imports torch, timm and fer_core before its first step, and so did this actor's
        # (this module imports them): their time is part of the start measured as wall - call.
        t0 = time.perf_counter()
        trial = _time(base, params, PROBE_EVAL_IMAGES)
        retrain = _time(retrain_base, params, 0) if retrain_base is not None else trial
        return trial, retrain.best_images_per_s, time.perf_counter() - t0


def run_probe(settings: SweepSettings, *, placement: Placement, base: dict, retrain_base: dict) -> Rates:
    """Time a trial's training and validation (``base``) on a trial's resources, as many at once as trials
    run (at most ``MAX_PARALLEL``), and the retrain's (``retrain_base``) when its steps cost otherwise."""
    params = probe_params(settings.search_space)
    res = placement.resources
    k = max(1, min(placement.concurrent, MAX_PARALLEL))
    where = f"{res['cpu']} CPU + {res['gpu']:g} GPU ({k} at once)"
    print(f"[sweeps] probe: timing a trial's training and validation on {where} ...", flush=True)
    # Actors, like Tune's trials: each starts a worker process of its own, so its start is measured too.
    actor = ray.remote(_ProbeActor).options(num_cpus=res["cpu"], num_gpus=res["gpu"], max_restarts=0)
    t0 = time.perf_counter()
    actors = [actor.remote() for _ in range(k)]
    second = None if steps_cost_alike(base, retrain_base) else retrain_base
    pending = {a.run.remote(base, params, second): a for a in actors}
    done = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        wall = time.perf_counter() - t0
        try:
            out = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - any failure of the probe is the trial's failure too
            for a in pending.values():
                ray.kill(a)
            raise FerError(
                f"the time-budget probe (a trial's config trained for {PROBE_WARMUP + PROBE_STEPS} steps) "
                f"failed: {str(e).strip().splitlines()[-1]}"
            ) from None
        done.append((*out, wall))
        ray.kill(pending.pop(ready[0]))
    slow = min((trial for trial, *_ in done), key=lambda t: t.best_images_per_s)
    return Rates(
        train_images_per_s=slow.best_images_per_s,
        eval_images_per_s=min(trial.eval_images_per_s for trial, *_ in done),
        retrain_images_per_s=min(retrain for _, retrain, *_ in done),
        # wall - call: the actor's process start and imports; + setup: the Trainer build.
        start_s=max(wall - call + trial.setup_s for trial, _, call, wall in done),
        checkpoint_s=max(trial.checkpoint_s for trial, *_ in done),
        params=params,
        seconds=time.perf_counter() - t0,
        runtime=slow.runtime,
    )


def fit_budget(
    settings: SweepSettings,
    *,
    data: str,
    placement: Placement,
    nodes: list[NodeShape],
    t0: float,
    source: str,
) -> tuple[TimeBudget | None, SweepSettings, Placement, Estimate]:
    """Probe this machine and size the sweep to its time budget: (budget or None, the sized settings and their
    placement on ``nodes``, the probe's estimates). ``t0``: ``time.monotonic()`` at the command's start;
    ``source`` is named in a refusal. FerError: the probe failed, or no trial fits."""
    base, retrain_base = trial_config(settings, data=data), trial_config(settings, data=data, retrain=True)
    rates = run_probe(settings, placement=placement, base=base, retrain_base=retrain_base)
    also = ""
    if rates.retrain_images_per_s != rates.train_images_per_s:
        also = f" ({rates.retrain_images_per_s:.0f} with the retrain's config)"
    print(
        f"[sweeps] probe: {rates.train_images_per_s:.0f} img/s training{also}, {rates.eval_images_per_s:.0f} "
        f"img/s validation at {rates.params or 'the fixed config'}; a trial starts in ~{rates.start_s:.0f} s "
        f"({rates.runtime}); took {rates.seconds:.0f} s",
        flush=True,
    )
    est = estimate(
        settings,
        rates=rates,
        counts=count_images(dataclasses.replace(settings.train, data=data)),
        base=base,
        retrain_base=retrain_base,
    )
    if not settings.time_budget:
        return None, settings, placement, est
    budget_s = parse_duration(settings.time_budget, source)
    elapsed_s, concurrent = time.monotonic() - t0, placement.concurrent
    budget = split_budget(
        settings, budget_s=budget_s, elapsed_s=elapsed_s, est=est, concurrent=concurrent, source=source
    )
    for line in budget.lines():
        print(f"[sweeps] {line}", flush=True)
    scheduler = dataclasses.replace(settings.scheduler, max_epochs=budget.max_epochs)
    sized = dataclasses.replace(
        settings, num_samples=budget.num_samples, retrain_epochs=budget.retrain_epochs, scheduler=scheduler
    )
    return budget, sized, place_trials(sized, nodes), est


def resize_retrain(
    settings: SweepSettings,
    *,
    data: str,
    budget: TimeBudget,
    results,
    members: list[dict],
    placement: Placement,
    sweep_s: float,
    t0: float,
) -> tuple[SweepSettings, TimeBudget, float]:
    """Size the retrain to the time left from the winner's (``members[0]``) timing in ``results`` (the
    ResultGrid; ``sweep_s`` its wall time): (the settings, the same object when unchanged; a new budget noting
    the resize; the retrain's time limit: its start, epochs and half the margin)."""
    base, retrain_base = trial_config(settings, data=data), trial_config(settings, data=data, retrain=True)
    est, winner = budget.est, members[0]
    last = next((r.metrics for r in results if (r.metrics or {}).get("trial_id") == winner["trial_id"]), {})
    measured = measured_retrain_epoch_s(
        last, winner["params"], est.counts, base, retrain_base, est.retrain_speed
    )
    epoch_s = measured or est.retrain_epoch_s
    inside = [float((r.metrics or {}).get("time_total_s") or 0.0) for r in results]
    start_s = measured_start_s(inside, sweep_s, placement.concurrent) or est.start_s
    left_s, concurrent = t0 + budget.budget_s - time.monotonic(), placement.concurrent
    epochs, left = size_retrain(
        budget, left_s=left_s, epoch_s=epoch_s, start_s=start_s, members=len(members), concurrent=concurrent
    )
    note = (
        f"retrain resized after the search: {epochs} epochs (planned {budget.retrain_epochs}); "
        f"{fmt_duration(left)} left for it, an epoch measured ~{epoch_s:.1f} s, a trial's start ~{start_s:.0f} s"
    )
    print(f"[sweeps] time budget: {note}", flush=True)
    if epochs != settings.retrain_epochs:
        settings = dataclasses.replace(settings, retrain_epochs=epochs)
    budget = dataclasses.replace(budget, notes=(*budget.notes, note))
    return settings, budget, start_s + max(left, epochs * epoch_s) + budget.margin_s / 2
