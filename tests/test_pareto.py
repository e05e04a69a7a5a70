"""The Pareto front and the pick rules on a hand-made points table; the multi-objective study saved and drawn
by real Optuna and matplotlib, no Ray."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from fer_core.errors import ConfigError, FerError
from sweeps.config.space import parse_space, to_optuna
from sweeps.report import pareto, plots
from sweeps.state.storage import sqlite_url

NAN = math.nan
SPACE = to_optuna(
    parse_space(
        {
            "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "aug_strength": {"type": "uniform", "low": 0.0, "high": 0.8},
        },
        "test",
    )
)
OBJ = {"val_accuracy": "max", "latency_ms": "min"}
OBJ3 = {"val_accuracy": "max", "latency_ms": "min", "val_macro_f1": "max"}
# Two architectures: a slow accurate one (a, b) and a fast one (c..f).
ROWS = [
    ("a", "completed", 0.600, 5.10, 0.55),
    ("b", "completed", 0.595, 4.00, 0.45),
    ("c", "completed", 0.550, 2.30, 0.52),
    ("d", "completed", 0.500, 1.20, 0.48),
    ("e", "completed", 0.450, 1.10, 0.40),
    ("f", "completed", 0.520, 2.50, 0.53),  # dominated by c on accuracy and latency, not on macro-F1
    ("g", "stopped_asha", 0.650, 1.00, 0.60),  # would dominate every trial, but stopped: not a candidate
    ("h", "stopped_time", 0.400, 3.00, 0.30),
    ("i", "failed", NAN, NAN, NAN),
    ("j", "completed", 0.580, NAN, 0.50),  # completed without a latency
]


def _points(rows=ROWS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["trial_id", "status", *OBJ3])


def _pick(text, objectives=OBJ):
    return pareto.choose(_points(), objectives, pareto.parse_pick(text, objectives, "--pick"))


def test_the_front_is_the_completed_non_dominated_trials_best_first():
    assert list(pareto.front(_points(), OBJ)["trial_id"]) == ["a", "b", "c", "d", "e"]
    assert list(pareto.front(_points(), OBJ3)["trial_id"]) == ["a", "b", "c", "f", "d", "e"]


@pytest.mark.parametrize(
    "rule, objectives, chosen",
    [
        ("best", OBJ, "a"),
        ("knee", OBJ, "c"),  # normalised: a (1, 0), b (.97, .28), c (.67, .70), d (.33, .98), e (0, 1)
        ("fastest within 1 point", OBJ, "b"),  # a and b reach 0.59
        ("fastest within 5 points", OBJ, "c"),  # 0.55 is within, though 0.60 - 0.05 is a hair below it
        ("latency_ms <= 4", OBJ, "b"),
        ("latency_ms < 4", OBJ, "c"),
        ("latency_ms <= 3 and val_accuracy >= 0.52", OBJ, "c"),
        ("latency_ms <= 4 and val_macro_f1 >= 0.5", OBJ3, "c"),
        ("val_macro_f1 >= 0.53", OBJ3, "a"),
    ],
)
def test_each_rule_chooses_its_trial(rule, objectives, chosen):
    choice = _pick(rule, objectives)
    assert choice.trial_id == chosen
    assert choice.reason.startswith(f"trial {chosen}: ") and "\n" not in choice.reason


def test_reasons_say_why_with_the_numbers():
    assert _pick("latency_ms <= 4").reason == (
        "trial b: the highest val_accuracy of the 5 completed trials with latency_ms <= 4 (val_accuracy 0.5950 "
        "at 4.00 ms; the best overall, a, has val_accuracy 0.6000 at 5.10 ms)."
    )
    assert _pick("best").reason == (
        "trial a: the highest val_accuracy of the 6 completed trials (val_accuracy 0.6000 at 5.10 ms)."
    )
    assert (
        "the fastest of the 2 (of 6 completed trials) within 1 point of the best val_accuracy (0.6000, trial a): val_accuracy 0.5950 at 4.00 ms"
        in (_pick("fastest within 1 point").reason)
    )
    assert "the knee of the Pareto front of the 6 completed trials (5 trials on it)" in _pick("knee").reason


def test_ties_go_by_the_next_objective_then_the_trial_id():
    rows = [
        ("x", "completed", 0.6, 3.0, 0.5),
        ("y", "completed", 0.6, 2.0, 0.5),
        ("z", "completed", 0.5, 1.0, 0.5),
    ]
    assert list(pareto.front(_points(rows), OBJ)["trial_id"]) == ["y", "z"]  # x: as accurate, slower
    assert pareto.choose(_points(rows), OBJ, pareto.parse_pick("best", OBJ, "--pick")).trial_id == "y"
    same = [
        ("q", "completed", 0.6, 2.0, 0.5),
        ("p", "completed", 0.6, 2.0, 0.5),
        ("r", "completed", 0.5, 1.0, 0.5),
    ]
    assert list(pareto.front(_points(same), OBJ)["trial_id"]) == ["p", "q", "r"]  # neither of p, q dominates
    for rule in ("best", "knee", "latency_ms <= 2", "fastest within 1 point"):
        assert pareto.choose(_points(same), OBJ, pareto.parse_pick(rule, OBJ, "--pick")).trial_id == "p"


def test_knee_of_a_front_of_two_is_the_best_and_says_why():
    rows = [
        ("x", "completed", 0.6, 3.0, 0.5),
        ("z", "completed", 0.5, 1.0, 0.5),
        ("w", "completed", 0.4, 2.0, 0.5),
    ]
    choice = pareto.choose(_points(rows), OBJ, pareto.parse_pick("knee", OBJ, "--pick"))
    assert choice.trial_id == "x" and "has 2 distinct trials and a knee needs 3" in choice.reason


def test_an_unsatisfiable_rule_names_the_closest_completed_trial():
    with pytest.raises(FerError) as e:
        _pick("latency_ms <= 1")
    message = str(e.value)
    assert "\n" not in message and message.startswith(
        "--pick 'latency_ms <= 1': no completed trial satisfies it"
    )
    assert "the closest, trial e (val_accuracy 0.4500 at 1.10 ms), misses latency_ms <= 1 by 0.1" in message
    assert "--pick best" in message  # g (1.00 ms) is stopped: not the closest
    with pytest.raises(FerError, match=r"trial e \(.*\), misses latency_ms < 1.1 \(it is on the bound\);"):
        _pick("latency_ms < 1.1")
    with pytest.raises(
        FerError, match=r"closest, trial c .* misses latency_ms <= 1 by 1.3 and val_accuracy >= 0.6 by"
    ):
        _pick("latency_ms <= 1 and val_accuracy >= 0.6")  # c misses by least over each objective's range


def test_no_completed_trial_says_stopped_trials_are_not_candidates():
    rows = [r for r in ROWS if r[1] != "completed"]
    with pytest.raises(FerError) as e:
        pareto.choose(_points(rows), OBJ, pareto.parse_pick("best", OBJ, "sweep.yaml: 'pick'"))
    message = str(e.value)
    assert "\n" not in message and message.startswith("sweep.yaml: 'pick' 'best': no completed trial")
    assert "2 stopped early: ASHA stops on val_accuracy alone" in message


@pytest.mark.parametrize(
    "rule, objectives, says",
    [
        ("", OBJ, "the pick rule is empty"),
        ("fastest", OBJ, "'fastest' is not a pick rule"),
        ("fastest within x points", OBJ, "N must be a number"),
        ("fastest within 1 point", {"val_accuracy": "max", "throughput": "max"}, "needs latency_ms among"),
        ("fastest within 1 point", {"val_loss": "min", "latency_ms": "min"}, "val_loss is min"),
        ("latency <= 4", OBJ, "names 'latency', not an objective of this sweep (did you mean latency_ms?)"),
        ("latency_ms =< 4", OBJ, "'latency_ms =< 4' is not NAME OP NUMBER"),
        ("latency_ms <= four", OBJ, "'latency_ms <= four' is not NAME OP NUMBER"),
        ("latency_ms <= 4 and", OBJ, "not NAME OP NUMBER"),
        ("knee", OBJ3, "'knee' is defined for two objectives, this sweep has 3"),
    ],
)
def test_bad_pick_texts_are_one_line_naming_where_and_the_forms(rule, objectives, says):
    with pytest.raises(ConfigError) as e:
        pareto.parse_pick(rule, objectives, "sweep.yaml: 'pick'")
    message = str(e.value)
    assert "\n" not in message and message.startswith("sweep.yaml: 'pick': ") and says in message, message
    assert message.endswith(pareto.FORMS)


def test_front_lines_table_then_reason():
    choice = _pick("latency_ms <= 4")
    lines = pareto.front_lines(_points(), OBJ, choice)
    assert lines[0] == "Pareto front of val\\_accuracy, latency\\_ms: 5 of 6 completed trials."
    assert lines[2] == "| trial | val\\_accuracy | latency\\_ms | chosen |"
    assert lines[5] == "| b | 0.5950 | 4.0000 | yes |"
    assert len(lines) == 2 + 2 + 5 + 2 and lines[-1].startswith("trial b: the highest val\\_accuracy")


def _trials_table(points: pd.DataFrame) -> pd.DataFrame:
    """The trials table of these points: each curve rises to its best epoch, the value in ``points``."""
    rows = []
    for n, p in enumerate(points.to_dict("records")):
        best = p["val_accuracy"]
        curve = {} if math.isnan(best) else {1: best - 0.1, 2: best, 3: best - 0.01}
        params = {"lr": 1e-4 * (n + 1), "aug_strength": 0.05 * n}
        rows.append(
            {"trial_id": p["trial_id"], "status": p["status"], "params": params, "intermediate": curve}
        )
    return pd.DataFrame(rows)


def test_the_saved_study_has_both_objectives_and_the_front_plot_is_drawn(tmp_path):
    points = _points()
    study, notes = plots.build_study(_trials_table(points), SPACE, "max", points=points, objectives=OBJ)
    assert notes == [
        "trial `j` completed without a value of latency\\_ms: the study keeps it as pruned, off the "
        "Pareto front."
    ]
    path = plots.save_study(study, "fer", "val_accuracy", tmp_path / plots.STUDY_FILE)
    loaded = optuna.load_study(study_name="fer", storage=sqlite_url(path))
    assert loaded.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert loaded.metric_names == ["val_accuracy", "latency_ms"]
    by_id = {t.user_attrs["trial_id"]: t for t in loaded.trials}
    assert by_id["b"].state == TrialState.COMPLETE and by_id["b"].values == [0.595, 4.0]
    assert by_id["g"].state == TrialState.PRUNED and by_id["g"].values == [0.65, 1.0]
    assert by_id["i"].state == TrialState.FAIL and by_id["i"].values is None
    assert by_id["j"].state == TrialState.PRUNED and by_id["j"].values is None
    assert {t.user_attrs["trial_id"] for t in loaded.best_trials} == set(
        pareto.front(points, OBJ)["trial_id"]
    )

    choice = _pick("knee")
    png = pareto.plot_front(loaded, choice.trial_id, tmp_path / pareto.PARETO_FILE, OBJ, "knee")
    assert png.stat().st_size > 10_000


def test_the_single_objective_plots_draw_on_a_multi_objective_study(tmp_path):
    points = _points()
    study, _ = plots.build_study(_trials_table(points), SPACE, "max", points=points, objectives=OBJ)
    notes = plots.write_plots(study, "val_accuracy", tmp_path)
    assert not [n for n in notes if "not drawn" in n], notes
    for name in plots.FILES.values():
        assert (tmp_path / name).stat().st_size > 10_000, name
