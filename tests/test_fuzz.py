"""Fuzz tests of the spec parser and of config overrides (issue 15).

A seeded generator (no extra dependency) mutates valid spec text and config
values: deleted, duplicated and swapped characters, random tokens, huge
numbers, unicode and control characters, empty text. Every outcome must be a
result or a :class:`~jaxcnn.errors.JaxcnnError`; any other exception fails
the test with the input that raised it. Nothing is run: specs are parsed and
built (``build_model``), and a few of them summarised (``jax.eval_shape``).
"""

import json
import random
import time

import pytest

from jaxcnn.config import Config, override, parse_json, parse_overrides
from jaxcnn.errors import JaxcnnError
from jaxcnn.models import ZOO, build_model, parse_spec, summary, to_spec

SEED = 15

VALID_SPECS = [text for text, _ in ZOO.values()] + [
    "conv(16, 3x3, 2, same, relu, bias=false) maxpool(2) gap softmax",
    "conv(8,5) > avgpool(3, strides=2, padding=same) > flatten > dense(32, tanh) > softmax(4)",
    "conv2d(4, kernel=3, stride=1, act=none); max_pool(pool=2); flatten; linear(8) output",
    "flatten dropout(0.25) dense(64, activation=gelu, use_bias=true) softmax",
]

TOKENS = [
    "conv", "maxpool", "avgpool", "gap", "dropout", "flatten", "dense", "softmax", "pool",
    "linear", "output", "(", ")", ",", "=", ">", "|", ";", " ", "x", "same", "valid", "relu",
    "none", "true", "false", "maybe", "strides=", "kernel=", "bias=", "padding=", "units=",
    "rate=", "classes=", "0", "1", "-1", "+3", "2.5", ".5", "1e400", "1e-400", "-0",
    "9" * 30, "9" * 5000, "99999x99999", "3x3", "0x0", "2147483648", "2147483647", "1e5",
    "é", "３", "٣", "𝟘", "日本", "\x1b[31m", "\u200b", "\t", "\n", "\x00", "\\", "'", '"',
    "$", "()", "))", "((", ",,", "==",
]


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 2)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(text))
        if op == 0 and text:  # delete a character
            text = text[:pos] + text[pos + 1:]
        elif op == 1 and text:  # duplicate a character
            text = text[:pos] + text[pos:pos + 1] + text[pos:]
        elif op == 2:  # insert a token
            text = text[:pos] + rng.choice(TOKENS) + text[pos:]
        elif op == 3:  # replace a stretch with a token
            text = text[:pos] + rng.choice(TOKENS) + text[pos + rng.randint(1, 6):]
        elif op == 4:  # cut the text
            text = text[:pos]
        elif op == 5 and len(text) > 2:  # swap two characters
            a, b = sorted(rng.sample(range(len(text)), 2))
            text = text[:a] + text[b] + text[a + 1:b] + text[a] + text[b + 1:]
        elif op == 6:  # a random character
            text = text[:pos] + chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x2FFFF)])) \
                + text[pos:]
    return text


SIZES = ["1", "2", "3", "8", "3x3", "1x5", "64", "1000", "2147483647", "100000x100000",
         "2147483647x2147483647"]


def _random_layers(rng: random.Random) -> str:
    """Well-formed spec text with sizes from tiny to absurd."""
    layers = []
    for _ in range(rng.randint(1, 6)):
        size = lambda: rng.choice(SIZES)  # noqa: E731
        layers.append(rng.choice([
            f"conv({size()}, {size()}, {rng.choice(['same', 'valid'])})",
            f"conv({size()}, {size()}, strides={size()}, padding=same)",
            f"maxpool({size()}, padding={rng.choice(['same', 'valid'])})",
            f"avgpool({size()}, {size()})", "gap", "flatten", f"dense({size()}, relu)",
            f"dropout(0.{rng.randint(0, 9)})",
        ]))
    return " ".join(layers)


def _specs(rng: random.Random, n: int) -> list[str]:
    out = ["", " ", "\n", "\x00", ",", "(", ")", "conv(", "softmax()", "9" * 5000, "x" * 10_000]
    while len(out) < n:
        r = rng.random()
        if r < 0.1:
            out.append(" ".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 12))))
        elif r < 0.35:
            out.append(_random_layers(rng))
        else:
            out.append(_mutate(rng, rng.choice(VALID_SPECS)))
    return out


def _outcome(fn, *args, **kwargs):
    """``fn``'s result or its JaxcnnError; any other exception fails with the input."""
    try:
        return fn(*args, **kwargs)
    except JaxcnnError as e:
        assert str(e).strip(), f"{fn.__name__}{args!r}: empty message"
        return e
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{fn.__name__}{tuple(a if not isinstance(a, str) else a[:200] for a in args)!r}"
                    f" raised {type(e).__name__}: {e}")


def test_spec_fuzz_gives_a_result_or_a_jaxcnn_error():
    rng = random.Random(SEED)
    start = time.perf_counter()
    parsed = errors = summarised = 0
    for text in _specs(rng, 400):
        specs = _outcome(parse_spec, text)
        if isinstance(specs, JaxcnnError):
            errors += 1
            # A parse error points at the text with a caret, on lines free of control characters.
            assert all(c.isprintable() for c in str(specs).replace("\n", "")), repr(str(specs))
            continue
        parsed += 1
        assert parse_spec(to_spec(specs)) == specs, text  # the canonical text parses back
        model = _outcome(build_model, specs, 10)
        _outcome(build_model, text, 10)
        if not isinstance(model, JaxcnnError) and summarised < 60:
            summarised += 1
            _outcome(summary, model, rng.choice([(8, 8, 1), (28, 28, 1), (32, 32, 3)]),
                     batch_size=rng.choice([None, 1, 64]), budget_bytes=2**30)
    assert parsed > 40 and errors > 100  # the generator reaches both outcomes
    assert time.perf_counter() - start < 25


def _config_keys() -> list[str]:
    return [f"{section}.{field}" for section, fields in Config().to_dict().items()
            for field in fields]


VALUES = [
    "", " ", "0", "1", "-1", "2", "64", "0.5", "1e-3", "3e-4", "-0", "1e400", "-1e400", "nan",
    "inf", "-inf", "NaN", "1e-400", "9" * 30, "9" * 5000, str(2**31), str(2**63), str(2**64),
    "99999999999999999999999", "true", "false", "yes", "no", "maybe", "none", "null", "None",
    "auto", "adam", "sgd", "warmup_cosine", "step", "val_loss", "val_accuracy", "stream",
    "device", "digits", "synthetic:8x8x1:3", "keras_convnet", "conv(8,3) flatten softmax",
    "conv(32,1e400)", "0.3,0.6", "0.5,", ",", "1,2,3", "[1]", "{}", "é", "日本", "\x1b[31m",
    "\x00", "a=b", "x" * 1000,
]


def test_set_fuzz_gives_a_config_or_a_config_error():
    rng = random.Random(SEED + 1)
    keys = _config_keys() + ["train", "train.", ".epochs", "train.epochs.x", "trian.epochs",
                             "train.epoch", "", "=", "model.name.x"]
    start = time.perf_counter()
    ok = refused = 0
    for _ in range(400):
        items = []
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(VALUES) if rng.random() < 0.8 else _mutate(rng, rng.choice(VALUES))
            key = rng.choice(keys)
            items.append(f"{key}={value}" if rng.random() < 0.95 else key + value)
        updates = _outcome(parse_overrides, items)
        if isinstance(updates, JaxcnnError):
            refused += 1
            continue
        config = _outcome(override, Config(), updates)
        if isinstance(config, JaxcnnError):
            refused += 1
            continue
        ok += 1
        assert Config.from_json(config.to_json()) == config
    assert ok > 15 and refused > 100  # the generator reaches both outcomes
    assert time.perf_counter() - start < 10


def test_config_json_fuzz_gives_a_config_or_a_config_error():
    rng = random.Random(SEED + 2)
    base = Config().to_json()
    texts = ["", "{", "}", "[]", "null", "1", '"x"', "[" * 100_000 + "]" * 100_000,
             '{"train": ' * 5000 + "{}" + "}" * 5000, "{\"a\": 1, \"a\": 2}",
             '{"train": {"seed": ' + "9" * 5000 + "}}",
             '{"optimizer": {"learning_rate": 1' + "0" * 400 + "}}"]
    texts += [_mutate(rng, base) for _ in range(200)]
    for text in texts:
        config = _outcome(Config.from_json, text)
        if isinstance(config, Config):
            assert Config.from_json(config.to_json()) == config
    for data in (b"\xff\xfe{", base.encode("utf-16"), b"\x00" * 10, "\ufeff{}".encode()):
        _outcome(Config.from_json, data)
    # A mutated dict (a value of the wrong type anywhere) is refused by from_dict too.
    for _ in range(100):
        d = json.loads(base)
        section = rng.choice(list(d))
        d[section][rng.choice(list(d[section]))] = rng.choice(
            [None, [], {}, [1, 2], {"a": 1}, 1e308, -1, 2**70, "x", True, 0.5])
        _outcome(Config.from_dict, d)
    assert parse_json("{}") == {}
