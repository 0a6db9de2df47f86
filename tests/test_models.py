import jax
import jax.numpy as jnp
import pytest

from jaxcnn.errors import ShapeError, SpecError
from jaxcnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from jaxcnn.models import (ZOO, LayerSpec, build_model, model_spec, parse_spec, summary,
                           to_spec)


def _count(model, shape):
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
    return sum(p.size for p in jax.tree.leaves(v))


@pytest.mark.parametrize("name,shape,params", [
    ("keras_convnet", (28, 28, 1), 34_826),
    ("flax_cnn", (28, 28, 1), 824_458),
    ("flax_cnn", (28, 28, 3), 825_034),
])
def test_zoo_parameter_counts(name, shape, params):
    model = build_model(name, 10)
    assert summary(model, shape).params == params
    assert _count(model, shape) == params


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_default_model_fits_common_shapes(shape):
    model = build_model("seed_cnn", 10)
    y = model.apply(model.init(jax.random.key(0), jnp.zeros((1, *shape))), jnp.zeros((3, *shape)))
    assert y.shape == (3, 10)


def test_keras_convnet_does_not_fit_8x8_and_says_where():
    with pytest.raises(ShapeError, match="max_pooling2d_2.*larger than its input feature map 1x1"):
        summary(build_model("keras_convnet", 10), (8, 8, 1))


def test_summary_rows_and_flops():
    s = summary(build_model("keras_convnet", 10), (28, 28, 1))
    assert [r.output_shape for r in s.rows] == [
        (26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (1600,), (1600,), (10,)]
    conv2 = s.rows[2]
    assert conv2.flops >= 2 * 11 * 11 * 64 * 9 * 32
    assert "Total params: 34,826" in str(s)
    assert s.to_dict()["params"] == 34_826


def test_spec_round_trip():
    for name, (text, _) in ZOO.items():
        specs = parse_spec(text)
        assert parse_spec(to_spec(specs)) == specs, name


def test_spec_from_modules_matches_text():
    layers = [Conv2D(32, 3), MaxPooling2D(2), Conv2D(64, 3), MaxPooling2D(2), Flatten(),
              Dropout(0.5), Dense(10)]
    text = "conv(32,3) maxpool(2) conv(64,3) maxpool(2) flatten dropout(0.5) dense(10)"
    assert [LayerSpec.of(m) for m in layers] == parse_spec(text)


def test_spec_keywords_and_identifiers():
    (conv,) = parse_spec("conv(16, kernel=5x3, stride=2, same, act=none, bias=false)")
    assert conv.kwargs() == {"filters": 16, "kernel_size": (5, 3), "strides": 2,
                             "padding": "same", "activation": None, "use_bias": False}


@pytest.mark.parametrize("text,message", [
    ("conv(32,3) pool(2) bogus", "unknown layer 'bogus' at position 19"),
    ("conv(32,3", "missing '\\)'"),
    ("conv(32, 3, foo=1)", "conv has no argument 'foo'"),
    ("conv(32) $", "unexpected character"),
    ("dense(10, 2, 3)", "too many"),
    ("conv", "conv needs filters"),
    ("", "empty"),
])
def test_bad_spec_points_at_the_problem(text, message):
    with pytest.raises(SpecError, match=message) as err:
        parse_spec(text)
    if text:
        assert "^" in str(err.value)


def test_unknown_model_lists_known_ones():
    with pytest.raises(SpecError, match="keras_convnet"):
        model_spec("kerasconvnet")


def test_output_layer_classes():
    assert build_model("flatten softmax", 7).layers[-1].kwargs() == {"num_classes": 7}
    assert build_model("flatten dense(5)", 3).layers[-1].kind == "SoftmaxOutput"
    with pytest.raises(SpecError, match="data has 10"):
        build_model("flatten softmax(3)", 10)
    with pytest.raises(SpecError, match="last layer"):
        build_model("softmax(3) flatten softmax", 3)


# ---------------------------------------------------------------------------
# Hardening (issue 15): bad values, duplicates, missing parentheses, memory


def _caret_column(message: str) -> int:
    """The spec column the caret of a SpecError points at."""
    lines = message.splitlines()
    return lines[2].index("^") - 2


@pytest.mark.parametrize("text,token,message", [
    ("conv(32,1e400)", "1e400", "kernel_size must be an int from 1 to 2147483647"),
    ("conv(32, 3, use_bias=maybe)", "maybe", "use_bias must be true or false; got maybe"),
    ("conv(32, 3, bias=2)", "2", "use_bias must be true or false"),
    ("conv(0, 3)", "0", "filters must be an int from 1"),
    ("conv(32.5, 3)", "32.5", "filters must be an int"),
    ("conv(-4, 3)", "-4", "filters must be an int"),
    ("conv(32, 3, strides=0x2)", "0x2", "strides must be an int from 1"),
    ("conv(32, 3, padding=full)", "full", "padding must be valid or same"),
    ("conv(32, 3, act=7)", "7", "activation must be one of"),
    ("dense(10, foo)", "foo", "activation must be one of"),
    ("dense(1e400)", "1e400", "units must be an int"),
    ("dense(99999999999999999999)", "99999999999999999999", "units must be an int"),
    ("dropout(1.5)", "1.5", r"rate must be a number in \[0, 1\)"),
    ("dropout(true)", "true", "rate must be a number"),
    ("maxpool(2, strides=none) avgpool(0)", "0", "pool_size must be an int from 1"),
    ("flatten softmax(1)", "1", "num_classes must be an int from 2"),
    ("conv(32, " + "9" * 5000 + ")", "9" * 5000, "is too long"),
])
def test_bad_values_are_refused_with_a_caret(text, token, message):
    with pytest.raises(SpecError, match=message) as err:
        parse_spec(text)
    assert _caret_column(str(err.value)) == text.rindex(token)


@pytest.mark.parametrize("text,token,key", [
    ("conv(32, 3, strides=2, strides=3)", "strides=3", "strides"),
    ("conv(32, 3, 2, stride=2)", "stride=", "strides"),
    ("conv(32, 3, kernel=5)", "kernel=", "kernel_size"),
    ("conv(32, 3, same, valid)", "valid", "padding"),
    ("conv(32, 3, relu, activation=tanh)", "activation=", "activation"),
    ("dense(10, relu, tanh)", "tanh", "activation"),
    ("dense(10, units=5)", "units=", "units"),
    ("maxpool(2, pool=3)", "pool=", "pool_size"),
])
def test_duplicate_arguments_are_refused(text, token, key):
    with pytest.raises(SpecError, match=f"{key} is given twice") as err:
        parse_spec(text)
    assert _caret_column(str(err.value)) == text.index(token)


@pytest.mark.parametrize("text,column", [
    ("conv(32,3 maxpool(2) flatten softmax", 9),
    ("conv(32, 3 > maxpool(2)", 10),
    ("dense(10 dense(20)) softmax", 8),
    ("dense(10 linear(20))", 8),
    ("conv(maxpool(2)) flatten", 5),
    ("conv(32,3", 9),
    ("flatten dense(10, relu", 22),
])
def test_missing_parenthesis_is_pointed_at(text, column):
    with pytest.raises(SpecError, match=r"missing '\)' to close") as err:
        parse_spec(text)
    assert _caret_column(str(err.value)) == column


def test_good_specs_parse_as_before():
    # Values at the edges of their ranges, aliases and ids that are both layers and values.
    (conv, dense, drop, pool) = parse_spec(
        "conv(32, 3x5, 2, same, linear, bias=0) dense(10, linear) dropout(0) "
        "maxpool(2, strides=none)")
    assert conv.kwargs() == {"filters": 32, "kernel_size": (3, 5), "strides": 2,
                             "padding": "same", "activation": "linear", "use_bias": 0}
    assert dense.kwargs() == {"units": 10, "activation": "linear"}
    assert drop.kwargs() == {"rate": 0}
    assert pool.kwargs() == {"pool_size": 2}
    assert parse_spec("dense(2147483647)")[0].kwargs() == {"units": 2**31 - 1}


def test_control_characters_are_escaped_and_long_specs_cut():
    with pytest.raises(SpecError) as err:
        parse_spec("conv(32,3)\x1b[31m flatten")
    text = str(err.value)
    assert "\x1b" not in text and "\\x1b" in text
    assert text.splitlines()[1][2 + _caret_column(text):].startswith("\\x1b")
    long = "conv(8,3) " * 500 + "bogus " + "flatten " * 500
    with pytest.raises(SpecError, match="unknown layer 'bogus'") as err:
        parse_spec(long)
    lines = str(err.value).splitlines()
    assert max(len(line) for line in lines) < 200
    assert lines[1][2 + _caret_column(str(err.value)):].startswith("bogus")


def test_wide_characters_keep_the_caret_under_the_token():
    with pytest.raises(SpecError) as err:
        parse_spec("conv(８,3) 日本 ")
    lines = str(err.value).splitlines()
    assert "unexpected character '日'" in lines[0]
    # Each wide character takes two columns, so the caret sits under the first one.
    assert lines[2].index("^") - 2 == len("conv(") + 2 + len(",3) ")


def test_build_model_checks_layers_not_from_text():
    with pytest.raises(SpecError, match="layer 1: conv: kernel_size must be"):
        build_model([Conv2D(32, float("inf")), Flatten()], 10)
    with pytest.raises(SpecError, match="layer 2: dropout: rate"):
        build_model([Flatten(), Dropout(2.0)], 10)
    with pytest.raises(SpecError, match="layer 1 is not a jaxcnn layer"):
        build_model([LayerSpec("Bogus")], 10)
    with pytest.raises(SpecError, match="zoo name, spec text or a list"):
        build_model(42, 10)


def test_summary_refuses_a_model_that_cannot_fit_naming_the_layer():
    # 784 x 10**9 float32 weights: 2.9 TiB, more than any machine this runs on.
    with pytest.raises(SpecError, match=r"at least 2\.9 TiB .*largest layer is dense_1 \(Dense\): "
                                        r"784,000,000,000 parameters"):
        summary(build_model("flatten dense(1000000000)", 10), (28, 28, 1))
    model = build_model("flatten dense(20000) dense(20000)", 10)
    with pytest.raises(SpecError, match=r"more than the 1\.0 GiB available \(the given budget\)"
                                        r".*largest layer is dense_2"):
        summary(model, (28, 28, 1), budget_bytes=2**30)
    assert summary(model, (28, 28, 1), budget_bytes=2**32).params == 415_920_010


def test_summary_counts_training_activations_per_batch():
    model = build_model("conv(1000, 3) flatten softmax", 10)
    summary(model, (28, 28, 1), budget_bytes=2**30)  # inference: fits
    with pytest.raises(SpecError, match=r"activations of 512 images in one training pass"
                                        r".*largest layer is conv2d_1.*smaller batch"):
        summary(model, (28, 28, 1), batch_size=512, budget_bytes=2**30)
    # 2 x 27 MB of parameters and gradients, 16 x 2.7 MB of activations: fits in 128 MiB.
    summary(model, (28, 28, 1), batch_size=16, budget_bytes=2**27)


def test_memory_budget_is_known_here():
    from jaxcnn.models import memory_budget

    budget, source = memory_budget()
    assert budget > 0 and source


# The memory cases run the command in a child under an address-space limit, so that a
# regression fails the test instead of exhausting the machine. JAX on the CPU maps about
# 1.5 GiB of address space before it does anything.
_LIMIT = 4 * 2**30
_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from jaxcnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _jaxcnn_limited(tmp_path, *argv: str):
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXCNN_COMPILATION_CACHE="off")
    return subprocess.run([sys.executable, "-c", _CHILD.format(limit=_LIMIT), *argv],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)


def _refused(proc, *patterns: str) -> str:
    import re

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "bad_alloc" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxcnn: error: the model needs at least"), proc.stderr
    for pattern in patterns:
        assert re.search(pattern, last), last
    return last


def test_summary_of_a_huge_dense_layer_is_refused_under_a_memory_limit(tmp_path):
    proc = _jaxcnn_limited(tmp_path, "summary", "--spec", "flatten dense(1000000000)",
                           "--input-shape", "28x28x1", "--classes", "10")
    _refused(proc, r"2\.9 TiB", r"dense_1 \(Dense\): 784,000,000,000 parameters")


def test_training_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path):
    proc = _jaxcnn_limited(tmp_path, "train", "--spec", "flatten dense(20000) dense(20000)",
                           "--dataset", "synthetic:8x8x1:10:64", "--epochs", "1", "--quiet",
                           "--workdir", str(tmp_path / "run"))
    _refused(proc, r"largest layer is dense_2 \(Dense\): 400,0[02]0,000 parameters",
             r"address-space limit")


def test_training_activations_too_large_for_memory_are_refused(tmp_path):
    proc = _jaxcnn_limited(tmp_path, "train", "--spec", "conv(100000, 3) maxpool(26) flatten softmax",
                           "--dataset", "synthetic:28x28x1:10:64", "--epochs", "1", "--quiet",
                           "--workdir", str(tmp_path / "run"))
    # One image's 26x26x100000 feature map fits (270 MB); a batch of 32 of them does not.
    _refused(proc, r"activations of 32 images in one training pass",
             r"largest layer is conv2d_1 \(Conv2D\)", r"smaller batch")


@pytest.mark.parametrize("spec", ["avgpool(2147483647, padding=same) gap",
                                  "conv(8, 100000x3, same) flatten"])
def test_a_window_far_larger_than_its_input_is_refused_before_tracing(spec):
    with pytest.raises(ShapeError, match="is larger than its input feature map 28x28 and than 1024"):
        summary(build_model(spec, 10), (28, 28, 1))
