"""The time arithmetic of a sweep, pure (no Ray, clock or printing): durations, ASHA's rungs, epoch sizes,
estimates from the probe's rates, and the time budget itself (see docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fer_core.config import TrainConfig
from fer_core.dataset import epoch_steps
from fer_core.datasets import resolve
from fer_core.duplicates import dedupe_dropped
from fer_core.errors import FerError
from sweeps.config.settings import Scheduler, SweepSettings, fmt_duration

RETRAIN_SHARE = 0.7  # of the time left for training once start-up, report and margin are set aside
MARGIN_SHARE, MARGIN_MIN_S = 0.10, 15.0  # kept free at the end: a slow spell, Ray's shutdown, the upload
REPORT_PLOTS_S = 10.0  # the report's plots and files besides its evaluation (~7 s measured on 2 cores)
REPORT_SHIP_S = (
    8.0  # model.onnx exported and timed at batch 1 and the throughput batch (sweeps/report/ship.py)
)
REPORT_INT8_S = 25.0  # int8: calibrated, quantized, and timed against FP32 three times (its scoring: images)
MAX_TRIALS = 64  # the most trials a budget plans when the YAML sets no num_samples
MAX_RETRAIN_EPOCHS = 100
DEFAULT_MAX_EPOCHS = 10  # ASHA's max_t when neither the YAML nor the command line set scheduler.max_epochs


def asha_rungs(max_t: int, grace: int, rf: float) -> list[int]:
    """The epochs at which ASHA compares trials (``grace * rf**k`` below ``max_t``), then ``max_t``."""
    rungs, k = [], 0
    while grace * rf**k < max_t:
        rungs.append(int(grace * rf**k))
        k += 1
    return rungs + [max_t]


def asha_epochs(max_t: int, grace: int, rf: float) -> float:
    """Expected epochs per trial under ASHA: all reach the first rung, 1/rf of them the next, ..."""
    rungs = asha_rungs(max_t, grace, rf)
    return rungs[0] + sum((b - a) / rf ** (i + 1) for i, (a, b) in enumerate(zip(rungs, rungs[1:])))


def expected_epochs(settings: SweepSettings) -> float:
    """Epochs the search is expected to train in all (ASHA stops most trials early)."""
    sch = settings.scheduler
    return settings.num_samples * asha_epochs(sch.max_epochs, sch.grace_period, sch.reduction_factor)


def waves(members: int, concurrent: int) -> int:
    """Rounds the retrain of ``members`` models takes with ``concurrent`` trials at once."""
    return math.ceil(members / max(1, min(concurrent, members)))


@dataclass(frozen=True)
class Counts:
    """Images per split, which the epoch lengths follow from."""

    train: int
    val: int
    test: int = 0
    duplicates: int = 0  # train images that dedupe: cross_split leaves out (counted for such a config only)


def count_images(train: TrainConfig) -> Counts:
    """Images in train, val and (when there is one) test of the config's data (``fer_core.datasets``; train
    counted with each dataset's sampling weight, as the Trainer serves it), and the train images
    ``dedupe: cross_split`` leaves out (found as the Trainer finds them, at its size and colour mode)."""
    d = resolve(train)
    weight = {s.name: s.weight for s in d.sources}
    images = sum(round(len(f.paths) * weight[name]) for name, f in d.files["train"].items())
    return Counts(images, d.count("val"), d.count("test"), len(dedupe_dropped(train)))


def epoch_images(cfg: dict, counts: Counts) -> tuple[int, int]:
    """(train images, val images) an epoch of this TrainConfig mapping covers, as ``Trainer`` sizes it: its
    pool (less the duplicates dedupe drops), the subset, ``fer_core.dataset.epoch_steps``."""
    pool = counts.train - (counts.duplicates if cfg.get("dedupe") == "cross_split" else 0)
    n = min(cfg.get("max_train_samples") or pool, pool)
    batch = int(cfg["batch_size"])
    steps = max(1, epoch_steps(n, batch, cfg.get("steps_per_epoch") or 0))  # a Trainer refuses 0 steps
    val = min(cfg.get("max_val_samples") or counts.val, counts.val)
    return steps * batch, val * (2 if cfg.get("tta_flip") else 1)  # flip TTA runs the model twice


@dataclass(frozen=True)
class Rates:
    """What the probe measured on one trial's resources (the slowest of the probes run at once)."""

    train_images_per_s: float
    eval_images_per_s: float  # a validation pass, plain (no TTA)
    retrain_images_per_s: float  # the retrain's config, when it trains at another speed (EMA, model, ...)
    start_s: float  # submit -> first step: Ray worker, imports, data and model (Trainer build)
    checkpoint_s: float  # writing an epoch's checkpoint (Tune then copies it to storage: counted twice)
    params: dict  # the point of the search space probed
    seconds: float  # the probe's wall time
    runtime: str = ""


@dataclass(frozen=True)
class Estimate:
    """Seconds each part is expected to take, from the probe."""

    trial_epoch_s: float
    retrain_epoch_s: float
    report_s: float
    start_s: float
    counts: Counts  # images per split, counted once for the probe and reused by every later estimate
    retrain_speed: float = 1.0  # a retrain step's speed over a trial step's (the probe's two rates)


def estimate(
    settings: SweepSettings, *, rates: Rates, counts: Counts, base: dict, retrain_base: dict
) -> Estimate:
    """Epoch, report and start-up times from the probe's rates, for a trial's and a retrain's TrainConfig."""

    def epoch_s(cfg: dict, train_ips: float) -> float:
        train, val = epoch_images({**cfg, **rates.params}, counts)
        return train / train_ips + val / rates.eval_images_per_s + 2 * rates.checkpoint_s

    # The report scores each retrained model on val and test, plain and flipped; int8: FP32 and INT8 once more.
    report_images = (max(1, settings.ensemble_top_k) + settings.int8) * 2 * (counts.val + counts.test)
    shipping = REPORT_SHIP_S + (REPORT_INT8_S if settings.int8 else 0.0)
    return Estimate(
        trial_epoch_s=epoch_s(base, rates.train_images_per_s),
        retrain_epoch_s=epoch_s(retrain_base, rates.retrain_images_per_s),
        report_s=report_images / rates.eval_images_per_s + REPORT_PLOTS_S + shipping,
        start_s=rates.start_s,
        counts=counts,
        retrain_speed=rates.retrain_images_per_s / rates.train_images_per_s,
    )


def trial_s(est: Estimate, scheduler: Scheduler, max_t: int | None = None) -> float:
    """A trial's expected seconds: its start and ASHA's expected epochs at ``max_t`` (or the scheduler's)."""
    epochs = asha_epochs(max_t or scheduler.max_epochs, scheduler.grace_period, scheduler.reduction_factor)
    return est.start_s + epochs * est.trial_epoch_s


@dataclass(frozen=True)
class TimeBudget:
    """What a time budget decided, and why (``lines``)."""

    budget_s: float
    margin_s: float
    elapsed_s: float  # before the sweep: start-up, audit, Ray, probe
    num_samples: int
    max_epochs: int
    sweep_s: float  # Tune's time_budget_s for the search
    retrain_epochs: int
    retrain_s: float
    est: Estimate  # the probe's estimates the budget was split by
    retrain_cap: int = MAX_RETRAIN_EPOCHS
    notes: tuple[str, ...] = ()

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
            f"  report: ~{fmt_duration(e.report_s)}",
            *[f"  {n}" for n in self.notes],
        ]

    def to_dict(self) -> dict:
        """For the report's ``metrics.json``."""
        out = {"budget_s": self.budget_s, "margin_s": self.margin_s, "start_s": self.elapsed_s}
        out |= {"num_samples": self.num_samples, "max_epochs": self.max_epochs, "sweep_s": self.sweep_s}
        out |= {"retrain_epochs_planned": self.retrain_epochs, "retrain_s": self.retrain_s}
        out |= {"report_s": self.est.report_s, "trial_epoch_s": self.est.trial_epoch_s}
        out |= {"retrain_epoch_s": self.est.retrain_epoch_s, "trial_start_s": self.est.start_s}
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}

    def to_record(self) -> dict:
        """Every field, JSON-plain, for the experiment's record (``from_record`` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, doc: dict) -> TimeBudget:
        est = doc["est"]
        est = Estimate(**{**est, "counts": Counts(**est["counts"])})
        return cls(**{**doc, "est": est, "notes": tuple(doc.get("notes", ()))})


def budget_verdict(budget: TimeBudget | None, total_s: float) -> str:
    """`` (time budget 6m00s: 1m35s to spare)`` for the summary's time line; empty without a planned budget."""
    if budget is None:
        return ""
    spare = budget.budget_s - total_s
    verdict = f"{fmt_duration(spare)} to spare" if spare >= 0 else f"over by {fmt_duration(-spare)}"
    return f" (time budget {fmt_duration(budget.budget_s)}: {verdict})"


@dataclass(frozen=True)
class Caps:
    """Upper bounds the YAML or command line set explicitly; a budget plans below them."""

    num_samples: int = MAX_TRIALS
    max_epochs: int = DEFAULT_MAX_EPOCHS
    retrain_epochs: int = MAX_RETRAIN_EPOCHS

    @classmethod
    def from_settings(cls, settings: SweepSettings) -> Caps:
        given, sch = settings.given, settings.scheduler
        max_epochs = max(DEFAULT_MAX_EPOCHS, sch.grace_period)
        return cls(
            num_samples=settings.num_samples if "num_samples" in given else MAX_TRIALS,
            max_epochs=sch.max_epochs if "scheduler.max_epochs" in given else max_epochs,
            retrain_epochs=settings.retrain_epochs if "retrain_epochs" in given else MAX_RETRAIN_EPOCHS,
        )


def margin_for(budget_s: float) -> float:
    return max(MARGIN_SHARE * budget_s, MARGIN_MIN_S)


def split_budget(
    settings: SweepSettings, *, budget_s: float, elapsed_s: float, est: Estimate, concurrent: int, source: str
) -> TimeBudget:
    """Size the search and the retrain to fit ``budget_s`` seconds, ``elapsed_s`` of them spent already; a
    FerError naming ``source`` and the smallest budget that fits when not one trial and retrain epoch fit."""
    margin, caps = margin_for(budget_s), Caps.from_settings(settings)
    fixed = elapsed_s + margin + est.report_s + 2 * est.start_s  # + the sweep's and the retrain's start
    left = budget_s - fixed
    sch = settings.scheduler
    one_trial = trial_s(est, sch, sch.grace_period)
    retrain_epoch = waves(max(1, settings.ensemble_top_k), concurrent) * est.retrain_epoch_s
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
    # Round, not floor (a long retrain epoch would hand most of one epoch to the search), below ``fit``.
    fit = int((left - one_trial) // retrain_epoch)
    retrain_epochs = int(min(caps.retrain_epochs, fit, max(1, round(RETRAIN_SHARE * left / retrain_epoch))))
    sweep_s = left - retrain_epochs * retrain_epoch
    slots = max(1, concurrent)

    def trials(max_t: int) -> int:
        return int(sweep_s * slots // trial_s(est, sch, max_t))

    max_t = max(caps.max_epochs, sch.grace_period)
    while max_t > sch.grace_period and trials(max_t) < max(4, 2 * slots):
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
    return TimeBudget(
        budget_s=budget_s,
        margin_s=margin,
        elapsed_s=elapsed_s,
        num_samples=n,
        max_epochs=max_t,
        sweep_s=sweep_s,
        retrain_epochs=retrain_epochs,
        retrain_s=retrain_epochs * retrain_epoch,
        est=est,
        retrain_cap=caps.retrain_epochs,
        notes=tuple(notes),
    )


def measured_retrain_epoch_s(
    last: dict, params: dict, counts: Counts, base: dict, retrain_base: dict, speed: float = 1.0
) -> float | None:
    """Seconds a retrain epoch of the winner takes, from its trial's last result (``last``, at ``params``;
    ``speed``: a retrain step's over a trial step's); None when the trial reported no timing."""
    iters, total = last.get("training_iteration"), last.get("time_total_s")
    ips, train_s = last.get("images_per_s"), last.get("epoch_seconds")
    if not (iters and total and ips and train_s):
        return None
    _, trial_val = epoch_images({**base, **params}, counts)
    retrain_train, retrain_val = epoch_images({**retrain_base, **params}, counts)
    rest = max(0.0, total / iters - train_s)
    return retrain_train / (ips * speed) + rest * retrain_val / max(1, trial_val)


def measured_start_s(inside_s: list[float], wall_s: float, slots: int) -> float | None:
    """A trial's start as the search measured it: per trial, the slot-time (``wall_s``, ``slots`` at once)
    not in training (``inside_s``, their ``time_total_s``); None without trials."""
    if not inside_s:
        return None
    return max(0.0, (wall_s * max(1, slots) - sum(inside_s)) / len(inside_s))


def size_retrain(
    budget: TimeBudget, *, left_s: float, epoch_s: float, start_s: float, members: int, concurrent: int
) -> tuple[int, float]:
    """(epochs, seconds) for a retrain of ``members`` models, ``concurrent`` at once, in ``left_s`` to the
    deadline less the report and the margin: at least 1 epoch, at most the budget's cap."""
    left = left_s - budget.margin_s - budget.est.report_s - start_s
    return int(min(budget.retrain_cap, max(1, left // (waves(members, concurrent) * epoch_s)))), left
