"""Every setting means what it says, and every refusal names where the value came from (the YAML, the
command line, a flag); the sweep never writes through a link out of its experiment folder; an unreachable
MLflow server is one line within seconds."""

import os
import subprocess
import sys

import pytest

from fer_core.errors import FerError
from sweeps.config.settings import load_settings, source_of
from sweeps.state.storage import check_contained

from .conftest import REPO

DEFAULT = REPO / "sweeps" / "configs" / "default.yaml"
FIXED = "a fixed value and a searched range cannot both hold: drop one"


def _refused(overrides=None, flags=None, path=DEFAULT) -> str:
    with pytest.raises(FerError) as e:  # a ConfigError, or parse_duration's FerError
        load_settings(path, overrides, flags)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("key", ["train.batch_size", "batch_size"])
def test_a_fixed_value_of_a_searched_key_is_refused(key):
    """Bug: train.batch_size=8 with batch_size in the search space was silently ignored (trials ran 16, 64)."""
    assert _refused({key: 8}) == (
        f"command line: train.batch_size = 8 is also searched (search_space.batch_size in {DEFAULT}); {FIXED}"
    )


@pytest.mark.parametrize("section", ["train", "retrain"])
def test_a_yaml_that_fixes_and_searches_a_key_is_refused(tmp_path, section):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"{section}:\n  lr: 0.01\nsearch_space:\n  lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}\n"
    )
    assert (
        _refused(path=path)
        == f"{path}: {section}.lr = 0.01 is also searched (search_space.lr in {path}); {FIXED}"
    )


@pytest.mark.parametrize(
    "key, flag, value",
    [("storage", "a", "b"), ("name", "x", "y"), ("time_budget", "30m", "1h"), ("tracking", "mlflow", "none")],
)
def test_a_flag_and_a_key_value_for_the_same_setting_must_agree(key, flag, value):
    """Bug: the flag silently won over the key=value."""
    msg = _refused({key: value}, {key: flag})
    option = "--" + key.replace("_", "-")
    assert msg.startswith(f"{option} {flag!r} and command line: {key}={value} disagree") and "give" in msg
    assert getattr(load_settings(DEFAULT, {key: flag}, {key: flag}), key) == flag  # equal: fine


@pytest.mark.parametrize(
    "overrides, flags, start, default_yaml_named",
    [
        ({"mode": "min"}, {}, "command line: 'mode' = min does not fit metric val_accuracy", True),
        (
            {"metric": "val_loss"},
            {},
            f"{DEFAULT}: 'mode' = max does not fit metric val_loss (command line",
            True,
        ),
        (
            {"metric": "val_loss", "mode": "max"},
            {},
            "command line: 'mode' = max does not fit metric val_loss (command line: 'metric')",
            False,
        ),
        ({"scheduler.grace_period": 5}, {}, "command line: 'scheduler.grace_period': scheduler needs", True),
        (
            {"scheduler.reduction_factor": 1},
            {},
            "command line: 'scheduler.reduction_factor' must be > 1",
            False,
        ),
        (
            {"resources.cpus_per_trial": 0.5},
            {},
            "command line: 'resources.cpus_per_trial' = 0.5 is impossible",
            False,
        ),
        ({"time_budget": "0s"}, {}, "command line: 'time_budget': '0s' must be longer than zero", False),
        ({}, {"time_budget": "soon"}, "--time-budget: 'soon' is not a duration", False),
        ({"num_samples": 0}, {}, "command line: 'num_samples'", False),
        ({"name": ".."}, {}, "command line: 'name' = '..': give a plain folder name", False),
    ],
)
def test_rules_between_keys_name_where_each_value_came_from(overrides, flags, start, default_yaml_named):
    """Bug: a value given on the command line was blamed on the shipped default.yaml, never edited."""
    msg = _refused(overrides, flags)
    assert msg.startswith(start), msg
    assert (str(DEFAULT) in msg) == default_yaml_named, msg


def test_source_of_names_the_yaml_the_command_line_or_the_flag():
    """What the driver names in a time budget's refusal."""
    assert source_of(load_settings(DEFAULT), "time_budget") == f"{DEFAULT}: 'time_budget'"
    assert (
        source_of(load_settings(DEFAULT, {"time_budget": "5m"}), "time_budget")
        == "command line: 'time_budget'"
    )
    assert source_of(load_settings(DEFAULT, None, {"time_budget": "5m"}), "time_budget") == "--time-budget"
    assert source_of(load_settings(DEFAULT), "ensemble_top_k") == "'ensemble_top_k' (default)"


def _experiment(tmp_path):
    exp = tmp_path / "runs" / "demo"
    (exp / "trial").mkdir(parents=True)
    (exp / "trial" / "result.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return exp, elsewhere


def test_a_link_out_of_the_experiment_folder_is_refused(tmp_path):
    """Bug: with STORAGE/NAME/report a link to another folder, --resume overwrote report.md and best.pt there."""
    exp, elsewhere = _experiment(tmp_path)
    (exp / "trial" / "same.json").symlink_to(exp / "trial" / "result.json")  # inside: fine
    (exp / "inside").symlink_to(exp / "trial")
    check_contained(str(exp))
    (exp / "report").symlink_to(elsewhere)
    with pytest.raises(FerError) as e:
        check_contained(str(exp))
    assert str(e.value).startswith(
        f"{exp / 'report'}: a symbolic link to {elsewhere}, outside the experiment"
    )
    assert "remove the link" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FerError, match=f"^{exp / 'report'}: a symbolic link"):
        check_contained(f"file://{exp}")


def test_a_linked_file_deep_inside_or_the_folder_itself_is_refused(tmp_path):
    exp, elsewhere = _experiment(tmp_path)
    (exp / "trial" / "best.pt").symlink_to(elsewhere / "best.pt")  # dangling: a write would create it there
    with pytest.raises(FerError, match=f"^{exp / 'trial' / 'best.pt'}: a symbolic link"):
        check_contained(str(exp))
    linked = tmp_path / "runs" / "linked"
    linked.symlink_to(elsewhere)
    with pytest.raises(FerError, match=f"^{linked}: the experiment folder is a symbolic link to {elsewhere}"):
        check_contained(str(linked))
    check_contained(str(tmp_path / "runs" / "new"))  # nothing there yet: fine


def test_the_local_copy_of_a_uri_experiments_report_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_contained("s3://bucket/sweeps/demo")  # object storage has no links; no local copy yet
    local = tmp_path / "fer-sweep-reports" / "s3" / "bucket" / "sweeps" / "demo"
    local.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (local / "report").symlink_to(elsewhere)
    with pytest.raises(FerError, match=f"^{local / 'report'}: a symbolic link to {elsewhere}"):
        check_contained("s3://bucket/sweeps/demo")


def test_an_unreachable_tracking_server_is_one_line_within_seconds(tmp_path):
    """Bug: --tracking-uri http://127.0.0.1:9 (nothing listening) waited 252 s in MLflow's retries."""
    code = (
        "from fer_core.errors import FerError\n"
        "from sweeps.config.settings import SweepSettings\n"
        "from sweeps.tune.tracking import check_tracking\n"
        "try:\n"
        "    check_tracking(SweepSettings(tracking='mlflow', tracking_uri='http://127.0.0.1:9'))\n"
        "except FerError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 1, r.stdout + r.stderr[-2000:]
    assert lines[0].startswith("tracking_uri http://127.0.0.1:9: MLflow cannot open it"), lines[0]
