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


# ---------------------------------------------------------------------------
# Hardening (issue 15)

import json  # noqa: E402

import jax  # noqa: E402

from jaxcnn.cli import main  # noqa: E402
from jaxcnn.config import MAX_SEED, TrainConfig  # noqa: E402


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**63), "-1", "-5"])
def test_seed_must_fit_what_jax_and_numpy_take(seed):
    with pytest.raises(ConfigError, match=r"train.seed must be an int from 0 to "
                                          r"9223372036854775807 \(2\*\*63 - 1\); got"):
        override(Config(), {"train.seed": seed})


def test_largest_seed_is_accepted_and_usable():
    cfg = override(Config(), {"train.seed": str(MAX_SEED)})
    assert cfg.train.seed == 2**63 - 1
    jax.random.split(jax.random.key(cfg.train.seed), 3)  # what split_keys does


@pytest.mark.parametrize("key,value,message", [
    ("optimizer.learning_rate", "inf", "must be a finite number; got inf"),
    ("optimizer.learning_rate", "1e400", "must be a finite number"),
    ("optimizer.end_factor", "nan", "must be a finite number; got nan"),
    ("optimizer.step_boundaries", "0.5,inf", "must be a finite number"),
    ("train.log_every_seconds", "-inf", "must be a finite number"),
    ("train.epochs", str(2**31), "train.epochs must be at most 2147483647"),
    ("data.batch_size", "9" * 30, "data.batch_size must be at most"),
    ("data.memory_budget_bytes", str(2**64), "must be at most 9223372036854775807"),
    ("data.dataset", "npz:x\x00.npz", "must not contain a NUL character"),
    ("train.seed", "9" * 5000, "train.seed must be int; got '9999"),
])
def test_out_of_range_values_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        override(Config(), {key: value})
    assert len(str(err.value)) < 300  # a long value is cut in the message


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="train.seed must be an int from 0"):
        TrainConfig(seed=2**64)
    assert TrainConfig(seed=2**63 - 1).seed == MAX_SEED


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "config must be a mapping \\(a JSON object\\); got \\[1, 2\\]"),
    ('{"train": [1]}', "train must be a mapping"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"train": {"epochs": 2, "epochs": 3}}', "the key 'epochs' appears twice"),
    ('{"train": {"seed": ' + "9" * 5000 + "}}", "not valid JSON"),
    ('{"optimizer": {"learning_rate": 1' + "0" * 400 + "}}", "learning_rate must be float"),
    ('{"optimizer": {"learning_rate": Infinity}}', "must be a finite number"),
    ("{", "not valid JSON"),
])
def test_from_json_refuses_bad_json(text, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_json(text)


def test_unknown_key_message_is_unchanged():
    with pytest.raises(ConfigError) as err:
        Config.from_json('{"train": {"epoch": 3}}')
    assert str(err.value).startswith("unknown config key train.epoch; valid keys: train.epochs,")


def _run_with_config(tmp_path, capsys, data: bytes) -> str:
    path = tmp_path / "c.json"
    path.write_bytes(data)
    assert main(["train", "--config", str(path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--config {str(path)!r}" in err  # the message names the file
    return err


@pytest.mark.parametrize("data,message", [
    (b'{"train": {"epochs": 2}}\xff', r"is not UTF-8 text: byte 0xff at offset 24"),
    ('{"train": {"epochs": 2}}'.encode("utf-16"), r"is not UTF-8 text: byte 0xff at offset 0"),
    (b"[" * 100_000 + b"]" * 100_000, r"is not valid config JSON: nested too deeply"),
    (b"[]", r": config must be a mapping \(a JSON object\); got \[\]"),
    (b'"text"', r": config must be a mapping"),
    (b"{'train': 1}", r"is not valid JSON: Expecting property name"),
    (b'{"train": {"seed": 99999999999999999999999}}', r": train.seed must be an int from 0"),
    (b'{"train": {"epoch": 3}}', r": unknown config key train.epoch; valid keys:"),
    (b" " * (2**20 + 1), r"is larger than 1 MiB"),
])
def test_bad_config_files_name_the_file(tmp_path, capsys, data, message):
    import re

    err = _run_with_config(tmp_path, capsys, data)
    assert err.startswith("jaxcnn: error: ") and re.search(message, err), err


def test_config_file_with_a_bom_is_read(tmp_path):
    from jaxcnn.cli import _read_config

    path = tmp_path / "c.json"
    path.write_bytes("\ufeff".encode() + json.dumps({"train": {"epochs": 2}}).encode())
    assert _read_config(str(path)).train.epochs == 2
    with pytest.raises(ConfigError, match="cannot read --config .*: Is a directory"):
        _read_config(str(tmp_path))


def test_huge_seed_flag_is_a_clean_error(capsys):
    assert main(["train", "--seed", "99999999999999999999999", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcnn: error: train.seed must be an int from 0 to ")
    assert main(["train", "--set", "train.seed=99999999999999999999999"]) == 2
    assert "train.seed must be an int from 0" in capsys.readouterr().err
