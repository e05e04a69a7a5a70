"""Sweep YAML checks: every bad input is a one-line error before Ray starts."""

import dataclasses
import subprocess
import sys

import pytest

from fer_core.config import make_config
from fer_core.datasets import resolve
from fer_core.errors import ConfigError, FerError
from sweeps.config.settings import Resources, load_settings
from sweeps.config.space import to_optuna
from sweeps.plan.resources import NodeShape, place_trials

from .conftest import REPO

CONFIGS = REPO / "sweeps" / "configs"


@pytest.mark.parametrize("name", ["default.yaml", "fer2013.yaml", "fer2013-cpu.yaml"])
def test_shipped_configs_load(name):
    s = load_settings(CONFIGS / name)
    assert {p.name for p in s.search_space} >= {"lr", "batch_size", "aug_strength"}
    assert set(to_optuna(s.search_space)) == {p.name for p in s.search_space}


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


GOOD_SPACE = "search_space:\n  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("num_sample: 3\n" + GOOD_SPACE, "unknown key 'num_sample' (did you mean 'num_samples'?)"),
        ("num_samples: many\n" + GOOD_SPACE, "'num_samples' must be an integer"),
        ("search_space: {}\n", "'search_space' is empty"),
        ("name: x\n", "'search_space' is empty"),
        (
            "search_space:\n  lr: {type: loguniform, low: 1.0e-2, high: 1.0e-4}\n",
            "search_space.lr: low (0.01) must be below high (0.0001)",
        ),
        ("search_space:\n  lr: {type: loguniform, low: 0, high: 1}\n", "loguniform needs low > 0"),
        (
            "search_space:\n  lr: {type: gaussian, low: 0, high: 1}\n",
            "search_space.lr.type = 'gaussian' is not one of",
        ),
        (
            "search_space:\n  batch_size: {type: choice, values: []}\n",
            "search_space.batch_size.values must be a non-empty list",
        ),
        (
            "search_space:\n  batch_size: {type: choice, values: [32, big]}\n",
            "key 'batch_size' must be an integer",
        ),
        ("search_space:\n  aug_strength: {type: uniform, low: 0.0, high: 2.0}\n", "outside [0.0, 1.0]"),
        (
            "search_space:\n  learning_rate: {type: uniform, low: 0.1, high: 0.2}\n",
            "unknown key 'learning_rate'",
        ),
        (
            "search_space:\n  epochs: {type: randint, low: 1, high: 5}\n",
            "search_space.epochs cannot be searched",
        ),
        ("train:\n  lr: fast\n" + GOOD_SPACE, "train: key 'lr' must be a number"),
        (
            "scheduler:\n  grace_period: 5\n  max_epochs: 2\n" + GOOD_SPACE,
            "grace_period (5) <= max_epochs (2, ",
        ),
        ("metric: val_loss\n" + GOOD_SPACE, "does not fit metric val_loss"),
        (
            "resources:\n  gpus_per_trial: 1.5\n" + GOOD_SPACE,
            "'resources.gpus_per_trial' = 1.5 is impossible",
        ),
        (
            "initial_points:\n  - {batch_size: 32}\n" + GOOD_SPACE,
            "initial_points[0].batch_size is not in search_space",
        ),
        ("lr: [1, 2\n", "is not valid YAML"),
    ],
)
def test_bad_yaml_is_one_clear_line(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    assert fragment in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)


def test_overrides_route_to_sections():
    s = load_settings(
        CONFIGS / "default.yaml",
        {"num_samples": 2, "scheduler.max_epochs": 2, "weight_decay": 0.01, "train.img_size": 40},
    )
    assert s.num_samples == 2 and s.scheduler.max_epochs == 2
    assert s.train.weight_decay == 0.01 and s.train.img_size == 40  # lr, searched there, would be refused


def test_cli_rejects_bad_yaml_before_ray_starts(tmp_path):
    path = _write(tmp_path, "search_space: {}\n")
    r = subprocess.run(
        [sys.executable, "sweeps/run.py", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "'search_space' is empty" in r.stderr and "Ray" not in r.stdout + r.stderr


def test_resource_plans():
    s = load_settings(CONFIGS / "default.yaml", {"num_samples": 8})

    def placed(settings, cpus, gpus=0):
        p = place_trials(settings, [NodeShape("local", cpus, gpus)])
        return p.resources, p.concurrent

    assert placed(s, 2) == ({"cpu": 2, "gpu": 0.0}, 1)
    assert placed(s, 16) == ({"cpu": 4, "gpu": 0.0}, 4)
    assert placed(s, 16, 2) == ({"cpu": 1, "gpu": 1.0}, 2)  # augment_backend auto: on the GPU, 1 CPU feeds
    shared = dataclasses.replace(s, resources=Resources(gpus_per_trial=0.25))  # four trials share each GPU
    assert placed(shared, 16, 2) == ({"cpu": 1, "gpu": 0.25}, 8)


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "search_space:\n  lr: {type: loguniform, low: 1.0e-4, high: .inf}\n",
            "search_space.lr: high = inf is not a finite number",
        ),
        (
            "search_space:\n  warmup_epochs: {type: uniform, low: 0.0, high: .inf}\n",
            "high = inf is not a finite number",
        ),
        ("search_space:\n  lr: {type: uniform, low: .nan, high: 0.1}\n", "low = nan is not a finite number"),
        ("search_space:\n  lr: {type: uniform, low: nan, high: 0.1}\n", "low = nan is not a finite number"),
        (
            "search_space:\n  drop_rate: {type: quniform, low: 0.0, high: 0.5, q: .nan}\n",
            "q = nan is not a finite number",
        ),
        (
            "search_space:\n  weight_decay: {type: choice, values: [0.01, .nan]}\n",
            "key 'weight_decay' must be a finite number",
        ),
        (
            "initial_points:\n  - {lr: .nan}\n" + GOOD_SPACE,
            "initial_points[0]: key 'lr' must be a finite number",
        ),
        ("train:\n  weight_decay: .nan\n" + GOOD_SPACE, "train: key 'weight_decay' must be a finite number"),
        (
            "scheduler:\n  reduction_factor: .nan\n" + GOOD_SPACE,
            "'scheduler'.reduction_factor must be a finite number",
        ),
        (
            "resources:\n  gpus_per_trial: .nan\n" + GOOD_SPACE,
            "'resources'.gpus_per_trial must be a finite number",
        ),
        ("num_samples: .inf\n" + GOOD_SPACE, "'num_samples' must be a finite integer"),
    ],
)
def test_non_finite_settings_are_refused_in_one_line(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    assert fragment in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_sample": 3}, "command line: unknown key 'num_sample' (did you mean 'num_samples'?)"),
        ({"retrain_epoch": 3}, "command line: unknown key 'retrain_epoch' (did you mean 'retrain_epochs'?)"),
        (
            {"scheduler.max_epoch": 3},
            "command line: 'scheduler': unknown key 'max_epoch' (did you mean 'max_epochs'?)",
        ),
        ({"schedular.max_epochs": 3}, "(did you mean 'scheduler.max_epochs'?)"),
        ({"train.lrr": 0.1}, "command line: train: unknown key 'lrr' (did you mean 'lr'?)"),
        ({"num_samples": "many"}, "command line: 'num_samples' must be an integer"),
        ({"aug_strength": 2}, "command line: key 'aug_strength' = 2.0 is outside [0.0, 1.0]"),
    ],
)
def test_command_line_typos_name_the_command_line(overrides, message):
    """Before: an unknown override went under train: and was reported as '<yaml file>: train: unknown key',
    suggesting a train key (num_sample -> num_workers); a bad value named the YAML file."""
    with pytest.raises(ConfigError) as e:
        load_settings(CONFIGS / "default.yaml", overrides)
    msg = str(e.value)
    assert message in msg and "\n" not in msg and "default.yaml" not in msg


@pytest.mark.parametrize("name", ["../x", "/tmp/elsewhere", "", "..", ".", "a/b"])
def test_name_cannot_leave_storage(name):
    """Before: --name was applied after the YAML checks, so ../x or an absolute path put the experiment
    outside --storage, and an empty --name was silently ignored."""
    from sweeps.run import build_arg_parser, resolve_settings

    args = build_arg_parser().parse_intermixed_args(["--storage", "/tmp/st", "--name", name])
    with pytest.raises(FerError) as e:
        resolve_settings(args)
    assert str(e.value).startswith(f"--name = {name!r}: give a plain folder name") and "\n" not in str(
        e.value
    )


def test_unwritable_storage_is_one_line_before_ray_starts(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = subprocess.run(
        [sys.executable, "sweeps/run.py", "--storage", str(blocker / "runs")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert (
        lines[0].startswith(f"error: {blocker / 'runs'}: --storage is not a writable folder")
        and "Ray" not in r.stdout
    )


def test_unusable_cache_dir_is_one_line_before_ray(demo_root, tmp_path):
    """The driver checks the image cache before Ray starts; a read-only cache that already holds the splits
    passes (tests/test_data.py checks that load_split reads one)."""
    from sweeps.state.storage import check_cache

    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = load_settings(CONFIGS / "default.yaml", {"cache_dir": str(blocker / "cache")})
    with pytest.raises(FerError) as e:
        check_cache(s, resolve(make_config({"data": str(demo_root)})))
    assert str(e.value).startswith(
        f"{blocker / 'cache'}: cannot create the image cache folder"
    ) and "\n" not in str(e.value)
    s = load_settings(CONFIGS / "default.yaml", {"cache_dir": str(tmp_path / "cache"), "img_size": 32})
    check_cache(s, resolve(make_config({"data": str(demo_root)})))  # writable: fine


def test_a_weights_file_is_made_absolute_or_refused_before_ray(tmp_path, monkeypatch):
    from fer_core.errors import FerError
    from sweeps.run import build_arg_parser, resolve_settings

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)  # trials run in folders of their own: a relative path must not reach them
    args = build_arg_parser().parse_intermixed_args(
        ["--config", str(CONFIGS / "fer2013-cpu.yaml"), "weights=w.safetensors"]
    )
    assert resolve_settings(args).train.weights == str(weights)
    args = build_arg_parser().parse_intermixed_args(
        ["--config", str(CONFIGS / "fer2013-cpu.yaml"), "weights=missing.pt"]
    )
    with pytest.raises(
        FerError,
        match=r"^train.weights: missing.pt: weights file not found; .*weights= model=efficientnet_b0",
    ):
        resolve_settings(args)


def test_a_resource_given_as_a_word_names_both_forms():
    with pytest.raises(
        ConfigError, match=r"'resources'.cpus_per_trial must be a number or 'auto', got 'four'"
    ):
        load_settings(CONFIGS / "default.yaml", {"resources.cpus_per_trial": "four"})


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("a\nb", "a control character"),
        ("a\tb", "a control character"),
        ("   ", "only spaces"),
        (" a", "spaces at its start or end"),
        ("a?b", "'?'"),
        ("a#b", "'#'"),
    ],
)
def test_a_name_is_a_plain_folder_name_or_one_line_that_says_why(name, fragment):
    """Before: a newline, a tab or only spaces were accepted as the experiment's folder, and 'a?b' got
    advice about an S3 server's address."""
    from sweeps.run import build_arg_parser, resolve_settings

    args = build_arg_parser().parse_intermixed_args(["--storage", "/tmp/st", "--name", name])
    with pytest.raises(FerError) as e:
        resolve_settings(args)
    msg = str(e.value)
    assert msg.startswith(f"--name = {name!r}: ") and fragment in msg and "\n" not in msg and "S3" not in msg


@pytest.mark.parametrize(
    "override, shown", [("name=2024", "2024"), ("name=true", "True"), ("storage=2024", "2024")]
)
def test_a_folder_key_read_as_a_number_or_boolean_is_one_line(override, shown):
    """Before: name=2024 or name=true as key=value ended in a TypeError traceback (YAML reads them as a
    number and a boolean); the flag takes the text as written, so the line points at it."""
    from fer_core.config import parse_overrides

    key = override.partition("=")[0]
    with pytest.raises(ConfigError) as e:
        load_settings(CONFIGS / "default.yaml", parse_overrides([override]))
    msg = str(e.value)
    assert msg.startswith(f"command line: '{key}' = {shown}") and f"--{key} " in msg and "\n" not in msg


def test_a_name_given_with_the_flag_is_taken_as_written():
    s = load_settings(CONFIGS / "default.yaml", flags={"name": "2024"})
    assert s.name == "2024"


def test_a_metric_of_one_dataset_must_name_one_of_several(demo_root, tmp_path):
    """NAME/val_accuracy is a metric only for a dataset NAME among several; both refusals are one line
    before Ray starts."""
    s = load_settings(CONFIGS / "default.yaml", {"metric": "affectnet7/val_accuracy"})
    assert s.metric == "affectnet7/val_accuracy"
    with pytest.raises(ConfigError) as e:
        load_settings(CONFIGS / "default.yaml", {"metric": "affectnet7/accuracy"})
    assert "NAME/val_accuracy" in str(e.value) and "\n" not in str(e.value)
    r = subprocess.run(
        [
            sys.executable,
            "sweeps/run.py",
            "--storage",
            str(tmp_path / "runs"),
            "--data",
            str(demo_root),
            "metric=data/val_accuracy",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "there is no dataset 'data' among several" in lines[0] and "Ray" not in r.stdout
