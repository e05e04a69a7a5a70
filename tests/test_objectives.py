"""A second objective: declared with the settings, timed per architecture before the search, searched by
Optuna with the metric, picked from the front, and shipped (model.onnx, its speed, INT8, the model card)."""

from __future__ import annotations

import json

import onnxruntime as ort
import optuna
import pandas as pd
import pytest
import yaml

from fer_core.config import make_config
from fer_core.errors import ConfigError, FerError
from sweeps.config.settings import load_settings
from sweeps.config.space import arch_key, architectures, parse_space
from sweeps.plan.latency import _time_architectures

from .sweep_utils import run_sweep, trial_rows

BOTH = {"objectives": {"val_accuracy": "max", "latency_ms": "min"}}


@pytest.mark.parametrize(
    "overrides, flags, fragment",
    [
        (
            {"objectives": {"val_accuracy": "max", "latncy_ms": "min"}},
            {},
            "no trial reports 'latncy_ms' (did you mean latency_ms?)",
        ),
        (
            {"objectives": {"val_accuracy": "max", "latency_ms": "max"}},
            {},
            "latency_ms is better lower; write latency_ms: min",
        ),
        ({"objectives": {"latency_ms": "min"}}, {}, "its first entry (the metric ASHA stops trials on)"),
        ({**BOTH, "metric": "val_macro_f1"}, {}, "the first objective is the metric"),
        ({**BOTH, "ensemble_top_k": 2}, {}, "its speed is not any trial's on the front"),
        (
            {"objectives": {"val_accuracy": "max"}},
            {"pick": "knee"},
            "chooses on a front of several objectives",
        ),
        (BOTH, {"pick": "latncy_ms <= 3"}, "--pick: 'latncy_ms <= 3' names 'latncy_ms'"),
        (BOTH, {"pick": "fastest"}, "--pick: 'fastest' is not a pick rule"),
        ({**BOTH, "latency.threads": 0}, {}, "'latency'.threads must be >= 1"),
    ],
)
def test_bad_objectives_and_pick_rules_are_one_line(overrides, flags, fragment):
    with pytest.raises((ConfigError, FerError)) as e:
        load_settings(None, overrides, flags)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_objectives_default_to_the_metric_and_set_it_when_given():
    one = load_settings(None, {"objectives": {}, "metric": "val_macro_f1", "pick": "best"})
    assert one.objectives == {"val_macro_f1": "max"}
    two = load_settings(
        None, {"objectives": {"val_loss": "min", "latency_ms": "min"}, "metric": "val_loss", "mode": "min"}
    )
    assert (two.metric, two.mode, list(two.objectives)) == ("val_loss", "min", ["val_loss", "latency_ms"])


def test_each_architecture_of_the_space_is_listed_once_and_a_range_is_refused():
    train = make_config({"model": "efficientnet_b0", "img_size": 48})
    space = parse_space(
        {
            "model": {"type": "choice", "values": ["efficientnet_lite0", "mobilenetv3_small_100"]},
            "img_size": {"type": "choice", "values": [32, 48]},
            "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        },
        "s.yaml",
    )
    archs = architectures(tuple(space), train, "s.yaml")
    assert len(archs) == 4 and {a["grayscale"] for a in archs} == {True}
    assert arch_key(archs[0]) == "efficientnet_lite0/32/gray" == arch_key(make_config(archs[0]))
    ranged = parse_space({"img_size": {"type": "randint", "low": 32, "high": 64}}, "s.yaml")
    with pytest.raises(ConfigError, match="search img_size as a choice"):
        architectures(tuple(ranged), train, "s.yaml")


def test_a_smaller_network_is_timed_faster_and_a_weights_file_of_another_is_one_line(tmp_path):
    train = make_config({"img_size": 32})
    archs = [
        {"model": m, "img_size": 32, "grayscale": True} for m in ("efficientnet_b0", "mobilenetv3_small_100")
    ]
    measured = _time_architectures(train, archs, 7, threads=1, batch=8)
    b0, small = (measured[arch_key(a)] for a in archs)
    assert small["latency_ms"] < b0["latency_ms"] and small["throughput"] > b0["throughput"]
    assert b0["threads"] == 1 and b0["batch"] == 8 and b0["machine"]
    # A weights file fits one architecture: named before the search, not in every trial.
    from safetensors.torch import save_file

    from fer_core.model import build_model

    weights = tmp_path / "b0.safetensors"
    save_file(build_model("efficientnet_b0").state_dict(), str(weights))
    error = _time_architectures(make_config({"weights": str(weights)}), archs[1:], 7, threads=1, batch=8)
    assert isinstance(error, str) and error.startswith("search_space.model = mobilenetv3_small_100: ")


@pytest.mark.slow
def test_a_sweep_of_accuracy_and_latency_picks_from_its_front_and_ships_the_winner(tmp_path):
    """The demo's objectives on tiny data: a rule no trial satisfies stops before the retrain in one line and
    keeps the trials; resumed with another rule, the retrain and the report run on the same trials."""
    name, exp = "pareto", tmp_path / "pareto"
    common = [
        "num_samples=4",
        "initial_points="
        + json.dumps(
            [
                {"model": "mobilenetv3_small_100", "lr": 3e-3, "batch_size": 16, "aug_strength": 0.2},
                {"model": "efficientnet_b0", "lr": 3e-3, "batch_size": 16, "aug_strength": 0.2},
                {"model": "mobilenetv3_small_100", "lr": 1e-3, "batch_size": 16, "aug_strength": 0.0},
                {"model": "efficientnet_b0", "lr": 1e-3, "batch_size": 16, "aug_strength": 0.0},
            ]
        ),
        "scheduler.grace_period=2",
    ]  # no trial stopped by ASHA: all four are candidates
    r = run_sweep(tmp_path, name, *common, "--pick", "latency_ms <= 0.001")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    error = r.stderr.strip().splitlines()[-1]
    assert (
        "no completed trial satisfies it; the closest, trial" in error and "--resume --name pareto" in error
    )
    assert not (exp / "report").exists()

    # Between the two networks' latencies, as timed on this machine: a limit only the mobilenet meets.
    rows = [r[-1] for r in trial_rows(exp).values()]
    # The throughput measured is the model's, beside (never over) the training speed each epoch reports.
    assert all(r["throughput"] > 0 and r["images_per_s"] != r["throughput"] for r in rows)
    latencies = sorted({r["latency_ms"] for r in rows})
    assert len(latencies) == 2, latencies
    limit = f"latency_ms <= {(latencies[0] * latencies[1]) ** 0.5:.4f}"
    r = run_sweep(tmp_path, name, "--resume", "scheduler.grace_period=2", "--pick", limit, "int8=true")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = exp / "report"
    trials = pd.read_csv(report / "trials.csv")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    # One measurement per architecture, on this machine, in every trial's results.
    per_model = trials.groupby("model")["latency_ms"].nunique()
    assert per_model.to_dict() == {"efficientnet_b0": 1, "mobilenetv3_small_100": 1}
    fast = trials.groupby("model")["latency_ms"].first()
    assert fast["mobilenetv3_small_100"] < fast["efficientnet_b0"]
    assert trials["latency_machine"].str.contains("cores").all()
    # The rule chose the most accurate trial under the limit: a mobilenet.
    m = json.loads((report / "metrics.json").read_text())
    mobile = trials[trials["model"] == "mobilenetv3_small_100"].set_index("trial_id")["best_val_accuracy"]
    assert m["params"]["model"] == "mobilenetv3_small_100" and mobile[m["best_trial"]] == mobile.max()
    assert m["pick"] == limit and limit in m["choice"]
    # optuna.db keeps both objectives, by name.
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{report / 'optuna.db'}")
    assert study.metric_names == ["val_accuracy", "latency_ms"] and len(study.directions) == 2
    assert {t.user_attrs["trial_id"] for t in study.best_trials} <= set(trials["trial_id"])
    md = (report / "report.md").read_text()
    assert (
        "## Accuracy against speed" in md
        and "](pareto_front.png)" in md
        and (report / "pareto_front.png").is_file()
    )
    assert "What the other rules would have chosen" in md and "`knee`" in md
    # The model to ship: model.onnx runs, INT8 weighed against it, the card's YAML header parses.
    assert m["latency"]["threads"] == 1 and m["latency"]["latency_ms"] > 0
    session = ort.InferenceSession(str(report / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert set(m["int8"]["splits"]) == {"val", "test"} and (report / "model.int8.onnx").is_file()
    assert "## The model to ship" in md and "| val accuracy |" in md
    card = (report / "model_card.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["pipeline_tag"] == "image-classification" and "model-index" in header
    assert "mobilenetv3_small_100" in card and m["choice"] in card
