"""The sweep's two Tune runs, the search (Optuna's TPE + ASHA) and the retrain of the winner (and the
ensemble's next best), both resumable and signed for ``--resume``; and the time limit that stops either."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import optuna
import pyarrow.fs as pafs
from ray import cloudpickle, tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from sweeps.config.settings import SweepSettings
from sweeps.config.space import to_optuna
from sweeps.state.signing import SignStateCallback, experiment_id, sign_files, verify_experiment, write_signed
from sweeps.state.storage import experiment_uri, open_storage, refuse_full_storage, storage_uri
from sweeps.tune.trainable import fer_trainable, trial_config


class Deadline(Stopper):
    """Stops a Tune run ``seconds`` after it starts, but never before some trial has reported an epoch:
    each trial at its next epoch (``whole_run``: the run at once). A copy restored by --resume never binds.
    """

    def __init__(self, seconds: float, whole_run: bool = True):
        self.deadline, self.whole_run = time.time() + seconds, whole_run
        self.reported = False
        self.fired = False
        self.ended_before: set[str] = set()  # trials that ended before the deadline fired

    def __getstate__(self):
        return {**self.__dict__, "deadline": None, "ended_before": set()}

    def _past(self) -> bool:
        past = self.deadline is not None and self.reported and time.time() >= self.deadline
        self.fired |= past
        return past

    def __call__(self, trial_id, result) -> bool:
        self.reported = True
        return self._past()

    def stop_all(self) -> bool:
        return self.whole_run and self._past()

    def stopped(self, results) -> frozenset[str]:
        """The ids of the trials this deadline stopped (those still running when it fired)."""
        if not self.fired:
            return frozenset()
        ids = {(r.metrics or {}).get("trial_id") for r in results if not r.error}
        return frozenset(i for i in ids if i and i not in self.ended_before)


class _EndsBeforeDeadline(tune.Callback):
    """Tells the deadline which trials ended (finished, or stopped by ASHA) before it fired."""

    def __init__(self, deadline: Deadline):
        self.deadline = deadline

    def __getstate__(self):
        return {"deadline": None}

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.deadline is not None and not self.deadline.fired:
            self.deadline.ended_before.add(trial.trial_id)


def restorable(exp: str) -> bool:
    """Whether Tune can continue the run in ``exp``: its ``tuner.pkl`` and an experiment state (a run
    killed between the two has none, and is started anew)."""
    if not tune.Tuner.can_restore(exp):
        return False
    fs, root = open_storage(exp)
    found = fs.get_file_info(pafs.FileSelector(root))
    return any(f.base_name.startswith("experiment_state-") for f in found)


def match_searcher_to_trials(exp: str) -> list[str]:
    """Before the search is restored: make the saved searcher agree with the saved trials; returns the
    trial ids it no longer counts as running.

    Tune uploads the experiment's state file by file, so a driver killed between two of them (or a storage
    outage between them) leaves the trial list newer or older than the searcher's state. The searcher's
    concurrency limit (``max_concurrent_trials``) would then count a trial that has ended, or that the trial
    list never got, as running forever: it suggests nothing more, the search never finishes, and the
    restored run waits for a trial that will not come. Only the trials the trial list has not ended are
    running, and the searcher has made as many trials as the list holds."""
    fs, root = open_storage(exp)
    names = sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(root)))
    states = [n for n in names if n.startswith("experiment_state-") and n.endswith(".json")]
    searches = [n for n in names if n.startswith("search_gen_state-")]
    if not states or not searches:  # Tune restores the newest of each (by name, as here)
        return []
    with fs.open_input_stream(f"{root}/{states[-1]}") as f:
        trials = [
            json.loads(t) if isinstance(t, str) else t for t, _ in json.loads(f.readall())["trial_data"]
        ]
    with fs.open_input_stream(f"{root}/{searches[-1]}") as f:
        search = cloudpickle.loads(f.readall())  # signed: verify_experiment checked it
    running = {t["trial_id"] for t in trials if t["status"] not in ("TERMINATED", "ERROR")}
    limiter = search.get("name:ConcurrencyLimiter") or {"live_trials": set()}
    gone = sorted(set(limiter["live_trials"]) - running)
    if not gone and search["counter"] == len(trials):
        return []
    if "name:ConcurrencyLimiter" in search:
        limiter["live_trials"] = set(limiter["live_trials"]) & running
        limiter["num_unfinished_live_trials"] = len(limiter["live_trials"])
    search["counter"] = len(trials)
    write_signed(exp, searches[-1], cloudpickle.dumps(search))
    return gone


def _trainable(base: dict, resources: dict, members: list[dict] | None = None, measured: dict | None = None):
    trainable = tune.with_parameters(fer_trainable, base=base, members=members, measured=measured)
    return tune.with_resources(trainable, resources)


class _NoRestoreHint(logging.Filter):
    """Drop Tune's "resume with Tuner.restore(...)" hint: the driver prints its own command instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoRestoreHint())


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _fit(tuner, exp: str, resumed: bool):
    """``tuner.fit()``, after signing the ``tuner.pkl`` a fresh Tuner has just written (a restored one was
    verified before Ray started); Tune's own state is signed as it is saved (``SignStateCallback``).

    Raises KeyboardInterrupt once the run is stopped by Ctrl-C: Tune's handler of the first Ctrl-C saves
    the experiment's state, ends the run and hands SIGINT back to the handler it found (a second Ctrl-C
    then stops at once), so finding ours back in place says the run was interrupted.
    """
    if not resumed:
        sign_files(exp, ["tuner.pkl"])
    signal.signal(signal.SIGINT, _interrupt)
    try:
        results = tuner.fit()
    except Exception:
        refuse_full_storage(exp)  # a full disk surfaces as whatever Ray failed to read back
        raise
    finally:
        interrupted = signal.getsignal(signal.SIGINT) is _interrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        raise KeyboardInterrupt
    return results


def _failed_for_space(exp: str) -> bool:
    """Whether a trial of the local experiment ``exp`` failed for a full disk (its pickled error says so, read
    as bytes): a resume then retries the failed trials, which an uninterrupted run with room would have run."""
    if "://" in exp:
        return False
    failed = any(b"No space left on device" in p.read_bytes() for p in Path(exp).glob("*/error.pkl"))
    if failed:
        print("[sweeps] retrying the failed trials: a full disk stopped some of them", flush=True)
    return failed


def run_search(
    settings: SweepSettings,
    data: str,
    placement,
    resume: bool,
    time_limit_s: float | None = None,
    callbacks: list | tuple = (),
    measured: dict | None = None,
):
    """Run (or, with ``resume``, restore and continue) the search, stopped ``time_limit_s`` after it starts
    when given; returns Ray's ResultGrid and the ids of the trials the time limit stopped. ``measured``: the
    measured objectives per architecture (``sweeps.plan.latency``), which each trial reports."""
    resources = placement.resources
    trainable = _trainable(trial_config(settings, data=data), resources, measured=measured)
    exp = experiment_uri(settings)
    print(
        f"[sweeps] {settings.num_samples} trials, up to {placement.concurrent} at once, each {resources['cpu']} "
        f"CPU + {resources['gpu']:g} GPU, at most {settings.scheduler.max_epochs} epochs; results in {exp}",
        flush=True,
    )
    deadline = Deadline(time_limit_s) if time_limit_s else None
    if resume:
        # Finished trials are kept as they are; unfinished ones continue from their last checkpoint.
        verify_experiment(exp)  # what Tuner.restore unpickles, checked now (the driver checked minutes ago)
        again = _failed_for_space(exp)
        if gone := match_searcher_to_trials(exp):
            print(
                f"[sweeps] the searcher's saved state still counted trial(s) {', '.join(gone)} as running, which "
                "the saved trial list has ended or never got (a driver stopped between Tune's uploads): released",
                flush=True,
            )
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=again)
        return _fit(tuner, exp, resumed=True), frozenset()
    # TPE's default 10 random start-up trials would leave a small sweep entirely random. With several
    # objectives TPE is Optuna's MOTPE: it models the front from the first trials on, where NSGA-II would
    # spend a population of 50 per generation, more trials than a CPU sweep has.
    startup = max(2, min(10, settings.num_samples // 3))
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=startup)
    # The searcher holds the space as Optuna distributions, so it takes metric and mode itself. Ray's
    # OptunaSearch gets every objective, in order (a list of one for a single one would change nothing).
    space = to_optuna(settings.search_space)
    points = list(settings.initial_points) or None
    metric, mode = settings.metric, settings.mode
    if len(settings.objectives) > 1:
        metric, mode = list(settings.objectives), list(settings.objectives.values())
    searcher = OptunaSearch(space=space, metric=metric, mode=mode, sampler=sampler, points_to_evaluate=points)
    # ASHA stops trials on the metric alone (Ray's schedulers take one), counting Tune's training_iteration
    # (its default time_attr): epochs. With a second objective this cuts a fast network that learns slower at
    # the first rung, before its accuracy could earn it a place on the front (sweeps/report/pareto.py).
    sch = settings.scheduler
    scheduler = ASHAScheduler(
        metric=settings.metric,
        mode=settings.mode,
        max_t=sch.max_epochs,
        grace_period=sch.grace_period,
        reduction_factor=sch.reduction_factor,
    )
    # Metric and mode go to the searcher and the scheduler, not to TuneConfig: there Tune's status would print
    # a "Current best trial" by its own rule (last epoch, first listed on a tie), which can name another trial
    # than the driver's winner (trials.ranked: best epoch; a tie goes by the parameters, then the trial id).
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=settings.num_samples,
            max_concurrent_trials=placement.concurrent,
        ),
        run_config=_run_config(settings, settings.name, storage_uri(settings.storage), deadline, callbacks),
    )
    results = _fit(tuner, exp, resumed=False)
    return results, deadline.stopped(results) if deadline else frozenset()


def _run_config(settings, name: str, storage: str, deadline: Deadline | None, callbacks) -> tune.RunConfig:
    # What --resume will unpickle is signed as Tune saves it.
    ends = [_EndsBeforeDeadline(deadline)] if deadline else []
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        stop=deadline,
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # only last.pt is needed to resume
        callbacks=[SignStateCallback(name, experiment_id(f"{storage}/{name}")), *ends, *callbacks],
        verbose=1,  # the trial status table and start/stop lines, not every epoch's full result
    )


def run_retrain(
    settings: SweepSettings,
    data: str,
    members: list[dict],
    placement,
    time_limit_s: float | None = None,
    callbacks: list | tuple = (),
) -> list:
    """Retrain the winning parameters (``members[0]``; for an ensemble, the next best too) anew, from the
    config's starting weights (not the trial's checkpoint), for ``retrain_epochs``, one trial per member;
    returns Ray's Results in the order of ``members``."""
    base = trial_config(settings, data=data, retrain=True)
    trainable = _trainable(base, placement.resources, members=[dict(m) for m in members])
    exp = f"{experiment_uri(settings)}/retrain"
    resumed = restorable(exp)
    if resumed:
        verify_experiment(exp)  # what Tuner.restore unpickles, checked at the moment it does
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        # Each member stops at an epoch's end, with its checkpoint: the report needs one.
        deadline = Deadline(time_limit_s, whole_run=False) if time_limit_s else None
        concurrent = min(placement.concurrent, len(members))
        tuner = tune.Tuner(
            trainable,
            param_space={"member": tune.grid_search(list(range(len(members))))},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrent),
            run_config=_run_config(settings, "retrain", experiment_uri(settings), deadline, callbacks),
        )
    return sorted(_fit(tuner, exp, resumed), key=lambda r: int(r.config["member"]))
