import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import ShapeError
from jaxcnn.layers import (AvgPooling2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPooling2D,
                           MaxPooling2D, SoftmaxOutput)


def _out(layer, shape, **kw):
    x = jnp.ones(shape)
    y, variables = layer.init_with_output(jax.random.key(0), x, **kw)
    return y.shape, jax.tree.map(jnp.shape, variables.get("params", {}))


@pytest.mark.parametrize("layer,shape,expected", [
    (Conv2D(8, 3), (2, 10, 10, 3), (2, 8, 8, 8)),
    (Conv2D(8, 3, padding="same"), (2, 10, 10, 3), (2, 10, 10, 8)),
    (Conv2D(8, 3, strides=2, padding="same"), (2, 9, 9, 3), (2, 5, 5, 8)),
    (Conv2D(8, (1, 5)), (1, 7, 7, 1), (1, 7, 3, 8)),
    (MaxPooling2D(2), (2, 9, 9, 4), (2, 4, 4, 4)),
    (MaxPooling2D(3, strides=1), (1, 5, 5, 1), (1, 3, 3, 1)),
    (MaxPooling2D(2, padding="same"), (1, 5, 5, 1), (1, 3, 3, 1)),
    (AvgPooling2D(2), (1, 8, 8, 2), (1, 4, 4, 2)),
    (GlobalAvgPooling2D(), (3, 5, 5, 7), (3, 7)),
    (Flatten(), (2, 5, 5, 64), (2, 1600)),
    (Dense(16), (2, 30), (2, 16)),
    (SoftmaxOutput(10), (2, 30), (2, 10)),
])
def test_output_shapes(layer, shape, expected):
    assert _out(layer, shape)[0] == expected


def test_conv_parameters_and_math():
    (shape, params) = _out(Conv2D(4, 3), (1, 5, 5, 2))
    assert params == {"kernel": (3, 3, 2, 4), "bias": (4,)}
    conv = Conv2D(1, 2, activation=None, use_bias=False)
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    y = conv.apply({"params": {"kernel": jnp.ones((2, 2, 1, 1))}}, x)
    np.testing.assert_allclose(y[0, :, :, 0], [[8, 12], [20, 24]])


def test_conv_relu_default_and_linear():
    x = -jnp.ones((1, 3, 3, 1))
    v = {"params": {"kernel": jnp.ones((1, 1, 1, 1)), "bias": jnp.zeros(1)}}
    assert float(Conv2D(1, 1).apply(v, x).min()) == 0.0
    assert float(Conv2D(1, 1, activation=None).apply(v, x).min()) == -1.0


def test_maxpool_values():
    x = jnp.array([[1.0, 2, 5, 0], [3, 4, 1, 1], [0, 0, 9, 8], [0, 7, 6, 5]])[None, :, :, None]
    np.testing.assert_array_equal(MaxPooling2D(2).apply({}, x)[0, :, :, 0], [[4, 5], [7, 9]])


@pytest.mark.parametrize("layer,shape", [
    (MaxPooling2D(3), (1, 2, 2, 1)),
    (Conv2D(4, 5), (1, 4, 4, 1)),
    (AvgPooling2D(4), (1, 3, 8, 1)),
])
def test_window_larger_than_map_is_a_clear_error(layer, shape):
    with pytest.raises(ShapeError, match="larger than its input feature map"):
        layer.init(jax.random.key(0), jnp.ones(shape))


def test_dense_needs_flat_input():
    with pytest.raises(ShapeError, match="Flatten"):
        Dense(3).init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))


def test_bad_layer_arguments():
    with pytest.raises(ShapeError, match="padding"):
        Conv2D(4, 3, padding="full").init(jax.random.key(0), jnp.ones((1, 5, 5, 1)))
    with pytest.raises(ShapeError, match="activation"):
        Conv2D(4, 3, activation="bogus").init(jax.random.key(0), jnp.ones((1, 5, 5, 1)))


# --- dropout -------------------------------------------------------------

X = jnp.ones((4, 1000))


def _drop(rate, key=0, train=True):
    rngs = {"dropout": jax.random.key(key)} if train else None
    return Dropout(rate).apply({}, X, train=train, rngs=rngs)


def test_dropout_identity_in_eval():
    np.testing.assert_array_equal(Dropout(0.5).apply({}, X), X)


def test_dropout_rate_zero_is_identity():
    np.testing.assert_array_equal(_drop(0.0), X)


def test_dropout_scales_kept_units():
    y = np.asarray(_drop(0.25))
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / 0.75, rtol=1e-6)
    assert 0.2 < (y == 0).mean() < 0.3
    # Inverted dropout keeps the expected activation.
    assert abs(y.mean() - 1.0) < 0.05


def test_dropout_masks_follow_keys():
    np.testing.assert_array_equal(_drop(0.5, key=3), _drop(0.5, key=3))
    assert not np.array_equal(_drop(0.5, key=3), _drop(0.5, key=4))


def test_dropout_without_key_while_training_is_an_error():
    with pytest.raises(ShapeError, match="PRNG key"):
        Dropout(0.5).apply({}, X, train=True)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rate_out_of_range(rate):
    with pytest.raises(ShapeError, match=r"\[0, 1\)"):
        Dropout(rate).apply({}, X)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    conv = Conv2D(4, 3, dtype=jnp.bfloat16)
    y, v = conv.init_with_output(jax.random.key(0), jnp.ones((1, 5, 5, 1)))
    assert y.dtype == jnp.bfloat16 and v["params"]["kernel"].dtype == jnp.float32
    logits = SoftmaxOutput(3, dtype=jnp.bfloat16).init_with_output(
        jax.random.key(0), jnp.ones((1, 4), jnp.bfloat16))[0]
    assert logits.dtype == jnp.float32
