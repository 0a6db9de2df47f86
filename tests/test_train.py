import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.config import Config, OptimizerConfig, override
from jaxcnn.data import Preprocess, from_arrays, load_dataset
from jaxcnn.errors import ConfigError, NonFiniteLossError
from jaxcnn.models import build_model
from jaxcnn.run import prepare, train_and_evaluate
from jaxcnn.training import (create_train_state, cross_entropy, eval_step, evaluate, fit,
                          make_optimizer, predict, split_keys, train_step, learning_rate_schedule)

SMALL = "conv(8, 3, padding=same) maxpool(2) dropout(0.25) flatten dense(16, relu) softmax"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _state(ds, spec=SMALL, lr=3e-3, seed=0):
    model = build_model(spec, ds.num_classes)
    return create_train_state(model, ds.image_shape, optax.adam(lr), split_keys(seed).init)


def test_train_steps_lower_the_loss(digits):
    state = _state(digits)
    pre = Preprocess.fit(digits.train.images)
    batch = {"image": pre(digits.train.images[:64]), "label": digits.train.labels[:64]}
    step = jax.jit(train_step, donate_argnums=0)
    key = split_keys(0).dropout
    first = None
    for _ in range(40):
        state, m = step(state, batch, key)
        first = first if first is not None else float(m["loss"])
    assert int(state.step) == 40
    assert float(eval_step(state, batch)["loss"]) < 0.6 * first


def test_train_step_runs_without_jit(digits):
    state = _state(digits)
    pre = Preprocess.fit(digits.train.images)
    batch = {"image": pre(digits.train.images[:8]), "label": digits.train.labels[:8]}
    state, m = train_step(state, batch, jax.random.key(0))
    assert set(m) == {"loss", "accuracy"} and int(state.step) == 1


def _fit(ds, epochs=2, seed=0, **kw):
    keys = split_keys(seed)
    state = _state(ds, seed=seed)
    return fit(state, ds, keys=keys, epochs=epochs, batch_size=64,
               preprocess=Preprocess.fit(ds.train.images), progress=False, **kw)


def test_same_seed_gives_bit_identical_parameters(digits):
    a, b = _fit(digits, seed=3), _fit(digits, seed=3)
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = _fit(digits, seed=4)
    assert not np.array_equal(jax.tree.leaves(a.state.params)[0], jax.tree.leaves(c.state.params)[0])


def test_fit_split_in_two_equals_one_run(digits):
    """Keys derive from the step, so stopping and continuing changes nothing."""
    whole = _fit(digits, epochs=2)
    keys = split_keys(0)
    pre = Preprocess.fit(digits.train.images)

    class StopAt:
        def on_train_start(self, s): pass
        def on_step_end(self, s, step): return step == 30
        def on_epoch_end(self, s, r): pass
        def on_train_end(self, s, h): pass

    part = fit(_state(digits), digits, keys=keys, epochs=2, batch_size=64, preprocess=pre,
               progress=False, callbacks=[StopAt()])
    assert int(part.state.step) == 30
    rest = fit(part.state, digits, keys=keys, epochs=2, batch_size=64, preprocess=pre,
               progress=False)
    for x, y in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(rest.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_history_records(digits):
    ds = load_dataset("digits", validation_fraction=0.1)
    result = _fit(ds, epochs=2, learning_rate=lambda s: 1e-3)
    r = result.history[-1]
    assert r["epoch"] == 2 and r["step"] == 2 * (len(ds.train) // 64)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds", "images_per_s",
                "learning_rate"):
        assert key in r


def test_early_stopping_needs_validation(digits):
    with pytest.raises(ConfigError, match="validation"):
        _fit(digits, early_stopping_patience=2)


def test_early_stopping_stops_and_restores_best():
    ds = load_dataset("digits", validation_fraction=0.2)
    result = _fit(ds, epochs=60, early_stopping_patience=1, early_stopping_metric="val_accuracy")
    assert result.stopped_early and len(result.history) < 60


def test_nan_loss_stops_with_the_step_and_keeps_last_good_state(digits):
    model = build_model(SMALL, 10)
    # A learning rate this large sends the loss to inf/NaN within a few steps.
    state = create_train_state(model, digits.image_shape, optax.sgd(1e12), split_keys(0).init)
    with pytest.raises(NonFiniteLossError, match="at step") as err:
        fit(state, digits, keys=split_keys(0), epochs=3, batch_size=64,
            preprocess=Preprocess.fit(digits.train.images), progress=False)
    bad = err.value.step
    assert bad >= 1 and int(err.value.state.step) == bad - 1
    for p in jax.tree.leaves(err.value.state.params):
        assert np.isfinite(np.asarray(p)).all()


def test_evaluate_counts_every_example_once(digits):
    state = _state(digits)
    pre = Preprocess.fit(digits.train.images)
    for bs in (7, 64, 360, 1000):
        m = evaluate(state, digits.test, pre, batch_size=bs)
        assert m["count"] == 360
    ref = evaluate(state, digits.test, pre, batch_size=360)
    odd = evaluate(state, digits.test, pre, batch_size=7)
    assert abs(ref["accuracy"] - odd["accuracy"]) < 1e-6 and abs(ref["loss"] - odd["loss"]) < 1e-5


def test_predict_probabilities(digits):
    state = _state(digits)
    p = predict(state, digits.test.images[:10], Preprocess.fit(digits.train.images), batch_size=4)
    assert p.shape == (10, 10)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


def test_train_on_user_arrays_nhw_uint8():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = np.zeros((300, 12, 12), np.uint8)
    for c in range(3):  # class c lights up a band of rows: learnable
        x[y == c, c * 4:(c + 1) * 4, :] = 255
    ds = from_arrays(x, y, name="bands")
    cfg = override(Config(), {"model.name": SMALL, "train.epochs": 5, "data.batch_size": 32})
    run = prepare(cfg, ds)
    result = fit(run.state, ds, keys=run.keys, epochs=5, batch_size=32,
                 preprocess=run.preprocess, progress=False)
    assert evaluate(result.state, ds.test, run.preprocess)["accuracy"] > 0.9


def test_schedules():
    s = learning_rate_schedule(OptimizerConfig(schedule="warmup_cosine", warmup_steps=10), 100)
    assert float(s(0)) == 0.0 and abs(float(s(10)) - 1e-3) < 1e-9 and float(s(100)) < 1e-6
    for name in ("adam", "adamw", "sgd", "rmsprop", "adagrad"):
        tx = make_optimizer(OptimizerConfig(name=name, momentum=0.9 if name == "sgd" else 0.0), 10)
        tx.init({"w": jnp.zeros(2)})


def test_multi_device_training_matches_shapes(digits):
    assert jax.device_count() == 8
    cfg = override(Config(), {"model.name": SMALL, "train.epochs": 1, "data.batch_size": 64,
                              "train.num_devices": 8})
    run = prepare(cfg)
    result = fit(run.state, run.dataset, keys=run.keys, epochs=1, batch_size=64,
                 preprocess=run.preprocess, mesh=run.mesh, progress=False)
    assert int(result.state.step) == len(run.dataset.train) // 64
    with pytest.raises(ConfigError, match="divide evenly over 8 devices"):
        prepare(override(cfg, {"data.batch_size": 60}))


def test_train_and_evaluate_writes_the_run_directory(tmp_path):
    cfg = override(Config(), {"model.name": SMALL, "train.epochs": 2, "train.num_devices": 1})
    out = train_and_evaluate(cfg, str(tmp_path), progress=False)
    for name in ("config.json", "meta.json", "history.jsonl", "history.csv",
                 "learning_curves.png", "summary.json"):
        assert (tmp_path / name).exists(), name
    assert {"test_accuracy", "test_loss", "train_seconds"} <= set(out)
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2


def test_compiled_steps_take_the_xla_options_of_the_models_path():
    from jaxcnn import ops
    from jaxcnn.data import Preprocess
    from jaxcnn.models import build_model
    from jaxcnn.training import TrainProgram, jit_with, resolve_policy
    from jaxcnn.training._evaluate import compiled_eval, compiled_predict, eval_call, predict_call
    for impl in ("xla", "fast"):
        state = create_train_state(build_model("flatten softmax", 3, impl=impl), (2, 2, 1),
                                   optax.adam(1e-2), jax.random.key(0))
        options = tuple(sorted(ops.compiler_options(impl).items()))
        assert compiled_eval(state) is jit_with(eval_call, options,
                                                static_argnames=("preprocess",))
        assert compiled_predict(state) is jit_with(predict_call, options,
                                                   static_argnames=("apply_fn", "preprocess"))
        policy = resolve_policy(4, impl=impl)
        assert policy.compiler_options == options
        program = TrainProgram(policy, 4, Preprocess(1.0, (0.0,), (1.0,)))
        data = (jnp.ones((4, 2, 2, 1)), jnp.zeros(4, jnp.int32))
        carry = program.init_carry(state)
        (lowered,) = program.lower(state, carry, data, jax.random.key(1))
        state, carry = program.step(state, carry, data, jax.random.key(1))
        assert int(state.step) == 1
    # Different options, different compiled functions (where this jaxlib knows them).
    if ops.compiler_options("fast"):
        states = {impl: create_train_state(build_model("flatten softmax", 3, impl=impl),
                                           (2, 2, 1), optax.adam(1e-2), jax.random.key(0))
                  for impl in ("fast", "xla")}
        assert compiled_eval(states["fast"]) is not compiled_eval(states["xla"])


# --- micro-batches -----------------------------------------------------------------


def _batch(ds, n):
    pre = Preprocess.fit(ds.train.images)
    return {"image": pre(ds.train.images[:n]), "label": ds.train.labels[:n]}


@pytest.mark.parametrize("k", [2, 3, 4])
def test_micro_batches_without_dropout_equal_one_pass(digits, k):
    """Without dropout the micro-batched step is the one-pass step up to float rounding."""
    spec = "conv(8, 3, padding=same) maxpool(2) flatten dense(16, relu) softmax"
    # SGD: the update is the gradient itself (Adam's first step is its sign,
    # which rounding flips where a gradient is near 0).
    state = create_train_state(build_model(spec, 10), digits.image_shape, optax.sgd(0.1),
                               jax.random.key(0))
    batch = _batch(digits, 66)  # 66 / 3 and 66 / 4: unequal micro-batches too
    step = jax.jit(train_step, static_argnames="micro_batches")
    one, m1 = step(state, batch, jax.random.key(0), micro_batches=1)
    many, mk = step(state, batch, jax.random.key(0), micro_batches=k)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(mk["loss"]), float(m1["loss"]), rtol=1e-6)
    assert float(mk["accuracy"]) == float(m1["accuracy"])


def test_micro_batches_sum_the_gradients_of_their_own_dropout_keys(digits):
    """Micro-batch i draws its masks from fold_in(fold_in(key, step), i); one update."""
    state = create_train_state(build_model(SMALL, 10), digits.image_shape, optax.sgd(0.1),
                               jax.random.key(0))
    batch = _batch(digits, 64)
    key = jax.random.key(5)
    new, m = jax.jit(train_step, static_argnames="micro_batches")(state, batch, key,
                                                                  micro_batches=2)
    step_key = jax.random.fold_in(key, state.step)

    def half_loss(params, i):
        x, y = batch["image"][32 * i:32 * (i + 1)], batch["label"][32 * i:32 * (i + 1)]
        logits = state.apply_fn({"params": params}, x, train=True,
                                rngs={"dropout": jax.random.fold_in(step_key, i)})
        return cross_entropy(logits, y).sum() / 64

    grads = jax.tree.map(jnp.add, *(jax.grad(half_loss)(state.params, i) for i in (0, 1)))
    expected = state.apply_gradients(grads=grads)
    for a, b in zip(jax.tree.leaves(expected.params), jax.tree.leaves(new.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    assert int(new.step) == 1
    loss = sum(float(half_loss(state.params, i)) for i in (0, 1))
    np.testing.assert_allclose(float(m["loss"]), loss, rtol=1e-5)


def test_resolve_micro_batches():
    from jaxcnn.training import resolve_micro_batches as r

    assert [r(b, impl="fast", backend="cpu") for b in (32, 63, 64, 100, 128, 200, 256, 257)] == \
        [1, 1, 2, 3, 4, 4, 4, 1]  # micro-batches of 32-64 images, as measured
    assert r(128, impl="auto", backend="cpu") == r(128, impl="fast", backend="cpu") == 4
    assert r(128, impl="xla", backend="cpu") == 1  # the plain path keeps one pass
    assert r(128, impl="auto", backend="gpu") == r(128, impl="auto", backend="tpu") == 1
    assert r(128, impl="fast", backend="cpu", num_devices=2) == 1
    assert r(128, 1, impl="fast", backend="cpu") == 1  # forced off
    assert r(128, 8, impl="xla", backend="gpu") == 8  # forced on
    for bad in (0, -1, "two", 2.0, True):
        with pytest.raises(ConfigError, match="micro_batches"):
            r(128, bad)
    with pytest.raises(ConfigError, match="more than the batch size"):
        r(16, 17)
    with pytest.raises(ConfigError, match="num_devices=1"):
        r(128, 2, num_devices=2)


def test_micro_batches_config_and_cli():
    from jaxcnn.cli import build_parser, config_from_args

    assert override(Config(), {"train.micro_batches": "2"}).train.micro_batches == 2
    assert override(Config(), {"train.micro_batches": "auto"}).train.micro_batches == "auto"
    with pytest.raises(ConfigError, match="train.micro_batches"):
        override(Config(), {"train.micro_batches": "0"})
    args = build_parser().parse_args(["train", "--micro-batches", "3"])
    assert config_from_args(args).train.micro_batches == 3


def test_fit_with_forced_micro_batches_learns_and_resumes_exactly(digits):
    """A run that stops and continues equals one run, with micro-batches as without."""
    keys, pre = split_keys(0), Preprocess.fit(digits.train.images)
    kw = dict(keys=keys, epochs=2, batch_size=64, preprocess=pre, progress=False,
              micro_batches=3)
    whole = fit(_state(digits), digits, **kw)
    assert whole.history[-1]["loss"] < 0.9 * whole.history[0]["loss"]

    class StopAt:
        def on_train_start(self, s): pass
        def on_step_end(self, s, step): return step == 20
        def on_epoch_end(self, s, r): pass
        def on_train_end(self, s, h): pass

    part = fit(_state(digits), digits, callbacks=[StopAt()], **kw)
    rest = fit(part.state, digits, **kw)
    for x, y in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(rest.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
