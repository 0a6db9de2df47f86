"""Numerics and tracing checks (issue 15): the reported cross-entropy against float64,
and `ops.paths` reporting the conv/pool paths on every call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops
from jaxcnn.models import build_model
from jaxcnn.training import cross_entropy

EPS32 = float(np.finfo(np.float32).eps)


def _reference(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy in float64 of the float32 logits (shifted by the row maximum)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    return lse - np.take_along_axis(z, labels[:, None], axis=-1)[:, 0]


def _bound(ref: np.ndarray, classes: int) -> np.ndarray:
    """Float32 rounding of the computation: a few ulps of the loss, plus the rounding of
    a sum of ``classes`` exponentials (relative, so absolute in its logarithm)."""
    return EPS32 * (2 * np.abs(ref) + np.sqrt(classes) + 4)


def _cases():
    rng = np.random.default_rng(0)
    for scale in 10.0 ** np.arange(0, 7):
        for sign in (1, -1):
            s = np.float32(sign * scale)
            up = np.nextafter(s, np.float32(np.inf))
            yield f"tie {sign * scale:g}", np.array([[s, s]] * 2, np.float32), np.array([0, 1])
            yield (f"near tie {sign * scale:g}", np.array([[s, up], [up, s]], np.float32),
                   np.array([0, 0]))
            for classes in (3, 10, 1000):
                # Logits clustered around the scale, a few units apart (and some exact
                # ties), as a confident but unsure classifier gives them.
                spread = rng.choice([0.0, 0.5, 3.0], size=(4, 1))
                z = s + (rng.standard_normal((4, classes)) * spread).astype(np.float32)
                z[:, 1] = z[:, 0]
                labels = rng.integers(0, classes, 4)
                labels[0] = int(np.argmax(z[0]))
                yield f"{classes} classes at {sign * scale:g}", z.astype(np.float32), labels
    # Far apart (the loss is the difference itself), and moderate logits.
    yield "far apart", np.array([[0.0, 1e6], [-1e6, 1e6], [3e5, -2e5]], np.float32), \
        np.array([0, 0, 1])
    yield "moderate", rng.standard_normal((64, 10)).astype(np.float32) * 4, \
        rng.integers(0, 10, 64)


CASES = list(_cases())


@pytest.mark.parametrize("name,logits,labels", CASES, ids=[c[0] for c in CASES])
def test_cross_entropy_matches_float64(name, logits, labels):
    got = np.asarray(jax.jit(cross_entropy)(jnp.asarray(logits), jnp.asarray(labels)))
    assert got.dtype == np.float32
    ref = _reference(logits, labels)
    err = np.abs(got.astype(np.float64) - ref)
    bound = _bound(ref, logits.shape[-1])
    assert np.all(err <= bound), (name, got, ref, err.max(), bound)


def test_nearly_tied_large_logits_give_ln2():
    # The case of the issue: optax 0.2.8 gives 0.6933594 (error 2.1e-4).
    for scale in (1e2, 1e4, 1e5, 1e6):
        for sign in (1, -1):
            loss = float(cross_entropy(jnp.array([[sign * scale] * 2]), jnp.array([0]))[0])
            assert abs(loss - np.log(2)) <= EPS32, (scale, loss)
    got = cross_entropy(jnp.array([[0.0, 1000.0], [1000.0, 0.0]]), jnp.array([0, 0]))
    np.testing.assert_array_equal(np.asarray(got), [1000.0, 0.0])


def test_cross_entropy_of_bfloat16_logits_is_float32():
    logits = jnp.array([[1e4, 1e4, 1e4 - 64]], jnp.bfloat16)
    got = cross_entropy(logits, jnp.array([2]))
    assert got.dtype == jnp.float32
    ref = _reference(np.asarray(logits.astype(jnp.float32)), np.array([2]))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2 * EPS32)


def _reference_loss(logits, labels):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


@pytest.mark.parametrize("name,logits,labels", CASES[::5], ids=[c[0] for c in CASES[::5]])
def test_gradients_match_log_softmax(name, logits, labels):
    z, y = jnp.asarray(logits), jnp.asarray(labels)
    w = jnp.linspace(0.5, 1.5, len(labels))  # a weighted sum, so rows differ
    grad = jax.grad(lambda z: (cross_entropy(z, y) * w).sum())(z)
    ref = jax.grad(lambda z: (_reference_loss(z, y) * w).sum())(z)
    # Both are w * (softmax - one_hot): entries within [-1.5, 1.5].
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref), rtol=0, atol=8 * EPS32)
    # And against float64.
    z64 = np.asarray(logits, np.float64)
    p = np.exp(z64 - z64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    np.testing.assert_allclose(np.asarray(grad), p * np.asarray(w)[:, None], rtol=0,
                               atol=8 * EPS32)


def test_loss_unchanged_for_ordinary_logits():
    """Away from large logits the loss is the one optax gives (to float32 rounding)."""
    import optax

    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.standard_normal((256, 10)).astype(np.float32) * 3)
    y = jnp.asarray(rng.integers(0, 10, 256))
    np.testing.assert_allclose(np.asarray(cross_entropy(z, y)),
                               np.asarray(optax.softmax_cross_entropy_with_integer_labels(z, y)),
                               rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------
# ops.paths reports the paths on every call


def _conv_pool(x, w):
    return ops.max_pool(ops.conv2d(x, w, impl="fast"), impl="xla")


EXPECTED = [("conv2d", "fast"), ("max_pool", "xla")]
X = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
W = jax.ShapeDtypeStruct((3, 3, 1, 4), jnp.float32)


def test_paths_on_a_second_call_with_the_same_function():
    def f(x, w):
        return _conv_pool(x, w)

    assert ops.paths(f, X, W) == EXPECTED
    assert ops.paths(f, X, W) == EXPECTED
    assert ops.paths(_conv_pool, X, W) == EXPECTED
    assert ops.paths(_conv_pool, X, W) == EXPECTED


def test_paths_after_the_function_was_jit_compiled():
    def f(x, w):
        return _conv_pool(x, w)

    x, w = jnp.ones(X.shape), jnp.ones(W.shape)
    jax.jit(f)(x, w).block_until_ready()
    assert ops.paths(f, x, w) == EXPECTED
    jitted = jax.jit(f)
    jitted(x, w).block_until_ready()
    assert ops.paths(jitted, x, w) == EXPECTED
    assert ops.paths(jitted, X, W) == EXPECTED
    # A jit-compiled function called inside, and the gradient of one.
    outer = lambda x, w: jitted(x, w).sum()  # noqa: E731
    outer(x, w).block_until_ready()
    assert ops.paths(outer, x, w) == EXPECTED
    assert ops.paths(jax.grad(outer, argnums=1), x, w) == EXPECTED
    assert ops.paths(jax.grad(outer, argnums=1), x, w) == EXPECTED


def test_paths_of_a_model_every_time():
    model = build_model("conv(4,3) maxpool(2) flatten softmax", 3, impl="fast")
    x = jnp.zeros((2, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    apply = jax.jit(model.apply)
    apply(variables, x).block_until_ready()
    first = ops.paths(model.apply, variables, x)
    assert first == [("conv2d", "fast"), ("max_pool", "fast")]
    assert ops.paths(model.apply, variables, x) == first
    assert ops.paths(apply, variables, x) == first
