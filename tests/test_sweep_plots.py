"""The sweep's study and plots from a hand-made trials table: real Optuna and matplotlib, no Ray."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
from optuna.trial import TrialState

from sweeps.config.settings import SweepSettings
from sweeps.config.space import parse_space, to_optuna
from sweeps.report import plots
from sweeps.report.trials import ranked, top_trials
from sweeps.state.storage import sqlite_url

SPACE = parse_space(
    {
        "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "aug_strength": {"type": "uniform", "low": 0.0, "high": 0.8},
        "batch_size": {"type": "choice", "values": [16, 32, 64]},
    },
    "test",
)


def _trial(tid, status, curve, lr, aug, bs):
    return {
        "trial_id": tid,
        "status": status,
        "epochs": len(curve),
        "params": {"lr": lr, "aug_strength": aug, "batch_size": bs},
        "intermediate": dict(enumerate(curve, start=1)),
        "best_val_accuracy": max(curve, default=float("nan")),
    }


def _table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows)


TRIALS = [
    _trial("a", "completed", [0.30, 0.42, 0.50], 3e-3, 0.2, 32),  # ran every epoch
    _trial("b", "stopped_asha", [0.20], 1e-4, 0.7, 16),  # stopped by ASHA after 1 epoch
    _trial("c", "stopped_time", [0.28, 0.35], 8e-3, 0.5, 64),  # stopped by the time limit after 2
    _trial("d", "failed", [0.25], 2e-3, 0.1, 32),  # failed after reporting an epoch
    _trial("e", "failed", [], 5e-4, 0.3, 64),  # failed before its first report
    _trial("f", "completed", [0.31, 0.40, 0.44], 1e-3, 0.0, 16),
    _trial("g", "completed", [0.26, 0.33, 0.47], 6e-3, 0.4, 64),
]


def _study(rows, space=None):
    return plots.build_study(_table(rows), space or to_optuna(SPACE), "max")


def test_study_rebuilt_with_states_values_and_intermediate_values():
    study, notes = _study(TRIALS)
    assert notes == []
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert [by_id[k].state for k in "abcdefg"] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    assert (
        by_id["a"].value == 0.50 and by_id["b"].value == 0.20 and by_id["c"].value == 0.35
    )  # the best epoch
    assert by_id["d"].value is None and by_id["e"].value is None
    assert by_id["a"].intermediate_values == {1: 0.30, 2: 0.42, 3: 0.50}
    assert by_id["d"].intermediate_values == {1: 0.25} and by_id["e"].intermediate_values == {}
    assert by_id["b"].params == {"lr": 1e-4, "aug_strength": 0.7, "batch_size": 16}
    assert by_id["b"].distributions["batch_size"].choices == (16, 32, 64)
    assert study.best_trial.user_attrs["trial_id"] == "a"
    assert {t.user_attrs["trial_id"]: t.user_attrs["status"] for t in study.trials} == {
        t["trial_id"]: t["status"] for t in TRIALS
    }


def test_a_trial_the_time_limit_stopped_before_its_first_epoch_is_pruned_without_a_value(tmp_path):
    study, _ = _study([*TRIALS, _trial("h", "stopped_time", [], 1e-3, 0.1, 16)])
    h = study.trials[-1]
    assert h.state == TrialState.PRUNED and h.value is None and h.user_attrs["status"] == "stopped_time"
    notes = plots.write_plots(study, "val_accuracy", tmp_path)
    assert not [n for n in notes if "not drawn" in n], notes


def test_history_draws_each_way_a_trial_ended_differently(tmp_path):
    ax = plots.plot_history(_study(TRIALS)[0], "val_accuracy", tmp_path / "history.png")
    styles = {
        ln.get_label(): ln.get_linestyle() for ln in ax.get_lines() if not ln.get_label().startswith("_")
    }
    assert styles == {
        "a": "-",
        "b (stopped early by ASHA)": "--",
        "c (stopped by the time limit)": ":",
        "f": "-",
        "g": "-",
        "d (failed)": "-",
    }
    assert {t.get_text() for t in ax.get_legend().get_texts()} == set(styles)
    assert ax.figure.get_suptitle().endswith(
        "7 trials (3 completed, 1 stopped early by ASHA, 1 stopped by the time limit, 2 failed)"
    )
    assert (tmp_path / "history.png").stat().st_size > 10_000


def test_every_plot_is_written(tmp_path):
    style = dict(matplotlib.rcParams)
    notes = plots.write_plots(_study(TRIALS)[0], "val_accuracy", tmp_path)
    assert not [n for n in notes if "not drawn" in n], notes
    for name in plots.FILES.values():
        assert (tmp_path / name).stat().st_size > 10_000, name
    assert dict(matplotlib.rcParams) == style  # Optuna's ggplot style stays inside its own figures


@pytest.mark.parametrize(
    "rows, space, skipped, because",
    [
        (TRIALS[:1], None, {"importance", "contour"}, "1 trial(s) reported val_accuracy"),
        (
            [TRIALS[3], TRIALS[4]],
            None,
            {"slice", "parallel", "importance", "contour"},
            "no trial reported val_accuracy",
        ),
        (
            [{**t, "params": {"lr": t["params"]["lr"]}} for t in TRIALS],
            {"lr": to_optuna(SPACE)["lr"]},
            {"contour"},
            "needs two numeric parameters, this sweep searches 1 (lr)",
        ),
        (
            [
                {**t, "params": {"lr": t["params"]["lr"], "batch_size": t["params"]["batch_size"]}}
                for t in TRIALS
            ],
            {k: to_optuna(SPACE)[k] for k in ("lr", "batch_size")},
            {"contour"},
            "searches 1 (lr) beside categorical batch_size",
        ),
        (
            [{**t, "intermediate": {1: 0.25}, "epochs": 3} for t in TRIALS],
            None,
            {"contour"},
            "every trial reached the same",
        ),
    ],
)
def test_degenerate_sweeps_skip_a_plot_with_a_note(tmp_path, rows, space, skipped, because):
    notes = plots.write_plots(_study(rows, space)[0], "val_accuracy", tmp_path)
    missing = {k for k, name in plots.FILES.items() if not (tmp_path / name).is_file()}
    assert missing == skipped
    assert len([n for n in notes if "not drawn" in n]) == len(skipped) and all(
        because in n for n in notes if "not drawn" in n
    )
    assert all("\n" not in n for n in notes)


def test_all_failed_before_reporting_skips_every_plot(tmp_path):
    notes = plots.write_plots(_study([TRIALS[4]])[0], "val_accuracy", tmp_path)
    assert len(notes) == len(plots.FILES) and not list(tmp_path.iterdir())


def test_a_value_outside_the_space_leaves_that_trial_out_with_a_note():
    study, notes = _study(
        [*TRIALS, _trial("x", "completed", [0.6, 0.6, 0.6], 0.5, 0.2, 32)]
    )  # lr above the range
    assert (
        len(study.trials) == len(TRIALS) and len(notes) == 1 and notes[0].startswith("trial `x` is left out")
    )


def test_ranking_and_ensemble_members_from_the_table():
    settings = SweepSettings(metric="val_accuracy", mode="max", search_space=SPACE)
    table = _table([*TRIALS, {**TRIALS[0], "trial_id": "a2", "best_val_accuracy": 0.45}])  # a's params again
    assert list(ranked(table, settings)["trial_id"]) == ["a", "g", "a2", "f", "c", "b", "d", "e"]
    assert [t["trial_id"] for t in top_trials(table, settings, 3)] == ["a", "g", "f"]
    assert top_trials(table, settings, 1)[0] == {"trial_id": "a", "best": 0.5, "params": TRIALS[0]["params"]}


@pytest.mark.parametrize("folder", ["a%2Fb", "a%20b c", "50%"])
def test_the_study_is_saved_and_loaded_where_a_percent_sign_is_in_its_path(tmp_path, folder):
    """Before: the SQLite address decoded %2F and %20 in the path, so the study went to another file or none
    (OperationalError: unable to open database file)."""
    import optuna

    path = tmp_path / folder / "optuna.db"
    path.parent.mkdir()
    study, _ = _study(TRIALS)
    plots.save_study(study, "s", "val_accuracy", path)
    assert path.is_file() and [p.name for p in tmp_path.rglob("*.db")] == ["optuna.db"]
    loaded = optuna.load_study(study_name="s", storage=sqlite_url(path))
    assert len(loaded.trials) == len(TRIALS)
