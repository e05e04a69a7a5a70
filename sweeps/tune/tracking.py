"""Experiment tracking in MLflow (``tracking: mlflow``), through Ray Tune's own ``MLflowLoggerCallback``.

Each trial (sweep and retrain, tagged ``fer_sweep.phase``) is an MLflow run in the experiment named like the
sweep, with its parameters and per-epoch metrics; the winner's retrain run gets the report folder as artifacts
and the winning sweep trial's run the tag ``fer_sweep.winner``. Nothing leaves the machine without a
``--tracking-uri`` (telemetry is off unless the environment turns it on): a folder (default ``./mlruns``)
holds a SQLite store, ``mlflow.db``, as MLflow 3 refuses its old file store; no server is needed, ``mlflow ui
--backend-store-uri sqlite:///mlruns/mlflow.db`` shows it.
"""

from __future__ import annotations

import os
from pathlib import Path

from fer_core.errors import FerError
from sweeps.state.storage import sqlite_url

PHASE_TAG, WINNER_TAG = "fer_sweep.phase", "fer_sweep.winner"
# The check's HTTP bounds (unless the environment sets its own), read by MLflow at each request: a server
# that is down or never answers is one line within ~12 s, not after MLflow's 7 retries with backoff (~4 min).
# Timeout: seconds to connect, and between bytes of the answer; one retry, which waits no backoff.
CHECK_HTTP = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}


def _folder(settings) -> Path | None:
    """The local tracking folder, or None when ``tracking_uri`` is a URI (a server, a database)."""
    uri = settings.tracking_uri or "mlruns"
    return None if ":" in uri.split("/")[0] else Path(uri).expanduser().resolve()


def tracking_uri(settings) -> str:
    """The MLflow tracking URI: ``tracking_uri`` if a URI, else the SQLite store in the folder it names."""
    folder = _folder(settings)
    return sqlite_url(folder / "mlflow.db") if folder else settings.tracking_uri


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow  # the optional [tracking] extra
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
    mlflow = _mlflow()
    bounds = {k: v for k, v in CHECK_HTTP.items() if k not in os.environ}
    os.environ.update(bounds)
    try:
        folder = _folder(settings)
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri(settings))
        if client.get_experiment_by_name(settings.name) is None:
            # Artifacts in the tracking folder: MLflow would put them in ./mlartifacts of the driver's folder.
            artifacts = (folder / "artifacts").as_uri() if folder else None
            client.create_experiment(settings.name, artifact_location=artifacts)
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds (database, HTTP, permissions)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise FerError(
            f"tracking_uri {tracking_uri(settings)}: MLflow cannot open it ({first}); give a reachable "
            "--tracking-uri or leave it empty for the local ./mlruns folder"
        ) from None
    finally:
        for key in bounds:  # the sweep's own logging keeps MLflow's patient defaults
            os.environ.pop(key, None)


def tracking_callbacks(settings, phase: str) -> list:
    """Tune callbacks that log the trials of ``phase`` ("sweep" or "retrain"); none without tracking."""
    if settings.tracking != "mlflow":
        return []
    _mlflow()  # the experiment exists: check_tracking made it before Ray started
    from ray.air.integrations.mlflow import MLflowLoggerCallback  # imports mlflow: the [tracking] extra

    uri = tracking_uri(settings)
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=settings.name, tags={PHASE_TAG: phase})]


def _run_of(client, experiment_id: str, phase: str, trial_id: str):
    # The callback names each run after its trial (``fer_trainable_<trial_id>``) and tags it trial_name.
    in_phase = f"tags.`{PHASE_TAG}` = '{phase}'"
    runs = client.search_runs([experiment_id], filter_string=in_phase, max_results=1000)
    return next((r for r in runs if trial_id in r.data.tags.get("trial_name", "")), None)


def log_report(settings, report_dir: Path, winner: dict, retrain_trial_id: str) -> str | None:
    """Attach the report to the winner's retrain run (Tune trial ``retrain_trial_id``) and mark the winning
    sweep trial (``winner``: ``{"trial_id", "params", "best"}``); returns the retrain run's id (None without
    tracking, or when the callback made no such run)."""
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
