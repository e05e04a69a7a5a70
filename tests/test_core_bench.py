"""The benchmark's default data (FER2013 beside the checkout, ``../shared/data/fer2013``, when it is there,
else the built-in demo faces, and the run says which it measured) and the trial config of ``--config``."""

from __future__ import annotations

import pytest

from fer_core.config import make_config
from fer_core.tools import bench

from .conftest import FER2013, REPO


def test_default_data_is_fer2013_beside_the_checkout(tmp_path):
    checkout = tmp_path / "main"
    checkout.mkdir()
    fer = tmp_path / "shared" / "data" / "fer2013"
    (fer / "train").mkdir(parents=True)
    data, source = bench.default_data(checkout)
    assert data == fer and "../shared/data/fer2013" in source, (data, source)
    assert bench.CHECKOUT == REPO  # the real default looks beside this checkout, not inside it


def test_default_data_on_this_machine_names_what_it_uses():
    data, source = bench.default_data()
    if (FER2013 / "train").is_dir():
        assert data == FER2013 and "FER2013" in source
    else:
        assert "demo" in source and (data / "train").is_dir()


def test_default_data_without_fer2013_is_the_demo_and_says_so(tmp_path):
    (tmp_path / "main").mkdir()
    data, source = bench.default_data(tmp_path / "main")
    assert (data / "train").is_dir() and data.name.startswith("demo-")
    assert "demo" in source and str(tmp_path / "shared" / "data" / "fer2013") in source, source


def test_sweep_trial_config_is_the_middle_of_its_search_space(tmp_path):
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
    m = bench.sweep_trial_config(sweep)
    assert m["lr"] == pytest.approx(1e-3)  # the geometric middle
    assert m["batch_size"] == 32  # of an even number of choices, the lower middle one
    assert m["aug_strength"] == pytest.approx(0.4)
    assert m["drop_path_rate"] == pytest.approx(0.2)  # on the q grid
    assert m["seed"] == 4  # 0..9: high is exclusive
    assert (m["epochs"], m["label_smoothing"], m["audit"]) == (7, 0.1, False)  # the trial's fixed keys
    make_config({**m, "data": str(tmp_path)})  # a valid TrainConfig
