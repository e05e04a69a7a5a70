"""``python -m sweeps.trial_config``: a sweep config's trial at the middle of its space, as a plain TrainConfig
YAML that the library's tools read (fer_core itself never imports sweeps)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from fer_core.config import make_config
from fer_core.tools.gpu_trial import TRIAL
from sweeps.trial_config import main, middle_trial_config

from .conftest import REPO


def test_the_trial_is_the_middle_of_its_search_space(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "scheduler: {max_epochs: 7}\n"
        "train: {model: efficientnet_b0, label_smoothing: 0.1}\n"
        "search_space:\n"
        "  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
        "  batch_size: {type: choice, values: [16, 32, 64, 128]}\n"
        "  aug_strength: {type: uniform, low: 0.0, high: 0.8}\n"
        "  drop_path_rate: {type: quniform, low: 0.0, high: 0.4, q: 0.1}\n"
        "  seed: {type: randint, low: 0, high: 10}\n"
    )
    m = middle_trial_config(sweep, {"aug_strength": 0.1})
    assert m["lr"] == pytest.approx(1e-3)  # the geometric middle
    assert m["batch_size"] == 32  # of an even number of choices, the lower middle one
    assert m["aug_strength"] == 0.1  # key=value comes last, over a searched key too
    assert m["drop_path_rate"] == pytest.approx(0.2)  # on the q grid
    assert m["seed"] == 4  # 0..9: high is exclusive
    assert (m["epochs"], m["label_smoothing"], m["audit"]) == (7, 0.1, False)  # the trial's fixed keys
    make_config(m)  # a valid TrainConfig


def test_the_gpu_checks_trial_is_the_fer2013_sweeps(tmp_path, capsys):
    """gpu_trial.TRIAL (fixed so that the GPU check runs without sweeps) is what the command prints."""
    assert main([str(REPO / "sweeps" / "configs" / "fer2013.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    searched = yaml.safe_load((REPO / "sweeps" / "configs" / "fer2013.yaml").read_text())["search_space"]
    assert set(searched) - {"img_size", "batch_size"} <= TRIAL.keys()  # what the check varies
    for key, value in TRIAL.items():
        assert printed[key] == (pytest.approx(value, rel=1e-4) if isinstance(value, float) else value), key


def test_a_bad_key_is_one_line(tmp_path, capsys):
    assert main([str(REPO / "sweeps" / "configs" / "fer2013.yaml"), "lr=abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "'lr'" in err


def test_the_library_imports_without_sweeps_or_optuna():
    """fer_core (its benchmark included) loads with sweeps, optuna and ray unimportable."""
    code = (
        "import sys\n"
        "for name in ('sweeps', 'optuna', 'ray'): sys.modules[name] = None\n"
        "import fer_core.tools.bench, fer_core.tools.gpu_check, fer_core.train\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    hits = subprocess.run(
        ["grep", "-rlE", r"^\s*(from|import) (sweeps|optuna)", str(REPO / "fer_core")],
        capture_output=True,
        text=True,
    )
    assert hits.stdout == "", hits.stdout
