import pytest

from jaxcnn.config import Config, override, parse_overrides
from jaxcnn.errors import ConfigError


def test_json_round_trip():
    cfg = override(Config(), {"optimizer.step_boundaries": "0.3,0.6", "train.num_devices": "2",
                              "model.name": "keras_convnet"})
    assert Config.from_json(cfg.to_json()) == cfg


def test_unknown_keys_are_refused_with_valid_ones():
    with pytest.raises(ConfigError, match="train.epochs"):
        Config.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="model, optimizer, data, train"):
        override(Config(), {"trian.epochs": 3})


@pytest.mark.parametrize("key,value,message", [
    ("optimizer.learning_rate", 0, "must be > 0"),
    ("optimizer.learning_rate", -1e-3, "must be > 0"),
    ("data.batch_size", "x", "must be int"),
    ("train.epochs", 0, "positive"),
    ("optimizer.name", "adamax", "must be one of"),
    ("data.validation_fraction", 1.0, r"\[0, 1\)"),
])
def test_bad_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        override(Config(), {key: value})


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "c.d = x=y"]) == {"a.b": "1", "c.d": "x=y"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["nonsense"])
