"""Batch normalisation, residual blocks, the ResNet zoo, bfloat16 and multi-step calls."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import checkpoint as ckpt
from jaxcnn import sharding as shd
from jaxcnn.config import Config, override
from jaxcnn.data import Preprocess
from jaxcnn.errors import ShapeError, SpecError
from jaxcnn.layers import BatchNorm, BatchNorm1D, BatchNorm2D
from jaxcnn.models import build_model, parse_spec, summary
from jaxcnn.run import train_and_evaluate
from jaxcnn.training import (Callback, TrainProgram, create_train_state, eval_step,
                             resolve_policy, train_step)

BN_SPEC = ("conv(8, 3, padding=same, activation=none, use_bias=false) bn(relu) "
           "residual(conv(8, 3, padding=1, activation=none, use_bias=false) bn, "
           "shortcut=conv(8, 1, activation=none) bn) relu maxpool(2) flatten softmax")


# Test data comes from NumPy's generator, not jax.random: on XLA's CPU backend every new
# shape of jax.random.normal or randint compiles a program of its own (about a second
# each), and the tests below use seven shapes.


def _inputs(shape=(16, 5, 5, 3), seed=0):
    # A large mean and a non-unit scale, so that normalising matters.
    rng = np.random.default_rng(seed)
    return jnp.asarray(3.0 + 2.0 * rng.standard_normal(shape, np.float32))


def _state(spec=BN_SPEC, shape=(8, 8, 1), classes=10, dtype=None, tx=None):
    # XLA's own kernels: the CPU fast path would compile custom gradients for nothing here.
    model = build_model(spec, classes, dtype=dtype, impl="xla")
    return create_train_state(model, shape, tx or optax.adam(1e-2), jax.random.key(0))


def _batch(n=16, shape=(8, 8, 1), classes=10, seed=1):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.standard_normal((n, *shape), np.float32)),
            "label": jnp.asarray(rng.integers(0, classes, n, dtype=np.int32))}


# ---------------------------------------------------------------------------
# The layer against flax.linen.BatchNorm


def test_batchnorm_matches_flax_in_training_and_evaluation():
    x = _inputs()
    ours, theirs = BatchNorm(momentum=0.9, epsilon=1e-5), nn.BatchNorm(momentum=0.9,
                                                                        epsilon=1e-5)
    v = ours.init(jax.random.key(0), x)
    w = theirs.init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, w)
    y, upd = ours.apply(v, x, train=True, mutable=["batch_stats"])
    z, wupd = theirs.apply(w, x, use_running_average=False, mutable=["batch_stats"])
    np.testing.assert_allclose(y, z, rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(upd["batch_stats"][k], wupd["batch_stats"][k], rtol=1e-5)
    # Evaluation normalises by the running statistics, like use_running_average=True.
    x2 = _inputs(seed=1)
    ye = ours.apply({**v, **upd}, x2)
    ze = theirs.apply({**w, **wupd}, x2, use_running_average=True)
    np.testing.assert_allclose(ye, ze, rtol=1e-5, atol=1e-5)


def test_training_uses_the_batch_and_evaluation_does_not():
    x = _inputs((8, 4))
    bn = BatchNorm1D()
    v = bn.init(jax.random.key(0), x)
    # Training output: zero mean and unit variance per feature over the batch.
    y, _ = bn.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(0), 1.0, rtol=1e-3)
    # Evaluation: each example on its own, whatever else is in the batch.
    alone = bn.apply(v, x[:1])
    together = bn.apply(v, x)[:1]
    np.testing.assert_array_equal(alone, together)
    # Training without a mutable collection is a clear error, not a silent no-op.
    with pytest.raises(ShapeError, match="mutable"):
        bn.apply(v, x, train=True)


def test_rank_checked_forms_and_bad_arguments():
    with pytest.raises(ShapeError, match="BatchNorm1D"):
        BatchNorm2D().init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(ShapeError, match="BatchNorm2D"):
        BatchNorm1D().init(jax.random.key(0), jnp.ones((2, 3, 3, 1)))
    with pytest.raises(ShapeError, match="momentum"):
        BatchNorm(momentum=1.0).init(jax.random.key(0), jnp.ones((2, 3)))


def test_bfloat16_normalises_in_float32_and_keeps_float32_state():
    x = _inputs((8, 4, 4, 2)).astype(jnp.bfloat16)
    bn = BatchNorm(dtype=jnp.bfloat16)
    v = bn.init(jax.random.key(0), x)
    y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((v, upd)))
    # The statistics are those of the (bfloat16) inputs computed in float32.
    np.testing.assert_allclose(upd["batch_stats"]["mean"],
                               0.1 * x.astype(jnp.float32).mean((0, 1, 2)), rtol=1e-5)


# ---------------------------------------------------------------------------
# Batch statistics through the train step


# The plain SGD step of the tests below: one optimiser object, so that they share the
# compiled step (a train state's optimiser is a static argument of the compiled program).
_SGD = optax.sgd(0.1)


def test_train_step_updates_statistics_and_eval_uses_them():
    state = _state(tx=_SGD)
    batch = _batch(n=32)
    new, metrics = jax.jit(train_step)(state, batch, jax.random.key(0))
    before, after = jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats)
    assert len(after) == 6 and all(a.dtype == jnp.float32 for a in after)
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # eval_step reads state.batch_stats: other statistics, other loss.
    m1 = eval_step(new, batch)
    m2 = eval_step(new.replace(batch_stats=state.batch_stats), batch)
    assert float(m1["loss"]) != float(m2["loss"])


def test_micro_batches_update_statistics_once_with_their_mean():
    state = _state(tx=optax.sgd(0.0))
    batch = _batch()
    step = jax.jit(train_step, static_argnames="micro_batches")
    new, _ = step(state, batch, jax.random.key(0), micro_batches=2)
    halves = [step(state, {k: v[a:b] for k, v in batch.items()}, jax.random.key(0))[0]
              for a, b in ((0, 8), (8, 16))]
    expected = jax.tree.map(lambda p, q: (p + q) / 2, halves[0].batch_stats,
                            halves[1].batch_stats)
    for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_auto_policy_keeps_a_batch_norm_batch_whole():
    assert resolve_policy(128, impl="fast", backend="cpu").micro_batches == 4
    policy = resolve_policy(128, impl="fast", backend="cpu", batch_norm=True)
    assert (policy.micro_batches, policy.chunks) == (1, 1)
    # Asked for explicitly, the batch is still split.
    assert resolve_policy(128, impl="fast", backend="cpu", micro_batches=2,
                          batch_norm=True).micro_batches == 2


def test_statistics_over_8_devices_equal_one_device():
    """A batch sharded over 8 CPU devices is normalised by the global batch's statistics:
    the sums differ from one device's only in reduction order (tolerance 1e-5 relative)."""
    assert len(jax.devices()) >= 8
    # SGD, not Adam: Adam's first step is lr * sign(gradient), and the gradients of the
    # biases just before a batch norm are rounding noise around 0.
    state, batch = _state(tx=_SGD), _batch(n=32)
    one, m1 = jax.jit(train_step)(state, batch, jax.random.key(0))  # the step compiled above
    mesh = shd.make_mesh(8)
    sharded_state = jax.device_put(state, shd.replicated(mesh))
    sharded_batch = jax.device_put(batch, shd.batch_sharding(mesh))
    eight, m8 = jax.jit(train_step)(sharded_state, sharded_batch, jax.random.key(0))
    assert eight.batch_stats["batch_norm_1"]["mean"].sharding.mesh.devices.size == 8
    for a, b in zip(jax.tree.leaves((one.batch_stats, one.params)),
                    jax.tree.leaves((eight.batch_stats, eight.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)


def test_bfloat16_model_keeps_parameters_optimiser_state_and_loss_float32():
    state = _state(dtype="bfloat16")
    new, metrics = jax.jit(train_step)(state, _batch(), jax.random.key(0))
    leaves = jax.tree.leaves((new.params, new.opt_state, new.batch_stats))
    assert all(a.dtype in (jnp.float32, jnp.int32) for a in leaves)
    assert metrics["loss"].dtype == jnp.float32
    logits = new.apply_fn(new.variables(), _batch()["image"])
    assert logits.dtype == jnp.float32
    # And the layers computed in bfloat16: the float32 model gives other logits.
    f32 = state.replace(apply_fn=_state().apply_fn)
    assert not np.array_equal(state.apply_fn(state.variables(), _batch()["image"]),
                              f32.apply_fn(f32.variables(), _batch()["image"]))


# ---------------------------------------------------------------------------
# K steps per compiled call


@pytest.mark.parametrize("streaming", [False, True], ids=["gather", "streaming"])
def test_k_steps_per_call_equal_k_single_steps(streaming):
    state = _state(tx=optax.sgd(0.1, momentum=0.9))
    pre = Preprocess(1.0, (0.0,), (1.0,))
    policy = resolve_policy(8, impl="xla", backend="cpu")
    spe = None if streaming else 4
    single = TrainProgram(policy, 8, pre, spe, label_smoothing=0.1)
    multi = dataclasses.replace(single, steps_per_call=4)
    data = _batch(n=32)
    images, labels = data["image"], data["label"]
    perm = jnp.arange(32, dtype=jnp.int32)[::-1]
    key = jax.random.key(3)

    def batches(i):
        return (images[i * 8:(i + 1) * 8], labels[i * 8:(i + 1) * 8])

    # Steps donate their state: each run starts from its own copy.
    s1, c1 = jax.tree.map(jnp.copy, state), single.init_carry(state)
    for i in range(4):
        s1, c1 = single.step(s1, c1, batches(i) if streaming else (images, labels, perm), key)
    stacked = (images.reshape(4, 8, 8, 8, 1), labels.reshape(4, 8))
    s4, c4 = multi.step(jax.tree.map(jnp.copy, state), multi.init_carry(state),
                        stacked if streaming else (images, labels, perm), key)
    assert int(s4.step) == int(s1.step) == 4
    # The same arithmetic; XLA compiles the loop body as a program of its own, so fusion
    # may round differently (measured: 5e-6 relative at most after 4 steps).
    for a, b in zip(jax.tree.leaves((s1, c1)), jax.tree.leaves((s4, c4))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state, step):
        return step >= self.step


def _config(**extra):
    return override(Config(), {
        "model.name": "conv(4, 3, padding=same, activation=none, use_bias=false) bn(relu) "
                      "maxpool(2) flatten dense(16) bn1d(relu) softmax",
        "data.batch_size": 64, "data.validation_fraction": 0.0, "train.epochs": 2,
        "train.num_devices": 1, "checkpoint.min_interval_seconds": 0, **extra})


def _arrays(workdir, sharding="numpy"):
    r = ckpt.load(workdir, "latest", sharding=sharding)
    return r, jax.tree.leaves(ckpt.state_arrays(r.state))


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("bn_run"))
    out = train_and_evaluate(_config(), workdir, progress=False)
    return workdir, out


def test_batch_statistics_are_checkpointed_and_resumed_bit_exactly(bn_run, tmp_path):
    ref_dir, ref_out = bn_run
    restored, ref_leaves = _arrays(ref_dir)
    assert "batch_stats" in ckpt.state_arrays(restored.state)
    assert set(restored.state.batch_stats) == {"batch_norm_1", "batch_norm1d_1"}
    workdir = str(tmp_path / "run")
    first = train_and_evaluate(_config(), workdir, progress=False, callbacks=[StopAt(31)])
    assert first["stopped_early"]
    out = train_and_evaluate(_config(), workdir, progress=False)
    _, leaves = _arrays(workdir)
    assert len(leaves) == len(ref_leaves)
    for a, b in zip(leaves, ref_leaves):
        np.testing.assert_array_equal(a, b)
    assert out["test_accuracy"] == ref_out["test_accuracy"]


def test_batch_statistics_restore_onto_another_device_layout(bn_run):
    ref_dir, _ = bn_run
    _, expected = _arrays(ref_dir)
    mesh = shd.make_mesh(4)
    r, leaves = _arrays(ref_dir, shd.replicated(mesh))
    assert all(x.sharding.mesh.devices.size == 4 for x in leaves)
    for a, b in zip(leaves, expected):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_fit_with_steps_per_call_matches_one_step_per_call(bn_run, tmp_path):
    """22 steps per epoch as 5 calls of 4 steps and 2 single steps: the same run."""
    ref_dir, ref_out = bn_run
    out = train_and_evaluate(_config(**{"train.steps_per_call": 4}), str(tmp_path / "k4"),
                             progress=False)
    _, leaves = _arrays(str(tmp_path / "k4"))
    _, expected = _arrays(ref_dir)
    for a, b in zip(leaves, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert out["steps"] == ref_out["steps"] == 44


# ---------------------------------------------------------------------------
# Residual blocks and the zoo


@pytest.mark.parametrize("name,shape,classes,params", [
    ("resnet18", (224, 224, 3), 1000, 11_689_512),
    ("resnet50", (224, 224, 3), 1000, 25_557_032),
    ("resnet18_cifar", (32, 32, 3), 10, 11_173_962),
    ("cifar_speed", (32, 32, 3), 10, 1_971_640),
])
def test_zoo_parameter_counts(name, shape, classes, params):
    s = summary(build_model(name, classes), shape)
    assert s.params == params
    if name.startswith("resnet"):  # summary shows the blocks and their layers
        block = next(r for r in s.rows if r.kind == "Residual")
        assert block.children and sum(c.params for c in block.children) == block.params
        assert "  conv2d_1 (Conv2D)" in str(s)


def test_residual_spec_round_trips_and_bad_specs_point_at_the_token():
    specs = parse_spec(BN_SPEC)
    assert parse_spec(" ".join(s.text() for s in specs)) == specs
    with pytest.raises(SpecError) as e:
        parse_spec("residual(conv(8, 3) bnn)")
    lines = str(e.value).splitlines()
    assert "unknown layer 'bnn'" in lines[0]
    assert lines[2].index("^") - 2 == lines[1].index("bnn") - 2
    with pytest.raises(SpecError, match="missing '\\)' to close residual"):
        parse_spec("residual(conv(8, 3) bn")
    with pytest.raises(SpecError, match="shortcut is given twice"):
        parse_spec("residual(conv(8, 3), shortcut=bn, shortcut=bn)")


def test_skip_with_another_shape_names_both_shapes():
    model = build_model("residual(conv(16, 3, 2, padding=1)) gap softmax", 10)
    with pytest.raises(ShapeError) as e:
        summary(model, (8, 8, 3))
    assert "(4, 4, 16)" in str(e.value) and "(8, 8, 3)" in str(e.value)
    assert "shortcut=conv(16, 1, 2" in str(e.value)
