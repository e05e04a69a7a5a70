"""The sweep's two Tune runs: the search (Optuna's TPE + ASHA over the trainable) and the retrain of the
winner (and the ensemble's next best), both resumable and both signed for ``--resume`` (sweeps/manifest.py).
"""

from __future__ import annotations

from fer_core.config import config_to_dict

from .paths import experiment_uri, storage_uri
from .placement import cluster_nodes, make_plan
from .settings import SweepSettings


def base_train_config(
    settings: SweepSettings, data: str, resources: dict, epochs: int, retrain: bool = False
) -> dict:
    """The fixed part of every trial's TrainConfig (with the ``retrain:`` overrides for the retrain)."""
    base = config_to_dict(settings.train)
    if retrain:
        base.update(settings.retrain)
    # The driver audited the data once (run_audit); every trial repeating it would only cost time.
    base.update(data=data, epochs=epochs, threads=int(resources["cpu"]), audit=False)
    return base


def fit_signed(tuner, exp: str, resumed: bool):
    """``tuner.fit()``, after signing the ``tuner.pkl`` a fresh Tuner has just written (a restored one
    was verified before Ray started); Tune's own state is signed as it is saved (``SignStateCallback``)."""
    from sweeps.manifest import sign_files

    if not resumed:
        sign_files(exp, ["tuner.pkl"])
    return tuner.fit()


def deadline(seconds: float | None, whole_run: bool = True):
    """A stopper for a time limit (None without one); see ``sweeps.progress.Deadline``."""
    from sweeps.progress import Deadline

    return Deadline(seconds, whole_run) if seconds else None


def make_trainable(base: dict, resources: dict, members: list[dict] | None = None):
    from ray import tune

    from sweeps.trainable import fer_trainable

    return tune.with_resources(tune.with_parameters(fer_trainable, base=base, members=members), resources)


def run_sweep(
    settings: SweepSettings,
    data: str,
    resume: bool,
    plan=None,
    time_budget_s: float | None = None,
    callbacks: list | None = None,
):
    """Run (or resume) the search; returns Ray's ResultGrid.

    Args:
        settings: the sweep settings.
        data: dataset root.
        resume: continue the experiment in storage.
        plan: the per-node plan (``make_plan``); None: planned from the nodes that are up.
        time_budget_s: the search stops after this many seconds (a time budget's share), if given, once
            some trial has reported an epoch (``sweeps.progress.Deadline``).
        callbacks: further Tune callbacks (progress, tracking); a restored run keeps those it started with.
    """
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.manifest import SignStateCallback
    from sweeps.space import to_optuna

    plan = plan or make_plan(settings, cluster_nodes(None))
    resources, concurrent = plan.resources, plan.concurrent
    base = base_train_config(settings, data, resources, settings.scheduler.max_epochs)
    trainable = make_trainable(base, resources)
    exp = experiment_uri(settings)
    print(
        f"[sweeps] {settings.num_samples} trials, up to {concurrent} at once, each {resources['cpu']} CPU + "
        f"{resources['gpu']:g} GPU, at most {settings.scheduler.max_epochs} epochs; results in {exp}",
        flush=True,
    )
    if resume:
        # Finished trials are kept as they are; unfinished ones continue from their last checkpoint.
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        # TPE's default 10 random start-up trials would leave a small sweep entirely random.
        sampler = optuna.samplers.TPESampler(
            seed=settings.seed, n_startup_trials=max(2, min(10, settings.num_samples // 3))
        )
        # The space is handed to Optuna as its own distributions (sweeps/space.py), so Tune gets no param_space;
        # a searcher that holds its space takes metric and mode itself (Tune passes them on only with a param_space).
        searcher = OptunaSearch(
            space=to_optuna(settings.search_space),
            metric=settings.metric,
            mode=settings.mode,
            sampler=sampler,
            points_to_evaluate=settings.initial_points or None,
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=settings.scheduler.max_epochs,
            grace_period=settings.scheduler.grace_period,
            reduction_factor=settings.scheduler.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=settings.metric,
                mode=settings.mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=settings.num_samples,
                max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(
                name=settings.name,
                storage_path=storage_uri(settings.storage),
                stop=deadline(time_budget_s),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # only last.pt is needed to resume
                # what --resume will unpickle is signed as Tune saves it
                callbacks=[SignStateCallback(settings.name), *(callbacks or [])],
                verbose=1,  # the trial status table and start/stop lines, not every epoch's full result
            ),
        )
    return fit_signed(tuner, exp, resume)


def retrain(
    settings: SweepSettings,
    data: str,
    members: list[dict],
    plan=None,
    time_budget_s: float | None = None,
    callbacks: list | None = None,
) -> list:
    """Retrain the winning parameters (and, for an ensemble, the next best) from scratch for
    ``retrain_epochs``, as one Tune run with a trial per member.

    Running it through Tune (not in the driver) puts it on GPU workers on clusters whose head has none,
    runs ensemble members side by side where resources allow, persists their checkpoints to the same
    storage, and makes the retrain resumable with the sweep.

    Args:
        settings: the sweep settings.
        data: dataset root.
        members: parameter dicts, the winner's first.
        plan: the sweep's per-node plan (``make_plan``); None: planned from the nodes that are up.
        time_budget_s: past this many seconds each member stops at the end of its next epoch (a time
            budget's safety net).
        callbacks: further Tune callbacks (progress, tracking).

    Returns:
        Ray Results in the order of ``members``.
    """
    from ray import tune

    from sweeps.manifest import SignStateCallback

    plan = plan or make_plan(settings, cluster_nodes(None))
    resources, concurrent = plan.resources, plan.concurrent
    trainable = make_trainable(
        base_train_config(settings, data, resources, settings.retrain_epochs, retrain=True),
        resources,
        members=[dict(m) for m in members],
    )
    root = experiment_uri(settings)
    exp = f"{root}/retrain"
    resumed = tune.Tuner.can_restore(exp)
    if resumed:
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"member": tune.grid_search(list(range(len(members))))},
            tune_config=tune.TuneConfig(
                num_samples=1,
                max_concurrent_trials=min(concurrent, len(members)),
            ),
            run_config=tune.RunConfig(
                name="retrain",
                # Each member stops at an epoch's end, with its checkpoint: the report needs one.
                stop=deadline(time_budget_s, whole_run=False),
                storage_path=root,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=1,
                callbacks=[SignStateCallback("retrain"), *(callbacks or [])],
            ),
        )
    results = list(fit_signed(tuner, exp, resumed))
    return sorted(results, key=lambda r: int(r.config["member"]))
