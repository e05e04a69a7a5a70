import pytest

from fer_core.config import TrainConfig, load_yaml, make_config, parse_overrides
from fer_core.errors import ConfigError


def test_defaults_and_coercion():
    cfg = make_config({"lr": "1e-3", "epochs": "3", "strict": "true", "aug_strength": 0})
    assert (
        cfg.lr == pytest.approx(1e-3) and cfg.epochs == 3 and cfg.strict is True and cfg.aug_strength == 0.0
    )
    assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"learning_rate": 1e-3}, "unknown key 'learning_rate'"),
        ({"lr": "fast"}, "key 'lr' must be a number"),
        ({"epochs": 2.5}, "key 'epochs' must be an integer"),
        ({"aug_strength": 1.5}, "outside [0.0, 1.0]"),
        ({"optimizer": "lamb"}, "not one of adamw, adam, sgd"),
        ({"strict": "maybe"}, "must be true or false"),
    ],
)
def test_bad_values_name_the_key(values, fragment):
    with pytest.raises(ConfigError) as e:
        make_config(values, source="my.yaml")
    msg = str(e.value)
    assert fragment in msg and msg.startswith("my.yaml") and "\n" not in msg


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        make_config({"batchsize": 32})


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(lst)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_overrides():
    assert parse_overrides(["lr=0.01", "model=efficientnet_b0"]) == {"lr": 0.01, "model": "efficientnet_b0"}
    with pytest.raises(ConfigError, match="'lr' is not key=value"):
        parse_overrides(["lr"])


def test_bare_on_off_reaches_on_off_keys_as_strings(tmp_path):
    # YAML 1.1 reads a bare `off` as False; for keys whose choices are on/off that must still mean "off".
    p = tmp_path / "c.yaml"
    p.write_text("channels_last: off\ncompile: on\n")
    cfg = make_config(load_yaml(p), source=str(p))
    assert cfg.channels_last == "off" and cfg.compile == "on"
    assert make_config(parse_overrides(["channels_last=off"])).channels_last == "off"
    with pytest.raises(ConfigError, match="key 'normalize' must be a string"):
        make_config({"normalize": False})


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", float("nan"), float("inf")])
@pytest.mark.parametrize("key", ["lr", "weight_decay", "warmup_epochs", "grad_clip", "epochs", "batch_size"])
def test_non_finite_numbers_are_refused_in_one_line(key, value):
    """NaN passes every range check (all comparisons are false) and inf passes open ranges: before this check
    weight_decay=nan trained a model of NaN weights, and int keys crashed with OverflowError on inf."""
    with pytest.raises(ConfigError) as e:
        make_config({key: value}, source="command line")
    msg = str(e.value)
    assert msg.startswith(f"command line: key '{key}' must be") and "\n" not in msg
    assert ("finite" in msg) if key not in ("epochs", "batch_size") else ("integer" in msg)
