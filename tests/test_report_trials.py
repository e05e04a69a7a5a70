"""The trials table from a sweep's results: how each trial ended, the ranking, the counts and trials.csv.

The results are real Ray ``Result`` objects; the grid around them gives what ``collect_trials`` reads of
Ray's ResultGrid (iteration and ``get_dataframe``) without starting Ray.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from ray.tune import Result

from sweeps.config.settings import Scheduler, SweepSettings
from sweeps.config.space import parse_space
from sweeps.report.trials import collect_trials, status_counts, top_trials, write_csv

SPACE = parse_space({"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "test")
SETTINGS = SweepSettings(
    metric="val_accuracy", mode="max", search_space=SPACE, scheduler=Scheduler(max_epochs=3)
)


class Grid(list):
    """Results, and ``get_dataframe`` as Ray's ResultGrid gives it: each reported trial's last row."""

    def get_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame([r.metrics_dataframe.iloc[-1] for r in self if r.metrics_dataframe is not None])


def _result(tmp_path, tid, curve, lr, error=None, reported=True):
    folder = tmp_path / f"fer_trainable_{tid}_lr={lr}"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"lr": lr}))
    df = pd.DataFrame(
        [
            {"trial_id": tid, "training_iteration": i, "val_accuracy": v, "device": "cpu", "ray_gpus": 0}
            for i, v in enumerate(curve, start=1)
        ]
    )
    metrics = {**df.iloc[-1].to_dict(), "config": {"lr": lr}} if curve else {"trial_id": tid}
    if not reported:  # a trial that ended before Ray knew its id in a result: named by its folder
        metrics = {}
    return Result(
        metrics=metrics,
        checkpoint=None,
        error=error,
        path=str(folder),
        metrics_dataframe=df if curve else None,
    )


@pytest.fixture
def table(tmp_path):
    try:
        try:
            raise ValueError("CUDA out of memory\nwhile allocating")
        except ValueError as cause:
            raise RuntimeError("trial failed") from cause
    except RuntimeError as e:
        error = e
    grid = Grid(
        [
            _result(tmp_path, "done", [0.3, 0.4, 0.5], 1e-3),
            _result(tmp_path, "asha", [0.2], 2e-3),
            _result(tmp_path, "late", [0.3, 0.45], 3e-3),
            _result(tmp_path, "never", [], 4e-3),  # the time limit stopped it before its first epoch
            _result(tmp_path, "ontime", [0.1, 0.2, 0.6], 5e-3),  # all its epochs ran before the time limit
            _result(tmp_path, "bad", [0.55], 6e-3, error=error),
        ]
    )
    return collect_trials(grid, SETTINGS, stopped_by_time=frozenset({"late", "never", "ontime"}))


def test_each_trial_ends_one_of_four_ways(table):
    by_id = table.set_index("trial_id")
    assert by_id["status"].to_dict() == {
        "done": "completed",
        "asha": "stopped_asha",
        "late": "stopped_time",
        "never": "stopped_time",
        "ontime": "completed",
        "bad": "failed",
    }
    assert by_id.loc["never", "epochs"] == 0 and by_id.loc["never", "params"] == {"lr": 4e-3}
    assert by_id.loc["bad", "error"] == "RuntimeError: while allocating" and by_id.loc["done", "error"] == ""
    assert by_id.loc["late", "best_val_accuracy"] == 0.45 and by_id.loc["ontime", "last_val_accuracy"] == 0.6
    assert by_id.loc["late", "intermediate"] == {1: 0.3, 2: 0.45}
    assert status_counts(table) == {
        "total": 6,
        "completed": 2,
        "stopped_asha": 1,
        "stopped_time": 2,
        "failed": 1,
    }


def test_without_a_time_limit_every_short_trial_was_stopped_by_asha(tmp_path):
    grid = Grid([_result(tmp_path, "a", [0.2], 1e-3), _result(tmp_path, "b", [0.1, 0.2, 0.3], 2e-3)])
    assert list(collect_trials(grid, SETTINGS)["status"]) == ["stopped_asha", "completed"]


def test_a_trial_without_a_result_is_named_by_its_folder(tmp_path):
    grid = Grid([_result(tmp_path, "a", [0.2], 1e-3), _result(tmp_path, "z", [], 2e-3, reported=False)])
    assert list(collect_trials(grid, SETTINGS)["trial_id"]) == ["a", "fer_trainable_z_lr=0.002"]


def test_the_failed_trial_is_never_a_member_and_the_csv_has_one_status_column(table, tmp_path):
    # "bad" reported the best value before it failed.
    assert [t["trial_id"] for t in top_trials(table, SETTINGS, 3)] == ["ontime", "done", "late"]
    write_csv(table, SETTINGS, tmp_path / "trials.csv")
    csv = pd.read_csv(tmp_path / "trials.csv", keep_default_na=False)
    assert list(csv.columns) == [
        "trial_id",
        "status",
        "epochs",
        "best_val_accuracy",
        "last_val_accuracy",
        "lr",
        "device",
        "ray_gpus",
        "error",
    ]
    assert list(csv["trial_id"]) == ["ontime", "done", "late", "asha", "bad", "never"]
    assert list(csv["status"]) == [
        "completed",
        "completed",
        "stopped_time",
        "stopped_asha",
        "failed",
        "stopped_time",
    ]


def test_tied_trials_rank_the_same_whatever_order_or_ids_ray_gives_them(tmp_path):
    """A killed driver's resume listed two tied trials the other way round and retrained the other one; and a
    sweep run again names its trials anew at random: ties go by the parameters, so the winner is the same."""

    def picks(ids: tuple[str, str, str]) -> set:
        run = tmp_path / "-".join(ids)
        run.mkdir()
        a = _result(run, ids[0], [0.2, 0.5], 1e-3)
        b = _result(run, ids[1], [0.5, 0.4], 2e-3)
        c = _result(run, ids[2], [0.3, 0.4], 3e-3)
        orders = [[a, b, c], [c, b, a], [b, c, a], [a, c, b]]
        return {
            tuple(t["params"]["lr"] for t in top_trials(collect_trials(Grid(o), SETTINGS), SETTINGS, 3))
            for o in orders
        }

    assert picks(("b7", "a3", "c1")) == picks(("a3", "b7", "c1")) == {(1e-3, 2e-3, 3e-3)}


def test_the_table_and_the_plots_give_a_trial_the_same_best_value(tmp_path):
    """Before: the table took Ray's best row (an infinite value included) and the plots the best finite
    epoch, so one trial had two best values."""
    from sweeps.config.space import to_optuna
    from sweeps.report.plots import build_study

    grid = Grid(
        [_result(tmp_path, "inf", [0.3, float("inf"), 0.4], 1e-3), _result(tmp_path, "ok", [0.2], 2e-3)]
    )
    table = collect_trials(grid, SETTINGS)
    study, _ = build_study(table, to_optuna(SPACE), "max")
    plotted = {t.user_attrs["trial_id"]: t.value for t in study.trials}
    assert table.set_index("trial_id")["best_val_accuracy"].to_dict() == plotted == {"inf": 0.4, "ok": 0.2}


def test_a_trial_stopped_before_it_had_parameters_leaves_int_parameters_ints(tmp_path):
    """A time limit can end a trial before Tune gave it a config: its parameters are missing, and the
    others' integer parameters still print as integers in trials.csv and report.md."""
    from sweeps.report.markdown import _trial_table

    space = parse_space(
        {
            "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "batch_size": {"type": "choice", "values": [32, 64]},
        },
        "test",
    )
    settings = SweepSettings(
        metric="val_accuracy", mode="max", search_space=space, scheduler=Scheduler(max_epochs=3)
    )
    ran = _result(tmp_path, "ran", [0.3, 0.4, 0.5], 1e-3)
    ran.metrics["config"]["batch_size"] = 64
    never = _result(tmp_path, "never", [], 2e-3)
    (tmp_path / "fer_trainable_never_lr=0.002" / "params.json").unlink()  # Tune wrote no parameters
    trials = collect_trials(Grid([ran, never]), settings, stopped_by_time=frozenset({"never"}))
    write_csv(trials, settings, tmp_path / "trials.csv")
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, r.split(","))) for r in rows[1:]]
    assert [(v["batch_size"], v["lr"]) for v in values] == [("64", "0.001"), ("nan", "nan")]
    table = _trial_table(trials, settings, limit=10)
    assert table[2:] == [
        "| ran | completed | 3 | 0.5000 | 0.001 | 64 |",
        "| never | stopped by the time limit | 0 | nan | nan | nan |",
    ], table
