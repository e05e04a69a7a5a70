"""The benchmark's default data (FER2013 beside the checkout, ``../shared/data/fer2013``, when it is there,
else the built-in demo faces, and the run says which it measured)."""

from __future__ import annotations

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


def test_a_sweep_config_is_refused_in_one_line_naming_the_command(capsys):
    rc = bench.main(["--config", str(REPO / "sweeps" / "configs" / "default.yaml"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and "python -m sweeps.trial_config" in err[-1], err
