"""Numerics of the fast conv/pool path against plain autodiff of the lax ops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import ops
from jaxcnn.data import Preprocess, load_dataset
from jaxcnn.models import build_model
from jaxcnn.training import create_train_state, evaluate, fit, split_keys

RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _rand(shape, dtype=jnp.float32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)


def _conv_loss(impl, strides, padding):
    def loss(x, w):
        y = ops.conv2d(x, w, strides=strides, padding=padding, impl=impl)
        # A non-uniform cotangent, so every output position weighs differently.
        return (y.astype(jnp.float32) * jnp.cos(jnp.arange(y.size).reshape(y.shape))).sum()
    return loss


CONV_CASES = [
    # x shape, kernel shape, strides, padding
    ((2, 8, 8, 1), (3, 3, 1, 4), (1, 1), "VALID"),
    ((2, 9, 7, 3), (3, 3, 3, 5), (1, 1), "SAME"),
    ((3, 11, 11, 3), (3, 3, 3, 4), (2, 2), "SAME"),
    ((2, 10, 10, 1), (3, 3, 1, 2), (2, 2), "SAME"),
    ((2, 9, 9, 2), (5, 5, 2, 3), (2, 2), "VALID"),
    ((2, 7, 8, 6), (1, 1, 6, 3), (1, 1), "VALID"),
    ((1, 6, 6, 2), (3, 2, 2, 2), (2, 1), ((1, 2), (0, 1))),
    ((2, 13, 13, 16), (3, 3, 16, 8), (1, 1), "VALID"),
    ((2, 5, 5, 3), (4, 4, 3, 2), (1, 1), "SAME"),
]


@pytest.fixture
def any_width(monkeypatch):
    """Routes convolutions of every width to the fast formulation."""
    monkeypatch.setattr(ops, "_FAST_MAX_CIN", 1 << 30)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CONV_CASES)
def test_conv2d_fast_matches_autodiff(x_shape, k_shape, strides, padding, dtype, any_width):
    assert ops.conv2d_path(x_shape, k_shape, strides=strides, padding=padding,
                           dtype=dtype, impl="fast") == "fast"
    x, w = _rand(x_shape, dtype, 1), _rand(k_shape, dtype, 2)
    out_x = ops.conv2d(x, w, strides=strides, padding=padding, impl="xla")
    out_f = ops.conv2d(x, w, strides=strides, padding=padding, impl="fast")
    assert out_f.shape == out_x.shape and out_f.dtype == out_x.dtype
    assert _rel_err(out_x, out_f) <= RTOL[dtype]
    gx = jax.grad(_conv_loss("xla", strides, padding), argnums=(0, 1))(x, w)
    gf = jax.grad(_conv_loss("fast", strides, padding), argnums=(0, 1))(x, w)
    for a, b in zip(gx, gf):
        assert b.dtype == a.dtype
        assert _rel_err(a, b) <= RTOL[dtype]


def test_wide_convolutions_stay_on_xla_for_small_batches():
    # Measured: XLA's own weight gradient wins from 8 input channels up while the batch
    # is small; beyond ~1 MiB of input its weight gradient runs chunked (same kernels).
    assert ops.conv2d_path((32, 13, 13, 32), (3, 3, 32, 64), impl="fast") == "xla"
    assert ops.conv2d_path((128, 13, 13, 32), (3, 3, 32, 64), impl="fast") == "fast"
    assert ops.conv2d_path((128, 32, 32, 3), (3, 3, 3, 32), impl="fast") == "fast"
    x, w = _rand((2, 9, 9, 8)), _rand((3, 3, 8, 4), seed=1)
    assert not _has_custom_vjp(lambda x, w: ops.conv2d(x, w, impl="fast"), x, w)


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), ((1, 1), (1, 1)))])
def test_chunked_weight_gradient_equals_xla(strides, padding):
    """20 images of 16x16x64 run their weight gradient as chunks of 16 and 4 images."""
    x, w = _rand((20, 16, 16, 64)), _rand((3, 3, 64, 8), seed=1)
    assert ops.dw_chunk_images(x.shape) == 16
    assert ops.conv2d_path(x.shape, w.shape, strides=strides, padding=padding,
                           impl="fast") == "fast"
    gx = jax.grad(_conv_loss("xla", strides, padding), argnums=(0, 1))(x, w)
    gf = jax.grad(_conv_loss("fast", strides, padding), argnums=(0, 1))(x, w)
    for a, b in zip(gx, gf):
        assert b.dtype == a.dtype and _rel_err(a, b) <= RTOL[jnp.float32]


POOL_CASES = [
    ((2, 8, 8, 3), (2, 2), "VALID"),
    ((2, 9, 7, 1), (2, 2), "VALID"),  # odd sizes: the last row/column is dropped
    ((2, 9, 7, 3), (2, 2), "SAME"),  # odd sizes: padded
    ((2, 11, 10, 4), (3, 2), "SAME"),
    ((2, 12, 12, 2), (3, 3), "VALID"),
    ((1, 7, 6, 2), (2, 3), ((1, 0), (0, 2))),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape,window,padding", POOL_CASES)
def test_max_pool_fast_matches_autodiff(shape, window, padding, dtype):
    pool = ops.max_pool
    assert ops.max_pool_path(shape, window, padding=padding, dtype=dtype, impl="fast") == "fast"
    x = _rand(shape, dtype, 5)

    def loss(impl):
        def f(x):
            y = pool(x, window, padding=padding, impl=impl).astype(jnp.float32)
            return (y * jnp.sin(jnp.arange(y.size).reshape(y.shape))).sum()
        return f

    out_x = pool(x, window, padding=padding, impl="xla")
    out_f = pool(x, window, padding=padding, impl="fast")
    assert out_f.shape == out_x.shape and out_f.dtype == out_x.dtype
    assert _rel_err(out_x, out_f) <= RTOL[dtype]
    assert _rel_err(jax.grad(loss("xla"))(x), jax.grad(loss("fast"))(x)) <= RTOL[dtype]


@pytest.mark.parametrize("winners", [True, False])
def test_max_pool_ties_give_one_winner_like_xla(winners, monkeypatch):
    # Both backward forms: from the saved winners' positions (the default) or
    # from the saved pool input and output.
    monkeypatch.setattr(ops, "_fast_max_pool",
                        functools.partial(ops._fast_max_pool, save_input=not winners))
    # ReLU outputs are full of exact ties (zeros); rounding makes positive ties too.
    x = jnp.maximum(jnp.round(_rand((2, 8, 8, 3), seed=6)), 0.0)
    cot = _rand((2, 4, 4, 3), seed=7)
    gx = jax.vjp(lambda x: ops.max_pool(x, impl="xla"), x)[1](cot)[0]
    gf = jax.vjp(lambda x: ops.max_pool(x, impl="fast"), x)[1](cot)[0]
    np.testing.assert_array_equal(np.asarray(gx), np.asarray(gf))
    # Each window passes its cotangent to exactly one element.
    per_window = (gf != 0).reshape(2, 4, 2, 4, 2, 3).sum(axis=(2, 4))
    assert int(per_window.max()) == 1
    np.testing.assert_allclose(gf.sum(), cot.sum(), rtol=1e-5)


def test_fast_path_under_jit_and_vmap_of_grad(any_width):
    x, w = _rand((4, 6, 6, 2)), _rand((3, 3, 2, 3), seed=1)

    def f(impl):
        return lambda x, w: ops.max_pool(jax.nn.relu(ops.conv2d(x, w, padding="SAME",
                                                                  impl=impl)), impl=impl).sum()

    per_example = jax.jit(jax.vmap(jax.grad(f("fast"), argnums=1), in_axes=(0, None)))
    reference = jax.vmap(jax.grad(f("xla"), argnums=1), in_axes=(0, None))
    assert _rel_err(reference(x[:, None], w), per_example(x[:, None], w)) <= 1e-5


@pytest.mark.parametrize("call,expected", [
    (lambda: ops.conv2d_path((1, 8, 8, 1), (3, 3, 1, 2), dilation=(2, 2), impl="fast"), "xla"),
    (lambda: ops.conv2d_path((1, 8, 8, 1), (3, 3, 1, 2), dtype=jnp.int32, impl="fast"), "xla"),
    (lambda: ops.conv2d_path((1, 8, 8, 1), (3, 3, 1, 2), padding=((-1, 0), (0, 0)),
                             impl="fast"), "xla"),
    (lambda: ops.max_pool_path((1, 8, 8, 1), (3, 3), (2, 2), impl="fast"), "xla"),
    (lambda: ops.max_pool_path((1, 8, 8, 1), (2, 2), (1, 1), impl="fast"), "xla"),
    (lambda: ops.conv2d_path((1, 8, 8, 1), (3, 3, 1, 2), impl="xla"), "xla"),
    (lambda: ops.max_pool_path((1, 8, 8, 1), (2, 2), impl="xla"), "xla"),
    (lambda: ops.conv2d_path((1, 8, 8, 1), (3, 3, 1, 2), impl="auto", backend="gpu"), "xla"),
    (lambda: ops.max_pool_path((1, 8, 8, 1), (2, 2), impl="auto", backend="tpu"), "xla"),
    (lambda: ops.conv2d_path((1, 8, 8, 1), (3, 3, 1, 2), impl="auto", backend="cpu"), "fast"),
    (lambda: ops.max_pool_path((1, 8, 8, 1), (2, 2), impl="auto", backend="cpu"), "fast"),
])
def test_path_selection(call, expected):
    assert call() == expected


def _has_custom_vjp(fn, *args):
    """Whether ``fn`` runs a fast op (a custom VJP) when differentiated."""
    return any(path == "fast" for _, path in ops.paths(fn, *args))


def test_unsupported_cases_run_the_xla_path_and_still_differentiate():
    x, w = _rand((2, 9, 9, 2)), _rand((3, 3, 2, 3), seed=1)
    assert _has_custom_vjp(lambda x, w: ops.conv2d(x, w, impl="fast"), x, w)
    dilated = lambda x, w: ops.conv2d(x, w, dilation=(2, 2), impl="fast").sum()  # noqa: E731
    assert not _has_custom_vjp(dilated, x, w)
    g = jax.grad(dilated, argnums=1)(x, w)
    ref = jax.grad(lambda w: ops._xla_conv2d(x, w, strides=(1, 1), padding="VALID",
                                             dilation=(2, 2)).sum())(w)
    assert _rel_err(ref, g) <= 1e-6
    overlapping = lambda x: ops.max_pool(x, (3, 3), (2, 2), impl="fast").sum()  # noqa: E731
    assert not _has_custom_vjp(overlapping, x)
    assert jax.grad(overlapping)(x).shape == x.shape


def test_switch_forces_each_path():
    x, w = _rand((2, 8, 8, 1)), _rand((3, 3, 1, 2), seed=1)
    conv = lambda impl: (lambda x, w: ops.conv2d(x, w, impl=impl))  # noqa: E731
    pool = lambda impl: (lambda x: ops.max_pool(x, impl=impl))  # noqa: E731
    assert _has_custom_vjp(conv("fast"), x, w) and _has_custom_vjp(pool("fast"), x)
    assert not _has_custom_vjp(conv("xla"), x, w) and not _has_custom_vjp(pool("xla"), x)
    auto = jax.default_backend() == "cpu"
    assert _has_custom_vjp(conv("auto"), x, w) == auto
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.conv2d(x, w, impl="fastest")


@pytest.mark.parametrize("name", ["keras_convnet", "seed_cnn"])
def test_model_impl_reaches_every_layer(name):
    x = jnp.zeros((2, 28, 28, 1))
    for impl in ("fast", "xla", "auto"):
        model = build_model(name, 10, impl=impl)
        params = model.init(jax.random.key(0), x)["params"]
        loss = lambda p: model.apply({"params": p}, x).sum()  # noqa: E731
        used = ops.paths(jax.grad(loss), params)
        fast = impl == "fast" or (impl == "auto" and jax.default_backend() == "cpu")
        # The image conv (1 input channel) and both max pools take the fast
        # path; the 32-channel conv keeps XLA's kernels.
        path = "fast" if fast else "xla"
        assert used == [("conv2d", path), ("max_pool", path), ("conv2d", "xla"), ("max_pool", path)]
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        # The fast max pool leaves no reduce_window (XLA's pooling) behind.
        assert ("reduce_window" in jaxpr) == (not fast)


@pytest.mark.parametrize("winners", [True, False])
@pytest.mark.parametrize("layers", ["conv", "conv-relu", "conv-relu-conv"])
@pytest.mark.parametrize("x_shape,padding", [((32, 8, 8, 1), "SAME"), ((8, 11, 9, 3), "VALID"),
                                             ((16, 28, 28, 1), "SAME")])
def test_jitted_gradient_of_conv_then_pool_matches_autodiff(x_shape, padding, layers, winners,
                                                           monkeypatch):
    """The gradient of a whole jitted conv -> ReLU -> pool stack, as in a train step.

    XLA fuses the image conv into the pool's consumers, each evaluating it on
    its own; the pool must pick its winners from one evaluation (a pooled
    max compared with a re-evaluated input once matched no element).
    """
    monkeypatch.setattr(ops, "_fast_max_pool",
                        functools.partial(ops._fast_max_pool, save_input=not winners))
    c = x_shape[3]
    params = {"w1": _rand((3, 3, c, 8), seed=1), "b1": _rand((8,), seed=2),
              "w2": _rand((3, 3, 8, 4), seed=3)}
    x = _rand(x_shape, seed=4)

    def loss(impl):
        def f(p, x):  # x an argument, as in a train step (a constant folds differently)
            h = ops.conv2d(x, p["w1"], padding=padding, impl=impl) + p["b1"]
            h = ops.max_pool(jax.nn.relu(h) if "relu" in layers else h, impl=impl)
            if layers.endswith("-conv"):
                h = ops.max_pool(jax.nn.relu(ops.conv2d(h, p["w2"], padding="SAME", impl=impl)),
                                 impl=impl)
            return jnp.sum(jnp.sin(h))
        return f

    reference = jax.jit(jax.grad(loss("xla")))(params, x)
    fast = jax.jit(jax.grad(loss("fast")))(params, x)
    for name in (("w1", "b1", "w2") if layers.endswith("-conv") else ("w1", "b1")):
        assert _rel_err(reference[name], fast[name]) <= 1e-5, name


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_fast_training_reaches_the_accuracy_of_xla(digits):
    pre = Preprocess.fit(digits.train.images)
    acc = {}
    for impl in ("xla", "fast"):
        model = build_model("conv(16, 3, padding=same) maxpool(2) conv(16, 3, padding=same) "
                            "avgpool(2) flatten dropout(0.25) dense(32, relu) softmax",
                            digits.num_classes, impl=impl)
        keys = split_keys(0)
        state = create_train_state(model, digits.image_shape, optax.adam(3e-3), keys.init)
        state = fit(state, digits, keys=keys, epochs=8, batch_size=64, preprocess=pre).state
        acc[impl] = evaluate(state, digits.test, pre)["accuracy"]
    assert acc["xla"] > 0.9
    # Same seeds, data order and dropout masks: only float rounding differs.
    assert abs(acc["fast"] - acc["xla"]) <= 0.02


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape,window,padding", POOL_CASES)
def test_avg_pool_fast_matches_autodiff(shape, window, padding, dtype):
    assert ops.avg_pool_path(shape, window, padding=padding, dtype=dtype, impl="fast") == "fast"
    x = _rand(shape, dtype, 8)

    def loss(impl):
        def f(x):
            y = ops.avg_pool(x, window, padding=padding, impl=impl).astype(jnp.float32)
            return (y * jnp.sin(jnp.arange(y.size).reshape(y.shape))).sum()
        return f

    out_x = ops.avg_pool(x, window, padding=padding, impl="xla")
    out_f = ops.avg_pool(x, window, padding=padding, impl="fast")
    assert out_f.shape == out_x.shape and out_f.dtype == out_x.dtype
    assert _rel_err(out_x, out_f) <= RTOL[dtype]
    assert _rel_err(jax.grad(loss("xla"))(x), jax.grad(loss("fast"))(x)) <= RTOL[dtype]


def test_avg_pool_paths_and_fallback():
    x = _rand((2, 9, 9, 3))
    assert ops.paths(lambda x: ops.avg_pool(x, impl="fast"), x) == [("avg_pool", "fast")]
    assert ops.paths(lambda x: ops.avg_pool(x, impl="xla"), x) == [("avg_pool", "xla")]
    # Overlapping windows are not covered: XLA's reduce_window runs, and differentiates.
    overlap = lambda x: ops.avg_pool(x, (3, 3), (2, 2), impl="fast")  # noqa: E731
    assert ops.paths(overlap, x) == [("avg_pool", "xla")]
    ref = ops.avg_pool(x, (3, 3), (2, 2), impl="xla")
    np.testing.assert_array_equal(np.asarray(overlap(x)), np.asarray(ref))
    assert jax.grad(lambda x: overlap(x).sum())(x).shape == x.shape


def test_compiler_options_follow_the_path():
    assert ops.compiler_options("xla") == {}
    assert ops.compiler_options("auto", backend="gpu") == {}
    assert ops.compiler_options("fast", backend="tpu") == {}
    opts = ops.compiler_options("fast", backend="cpu")
    # This jaxlib knows the option (the fast path relies on it here); a jaxlib
    # that does not would get {} and XLA's defaults.
    assert opts == dict(ops._CPU_COMPILER_OPTIONS)
    assert "INDIVIDUAL_CONVOLUTION" not in opts["xla_cpu_experimental_ynn_fusion_type"]
    # A step compiled with them computes what the default compilation does.
    x, w = _rand((4, 9, 9, 8)), _rand((3, 3, 8, 16), seed=1)
    f = lambda x, w: jax.grad(lambda w: (ops.conv2d(x, w, impl="xla") ** 2).sum())(w)  # noqa: E731
    a = jax.jit(f)(x, w)
    b = jax.jit(f, compiler_options=opts)(x, w)
    assert _rel_err(a, b) <= 1e-5


def test_unknown_compiler_options_are_dropped(monkeypatch):
    monkeypatch.setattr(ops, "_CPU_COMPILER_OPTIONS", (("xla_cpu_no_such_option_jaxcnn", "1"),))
    assert ops.compiler_options("fast", backend="cpu") == {}
