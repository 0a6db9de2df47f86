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
