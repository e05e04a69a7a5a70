"""Experiment tracking in MLflow (``tracking: mlflow``), through Ray Tune's own ``MLflowLoggerCallback``.

Each sweep trial becomes an MLflow run in the experiment named like the sweep, with its searched parameters
and every epoch's metrics (step = epoch); the retrain's trials are runs too, tagged ``fer_sweep.phase:
retrain``. When the report is written, the winner's retrain run gets the winner's parameters and the whole
report folder as artifacts, and the winning sweep trial's run is tagged ``fer_sweep.winner``.

Nothing leaves the machine unless the user gives a ``--tracking-uri``: the default is a local ``./mlruns``
folder, and MLflow's usage telemetry is off unless the environment turns it on. A folder (the default, or
a ``--tracking-uri`` without a scheme) holds MLflow's SQLite store, ``mlflow.db``, and the artifacts beside
it: MLflow 3 refuses its old plain-file store by default, and SQLite is its own local default since. No
server is needed; ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` shows it.
"""

from __future__ import annotations

import os
from pathlib import Path

from fer_core.errors import FerError

PHASE_TAG, WINNER_TAG = "fer_sweep.phase", "fer_sweep.winner"


def _folder(settings) -> Path | None:
    """The local tracking folder, or None when ``tracking_uri`` is a URI (a server, a database)."""
    uri = settings.tracking_uri or "mlruns"
    return None if ":" in uri.split("/")[0] else Path(uri).expanduser().resolve()


def tracking_uri(settings) -> str:
    """The MLflow tracking URI: ``tracking_uri`` when it is a URI, else the SQLite store in the folder
    it names (default ``./mlruns``)."""
    folder = _folder(settings)
    return f"sqlite:///{folder}/mlflow.db" if folder else settings.tracking_uri


def _ensure_experiment(settings) -> None:
    """Create the MLflow experiment before Tune's callback looks it up, with its artifacts in the tracking
    folder (MLflow would put them in ``./mlartifacts`` of whatever folder the driver runs in)."""
    mlflow = _mlflow()
    folder = _folder(settings)
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(settings))
    if client.get_experiment_by_name(settings.name) is None:
        client.create_experiment(
            settings.name, artifact_location=(folder / "artifacts").as_uri() if folder else None
        )


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
    except ImportError:
        raise FerError(
            "tracking: mlflow needs the MLflow client: pip install -e '.[tracking]' (or pip install "
            "mlflow-skinny sqlalchemy alembic), or set tracking: none"
        ) from None
    return mlflow


def check_tracking(settings) -> None:
    """Before anything runs: with MLflow tracking, import the client and open (or create) the experiment
    in the store, so a missing client or an unusable ``tracking_uri`` is one line, not a trace mid-sweep."""
    if settings.tracking != "mlflow":
        return
    _mlflow()
    try:
        _ensure_experiment(settings)
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds (database, HTTP, permissions)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise FerError(
            f"tracking_uri {tracking_uri(settings)}: MLflow cannot open it ({first}); give a reachable "
            "--tracking-uri or leave it empty for the local ./mlruns folder"
        ) from None


def tracking_callbacks(settings, phase: str) -> list:
    """Tune callbacks that log the trials of ``phase`` ("sweep" or "retrain"); none without tracking."""
    if settings.tracking != "mlflow":
        return []
    _mlflow()  # the experiment exists: check_tracking made it before Ray started
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [
        MLflowLoggerCallback(
            tracking_uri=tracking_uri(settings),
            experiment_name=settings.name,
            tags={PHASE_TAG: phase},
        )
    ]


def _run_of(client, experiment_id: str, phase: str, trial_id: str):
    # The callback names each run after its trial (``fer_trainable_<trial_id>``) and tags it trial_name.
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PHASE_TAG}` = '{phase}'", max_results=1000
    )
    return next((r for r in runs if trial_id in r.data.tags.get("trial_name", "")), None)


def log_report(settings, report_dir: Path, winner: dict, retrain_trial_id: str) -> str | None:
    """Attach the report to the winner's retrain run and mark the winning sweep trial; returns the
    retrain run's id (None without tracking, or when the callback made no such run).

    Args:
        settings: sweep settings.
        report_dir: the report folder.
        winner: the winning trial (``{"trial_id", "params", "best"}``).
        retrain_trial_id: the Tune trial id of the winner's retrain.
    """
    if settings.tracking != "mlflow":
        return None
    mlflow = _mlflow()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(settings))
    experiment = client.get_experiment_by_name(settings.name)
    if experiment is None:
        return None
    sweep_run = _run_of(client, experiment.experiment_id, "sweep", winner["trial_id"])
    if sweep_run is not None:
        client.set_tag(sweep_run.info.run_id, WINNER_TAG, "true")
    run = _run_of(client, experiment.experiment_id, "retrain", retrain_trial_id)
    if run is None:
        return None
    for key, value in winner["params"].items():
        client.log_param(run.info.run_id, key, value)
    client.set_tag(run.info.run_id, "fer_sweep.winner_trial", winner["trial_id"])
    client.log_artifacts(run.info.run_id, str(report_dir), artifact_path="report")
    return run.info.run_id
