"""Time budgets: ``--time-budget 30m`` sizes the sweep and the retrain to what this machine can do in it.

Nothing here is a constant per model or machine: a short probe (``run_probe``) trains the trial's own
config through the benchmark's timing path (``fer_core.tools.bench_timing.bench_fer_core``) on a Ray worker
holding exactly a trial's resources, as many at once as trials will run at once, and times a validation
pass. ``plan_budget`` turns those rates into the sweep's trial count, ASHA's ``max_t`` and Tune's own
``time_budget_s``, and a first retrain length. After the sweep, ``size_retrain`` sizes the retrain again
from what the winner's trial actually measured and the time actually left, so a slow sweep is paid for by
the retrain, not by overrunning the budget.

The whole command (start-up, probe, sweep, retrain, report) is planned to end ``margin`` before the
deadline. The split of the time left between search and retrain is ``RETRAIN_SHARE``: the winner's retrain
on the full data is what buys accuracy; the search only ranks recipes on short trials.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from fer_core.errors import FerError

RETRAIN_SHARE = 0.7  # of the time left for training once start-up, report and margin are set aside
MARGIN_SHARE, MARGIN_MIN_S = 0.10, 15.0  # kept free at the end: a slow spell, Ray's shutdown, the upload
REPORT_PLOTS_S = 10.0  # the report's plots and files besides its evaluation (~7 s measured on 2 cores)
# Warm-up steps absorb the first steps' allocations; the timed steps run in chunks and the fastest counts,
# since Ray's own start-up still runs beside the probe (on 2 cores it slowed one-chunk probes by up to 2x).
PROBE_WARMUP, PROBE_STEPS, PROBE_CHUNKS = 4, 12, 3
MAX_TRIALS = 64  # the most trials a budget plans when the YAML sets no num_samples
MAX_RETRAIN_EPOCHS = 100
DEFAULT_MAX_EPOCHS = 10  # ASHA's max_t when neither the YAML nor the command line set scheduler.max_epochs

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text, where: str) -> float:
    """Seconds in a duration like ``90s``, ``30m``, ``2h`` or ``1h30m``.

    Args:
        text: the duration.
        where: the flag or YAML key, named in the error.

    Raises:
        FerError: not a duration, or not positive.
    """
    s = str(text).strip().lower().replace(" ", "")
    parts = _DURATION.findall(s)
    if not s or "".join(a + u for a, u in parts) != s:
        raise FerError(
            f"{where}: {text!r} is not a duration; write it with a unit, e.g. 90s, 30m, 2h or 1h30m"
        )
    seconds = sum(float(a) * _UNITS[u] for a, u in parts)
    if seconds <= 0:
        raise FerError(f"{where}: {text!r} must be longer than zero")
    return seconds


def fmt_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def probe_params(space) -> dict:
    """The point of the search space the probe trains at: each parameter's middle (the median choice,
    the geometric middle of a log range), so the probe's speed is that of a typical trial."""
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


@dataclass
class Counts:
    """Images per split, which the epoch lengths follow from."""

    train: int
    val: int
    test: int = 0


def count_images(data: str) -> Counts:
    """Images in train/, val/ and (when present) test/ (the layout is checked by ``scan_split``)."""
    from fer_core.data import scan_split

    n = {sp: len(scan_split(data, sp).paths) for sp in ("train", "val")}
    test = len(scan_split(data, "test").paths) if (Path(data) / "test").is_dir() else 0
    return Counts(n["train"], n["val"], test)


def epoch_images(cfg: dict, counts: Counts) -> tuple[int, int]:
    """(train images, val images) one epoch of this TrainConfig mapping passes over, as ``Trainer`` sizes
    it: the class-stratified subset, ``steps_per_epoch`` or full batches, the val subset."""
    n = min(cfg.get("max_train_samples") or counts.train, counts.train)
    batch = int(cfg["batch_size"])
    steps = cfg.get("steps_per_epoch") or max(1, n // batch)
    val = min(cfg.get("max_val_samples") or counts.val, counts.val)
    return steps * batch, val * (2 if cfg.get("tta_flip") else 1)  # flip TTA runs the model twice


def asha_rungs(max_t: int, grace: int, rf: float) -> list[int]:
    """The epochs at which ASHA compares trials (its milestones ``grace * rf**k`` below ``max_t``), then
    ``max_t``."""
    rungs, k = [], 0
    while grace * rf**k < max_t:
        rungs.append(int(grace * rf**k))
        k += 1
    return rungs + [max_t]


def asha_epochs(max_t: int, grace: int, rf: float) -> float:
    """Expected epochs per trial under ASHA: all reach the first rung, 1/rf of them the next, 1/rf^2 the
    one after, ..., up to ``max_t``."""
    rungs = asha_rungs(max_t, grace, rf)
    return rungs[0] + sum((b - a) / rf ** (i + 1) for i, (a, b) in enumerate(zip(rungs, rungs[1:])))


def trial_s(est, scheduler, max_t: int | None = None) -> float:
    """A trial's expected seconds: its start, and ASHA's expected epochs at ``max_t`` (default: the
    scheduler's)."""
    epochs = asha_epochs(max_t or scheduler.max_epochs, scheduler.grace_period, scheduler.reduction_factor)
    return est.start_s + epochs * est.trial_epoch_s


@dataclass
class Probe:
    """What the probe measured on one trial's resources (the slowest of ``parallel`` probes at once)."""

    train_images_per_s: float
    eval_images_per_s: float  # a validation pass, plain (no TTA)
    retrain_images_per_s: float  # the retrain's config, when it trains at another speed (EMA, model, ...)
    start_s: float  # submit -> first step: Ray worker, imports, data and model (Trainer build)
    checkpoint_s: float  # writing an epoch's checkpoint (Tune then copies it to storage: counted twice)
    parallel: int
    params: dict
    seconds: float  # the probe's wall time
    runtime: str = ""


# TrainConfig keys that change how long an epoch is, or what it learns, but not the cost of a step.
_STEP_COST_FREE = {
    "data", "out", "epochs", "max_train_samples", "max_val_samples", "steps_per_epoch", "warmup_epochs",
    "tta_flip", "seed", "lr", "weight_decay", "label_smoothing", "min_lr_ratio", "class_weighting",
    "audit", "progress", "keep_checkpoints", "best_metric", "dedupe",
}  # fmt: skip


def steps_cost_alike(base: dict, retrain_base: dict) -> bool:
    """Whether a retrain step costs what a trial step costs (else the probe times the retrain's config
    too: an EMA of the weights, another model or input size)."""
    keys = (base.keys() | retrain_base.keys()) - _STEP_COST_FREE
    return all(base.get(k) == retrain_base.get(k) for k in keys)


def _bench(base: dict, params: dict, data: str, threads: dict, eval_images: int) -> dict:
    """The benchmark's fer_core path (``bench_fer_core``) for this TrainConfig mapping at ``params``."""
    from fer_core.tools.bench_timing import bench_fer_core

    cfg = {**base, **params, **threads, "tta_flip": False}
    for key in ("data", "out", "epochs", "steps_per_epoch", "progress", "img_size", "batch_size"):
        cfg.pop(key, None)
    return bench_fer_core(
        Path(data),
        base.get("device", "auto"),
        int(params.get("img_size", base["img_size"])),
        int(params.get("batch_size", base["batch_size"])),
        PROBE_WARMUP,
        PROBE_STEPS,
        overrides={**cfg, "keep_checkpoints": False, "audit": False},
        eval_images=eval_images,
        chunks=PROBE_CHUNKS,
    )


def _probe_task(base: dict, params: dict, data: str, retrain_base: dict | None) -> dict:
    """Runs on a Ray worker with one trial's resources: a trial's config timed (and the retrain's, when
    its steps cost otherwise)."""
    import ray

    t0 = time.perf_counter()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    threads = {"threads": max(1, int(cpus))} if cpus else {}
    out = _bench(base, params, data, threads, eval_images=256)
    out["body_s"] = time.perf_counter() - t0  # the first build only: that is a trial's start
    out["retrain_images_per_s"] = (
        _bench(retrain_base, params, data, threads, eval_images=0)["best_images_per_s"]
        if retrain_base is not None
        else out["best_images_per_s"]
    )
    return out


class _ProbeActor:
    def run(self, base: dict, params: dict, data: str, retrain_base: dict | None) -> dict:
        # Imported before the clock starts: a trial's process imports the same (torch, timm, fer_core)
        # before its first step, so their time belongs to the start measured as wall - call.
        import fer_core.tools.bench_timing  # noqa: F401

        t0 = time.perf_counter()
        out = _probe_task(base, params, data, retrain_base)
        out["call_s"] = time.perf_counter() - t0
        return out


def run_probe(settings, data: str, plan, base: dict, retrain_base: dict) -> Probe:
    """Time a trial's training and validation on the resources a trial gets, ``plan.concurrent`` (at most
    4) at once so that trials sharing a node are measured sharing it.

    Args:
        settings: sweep settings (the search space gives the probe's point).
        data: dataset root.
        plan: the per-node plan (``sweeps.placement.make_plan``).
        base: the trials' fixed TrainConfig mapping (``sweeps.tuning.base_train_config``).
        retrain_base: the retrain's; timed as well when its steps cost otherwise (``steps_cost_alike``).
    """
    import ray

    params = probe_params(settings.search_space)
    res = plan.resources
    k = max(1, min(plan.concurrent, 4))
    # Actors, like Tune's trials: each starts a worker process of its own, so its start is measured too.
    actor = ray.remote(_ProbeActor).options(num_cpus=res["cpu"], num_gpus=res["gpu"], max_restarts=0)
    t0 = time.perf_counter()
    actors = [actor.remote() for _ in range(k)]
    second = None if steps_cost_alike(base, retrain_base) else retrain_base
    pending = {a.run.remote(base, params, data, second): a for a in actors}
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
        out["wall_s"] = wall
        done.append(out)
        ray.kill(pending.pop(ready[0]))
    slow = min(done, key=lambda o: o["best_images_per_s"])
    return Probe(
        train_images_per_s=slow["best_images_per_s"],
        eval_images_per_s=min(o["eval_images_per_s"] for o in done),
        # wall - call: the actor's process start and imports; + setup: the Trainer build.
        start_s=max(o["wall_s"] - o["call_s"] + o["setup_s"] for o in done),
        retrain_images_per_s=min(o["retrain_images_per_s"] for o in done),
        checkpoint_s=max(o["checkpoint_s"] for o in done),
        parallel=k,
        params=params,
        seconds=time.perf_counter() - t0,
        runtime=slow["runtime"],
    )


@dataclass
class Estimate:
    """Seconds each part is expected to take, from the probe."""

    trial_epoch_s: float
    retrain_epoch_s: float
    report_s: float
    start_s: float
    counts: Counts  # images per split, counted once for the probe and reused by every later estimate
    retrain_speed: float = 1.0  # a retrain step's speed over a trial step's (the probe's two rates)


def estimate(settings, probe: Probe, counts: Counts, base: dict, retrain_base: dict) -> Estimate:
    """Epoch, report and start-up times from the probe's rates.

    Args:
        settings: sweep settings.
        probe: the probe's measurements.
        counts: images per split.
        base, retrain_base: the TrainConfig mappings of a trial and of the retrain.
    """

    def epoch_s(cfg: dict, train_ips: float) -> float:
        train, val = epoch_images({**cfg, **probe.params}, counts)
        return train / train_ips + val / probe.eval_images_per_s + 2 * probe.checkpoint_s

    members = max(1, settings.ensemble_top_k)
    # The report scores each retrained model on val and test, plain and flipped.
    report_images = members * 2 * (counts.val + counts.test)
    return Estimate(
        trial_epoch_s=epoch_s(base, probe.train_images_per_s),
        retrain_epoch_s=epoch_s(retrain_base, probe.retrain_images_per_s),
        report_s=report_images / probe.eval_images_per_s + REPORT_PLOTS_S,
        start_s=probe.start_s,
        counts=counts,
        retrain_speed=probe.retrain_images_per_s / probe.train_images_per_s,
    )


@dataclass
class BudgetPlan:
    """What a time budget decided, and why (``lines``)."""

    budget_s: float
    margin_s: float
    elapsed_s: float  # before the sweep: start-up, audit, Ray, probe
    num_samples: int
    max_epochs: int
    sweep_s: float  # Tune's time_budget_s for the search
    retrain_epochs: int
    retrain_s: float
    report_s: float
    est: Estimate
    retrain_cap: int = MAX_RETRAIN_EPOCHS
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        e = self.est
        return [
            f"time budget {fmt_duration(self.budget_s)}: {fmt_duration(self.elapsed_s)} spent on start-up and "
            f"the probe, {fmt_duration(self.margin_s)} kept as margin",
            f"  search: up to {self.num_samples} trials of at most {self.max_epochs} epochs (ASHA), stopped by "
            f"Tune after {fmt_duration(self.sweep_s)} (a trial epoch ~{e.trial_epoch_s:.1f} s, a trial's start "
            f"~{e.start_s:.0f} s)",
            f"  retrain: {self.retrain_epochs} epochs, ~{fmt_duration(self.retrain_s)} (an epoch "
            f"~{e.retrain_epoch_s:.1f} s; resized from the winner's own timing when the search ends)",
            f"  report: ~{fmt_duration(self.report_s)}",
            *[f"  {n}" for n in self.notes],
        ]

    def to_dict(self) -> dict:
        return {
            "budget_s": round(self.budget_s, 1),
            "margin_s": round(self.margin_s, 1),
            "start_s": round(self.elapsed_s, 1),
            "num_samples": self.num_samples,
            "max_epochs": self.max_epochs,
            "sweep_s": round(self.sweep_s, 1),
            "retrain_epochs_planned": self.retrain_epochs,
            "retrain_s": round(self.retrain_s, 1),
            "report_s": round(self.report_s, 1),
            "trial_epoch_s": round(self.est.trial_epoch_s, 2),
            "retrain_epoch_s": round(self.est.retrain_epoch_s, 2),
            "trial_start_s": round(self.est.start_s, 1),
        }


@dataclass
class Caps:
    """Upper bounds the YAML or command line set explicitly; a budget plans below them."""

    num_samples: int = MAX_TRIALS
    max_epochs: int = DEFAULT_MAX_EPOCHS
    retrain_epochs: int = MAX_RETRAIN_EPOCHS

    @classmethod
    def from_settings(cls, settings) -> Caps:
        raw = settings.raw
        given = lambda key, section=None: key in ((raw.get(section) or {}) if section else raw)  # noqa: E731
        return cls(
            num_samples=settings.num_samples if given("num_samples") else MAX_TRIALS,
            max_epochs=settings.scheduler.max_epochs
            if given("max_epochs", "scheduler")
            else max(DEFAULT_MAX_EPOCHS, settings.scheduler.grace_period),
            retrain_epochs=settings.retrain_epochs if given("retrain_epochs") else MAX_RETRAIN_EPOCHS,
        )


def margin_for(budget_s: float) -> float:
    return max(MARGIN_SHARE * budget_s, MARGIN_MIN_S)


def plan_budget(
    budget_s: float, elapsed_s: float, est: Estimate, settings, concurrent: int, caps: Caps, source: str
) -> BudgetPlan:
    """Size the search and the retrain to fit ``budget_s``.

    The time left after what is already spent, the report and the margin is split ``RETRAIN_SHARE`` to
    the retrain; retrain epochs are what fits its share (at least one); the search gets the rest, in
    trials of ASHA's expected length. ``max_t`` is lowered towards the grace period while fewer than two
    trials a slot (four at least) would fit, so a small budget compares several recipes briefly rather
    than one at length.

    Args:
        budget_s: the whole command's budget, seconds.
        elapsed_s: seconds spent before the sweep (start-up, audit, Ray, probe).
        est: the probe's estimates.
        settings: sweep settings (scheduler grace period and reduction factor, ensemble size).
        concurrent: trials that run at once.
        caps: explicit upper bounds.
        source: the flag or key that set the budget, named in the refusal.

    Raises:
        FerError: one line, when not even one trial of ``grace_period`` epochs and one retrain epoch fit.
    """
    margin = margin_for(budget_s)
    members = max(1, settings.ensemble_top_k)
    waves = math.ceil(members / max(1, min(concurrent, members)))
    fixed = elapsed_s + margin + est.report_s + 2 * est.start_s  # + the sweep's and the retrain's start
    left = budget_s - fixed
    sch = settings.scheduler
    one_trial = est.start_s + sch.grace_period * est.trial_epoch_s
    retrain_epoch = waves * est.retrain_epoch_s
    if left < one_trial + retrain_epoch:
        work = fixed - margin + one_trial + retrain_epoch  # the smallest budget holds this and its own margin
        need = max(work + MARGIN_MIN_S, work / (1 - MARGIN_SHARE))
        raise FerError(
            f"{source}: {fmt_duration(budget_s)} cannot fit one useful trial: on this machine start-up and the "
            f"probe took {fmt_duration(elapsed_s)}, one {sch.grace_period}-epoch trial needs ~"
            f"{fmt_duration(one_trial)}, one retrain epoch ~{fmt_duration(retrain_epoch)}, the report "
            f"~{fmt_duration(est.report_s)} and the margin {fmt_duration(margin)}; give at least "
            f"{fmt_duration(math.ceil(need / 60) * 60)}, or shrink the work (max_train_samples, steps_per_epoch, img_size)"
        )
    # Rounded, not floored: a long retrain epoch would otherwise hand most of one epoch to the search; but
    # never so many that the search cannot hold one trial.
    fit = int((left - one_trial) // retrain_epoch)
    retrain_epochs = int(min(caps.retrain_epochs, fit, max(1, round(RETRAIN_SHARE * left / retrain_epoch))))
    sweep_s = left - retrain_epochs * retrain_epoch
    slots = max(1, concurrent)
    want = max(4, 2 * slots)

    def trials(max_t: int) -> int:
        return int(sweep_s * slots // trial_s(est, sch, max_t))

    max_t = max(caps.max_epochs, sch.grace_period)
    while max_t > sch.grace_period and trials(max_t) < want:
        max_t -= 1
    n = max(1, min(caps.num_samples, trials(max_t)))
    notes = []
    if trials(max_t) > caps.num_samples:  # the search ends early: give the retrain what it leaves
        used = math.ceil(n / slots) * trial_s(est, sch, max_t)
        extra = int(min(caps.retrain_epochs - retrain_epochs, max(0, (sweep_s - used) // retrain_epoch)))
        if extra > 0:
            retrain_epochs += extra
            sweep_s -= extra * retrain_epoch
        notes.append(f"num_samples caps the search at {caps.num_samples} trials")
    if retrain_epochs == caps.retrain_epochs and caps.retrain_epochs < MAX_RETRAIN_EPOCHS:
        notes.append(f"retrain_epochs caps the retrain at {caps.retrain_epochs} epochs")
    return BudgetPlan(
        budget_s=budget_s,
        margin_s=margin,
        elapsed_s=elapsed_s,
        num_samples=n,
        max_epochs=max_t,
        sweep_s=sweep_s,
        retrain_epochs=retrain_epochs,
        retrain_s=retrain_epochs * retrain_epoch,
        report_s=est.report_s,
        est=est,
        retrain_cap=caps.retrain_epochs,
        notes=notes,
    )


def measured_retrain_epoch_s(
    last: dict, params: dict, counts: Counts, base: dict, retrain_base: dict, speed: float = 1.0
):
    """Seconds a retrain epoch of the winner's configuration takes, from its own sweep trial: its training
    rate (images per second of its last epoch) over the retrain's images, plus the rest of its epochs'
    wall time (validation, checkpoint, Tune's report) scaled by the retrain's validation images. None
    when the trial reported no timing.

    Args:
        last: the winning trial's last result (Ray's ``Result.metrics``).
        params: its searched parameters.
        counts: images per split.
        base, retrain_base: the TrainConfig mappings of a trial and of the retrain.
        speed: a retrain step's speed over a trial step's, as the probe measured them (an EMA costs).
    """
    iters, total = last.get("training_iteration"), last.get("time_total_s")
    ips, train_s = last.get("images_per_s"), last.get("epoch_seconds")
    if not (iters and total and ips and train_s):
        return None
    _, trial_val = epoch_images({**base, **params}, counts)
    retrain_train, retrain_val = epoch_images({**retrain_base, **params}, counts)
    rest = max(0.0, total / iters - train_s)
    return retrain_train / (ips * speed) + rest * retrain_val / max(1, trial_val)


def measured_start_s(results, wall_s: float, slots: int) -> float | None:
    """A trial's start as the sweep measured it: the slot-time the trials did not spend in their own
    training function (Ray's worker start, imports, Tune's bookkeeping), per trial.

    Args:
        results: the sweep's ResultGrid.
        wall_s: the search's wall time.
        slots: trials that ran at once.
    """
    inside = [float((r.metrics or {}).get("time_total_s") or 0.0) for r in results]
    if not inside:
        return None
    return max(0.0, (wall_s * max(1, slots) - sum(inside)) / len(inside))


def size_retrain(
    plan: BudgetPlan, deadline: float, epoch_s: float, start_s: float, members: int, concurrent: int
) -> tuple[int, float]:
    """Retrain epochs that fit the time left before ``deadline`` (a ``time.monotonic()`` value), keeping
    the report's estimate and the margin: at least 1, at most the plan's cap.

    Args:
        plan: the budget's plan.
        deadline: when the whole command must be done.
        epoch_s: a retrain epoch's seconds (``measured_retrain_epoch_s``, else the probe's estimate).
        start_s: a retrain trial's start.
        members: models retrained (the ensemble's size).
        concurrent: trials that can run at once.

    Returns:
        (epochs, seconds the retrain has).
    """
    waves = math.ceil(members / max(1, min(concurrent, members)))
    left = deadline - time.monotonic() - plan.margin_s - plan.report_s - start_s
    return int(min(plan.retrain_cap, max(1, left // (waves * epoch_s)))), left
