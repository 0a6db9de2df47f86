"""The execution policy shared by fit and bench, and the chunked step it can choose."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.config import Config
from jaxcnn.bench import BenchConfig, bench_data, train_program
from jaxcnn.data import Augment, Preprocess, from_arrays, resolve_augment
from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model
from jaxcnn.training import (ExecutionPolicy, TrainProgram, create_train_state, fit, plan_fit,
                             resolve_policy, split_keys)

SPEC = "conv(4,3,same) maxpool(2) flatten dropout(0.5) softmax"


def test_policy_holds_every_choice_and_fails_early():
    p = resolve_policy(128, impl="fast", backend="cpu", host_memory="auto")
    assert (p.impl, p.micro_batches, p.chunks, p.host_memory) == ("fast", 4, 1, "auto")
    assert resolve_policy(1024, impl="fast", backend="cpu").chunks == 8
    assert resolve_policy(1024, impl="fast", backend="cpu", micro_batches=2).chunks == 1
    gpu = resolve_policy(1024, backend="gpu")
    assert (gpu.impl, gpu.micro_batches, gpu.chunks, gpu.options) == ("xla", 1, 1, {})
    assert resolve_policy(512, impl="fast", backend="cpu", num_devices=2).chunks == 1
    with pytest.raises(ConfigError, match="reuse_host_memory"):
        resolve_policy(32, host_memory="sometimes")
    with pytest.raises(ConfigError, match="micro_batches"):
        resolve_policy(32, micro_batches=0)


def _state(shape=(8, 8, 1), classes=3):
    return create_train_state(build_model(SPEC, classes), shape, optax.adam(1e-2),
                              jax.random.key(0))


def _run(program, state, data, steps=2):
    carry = program.init_carry(state)
    key, aug_key = jax.random.key(5), jax.random.key(6)
    for _ in range(steps):
        state, carry = program.step(state, carry, data, key, aug_key)
    return state, jax.device_get(carry["acc"])


def test_a_chunked_step_is_the_same_arithmetic_as_one_call():
    # 512 images as 4 calls of 4 micro-batches of 32, against one call of 16 micro-batches:
    # the same masks (micro-batch i of the batch: fold_in(step_key, i)), the same
    # augmentation, gradients summed in the same order.
    rng = np.random.default_rng(0)
    n, batch = 1024, 512
    images = jnp.asarray(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 3, n).astype(np.int32))
    data = (images, labels, jnp.asarray(rng.permutation(n).astype(np.int32)))
    pre = Preprocess(1 / 255, (0.5,), (0.25,))
    chunked_policy = resolve_policy(batch, impl="fast", backend="cpu")
    assert (chunked_policy.chunks, chunked_policy.micro_batches) == (4, 4)
    one_call = dataclasses.replace(chunked_policy, chunks=1, micro_batches=16)
    aug = Augment(1, True)
    a_state, a_acc = _run(TrainProgram(chunked_policy, batch, pre, 2, aug), _state(), data)
    b_state, b_acc = _run(TrainProgram(one_call, batch, pre, 2, aug), _state(), data)
    assert int(a_state.step) == int(b_state.step) == 2
    for x, y in zip(jax.tree.leaves(a_state.params), jax.tree.leaves(b_state.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a_acc["loss"], b_acc["loss"], rtol=1e-5)
    np.testing.assert_allclose(a_acc["accuracy"], b_acc["accuracy"], rtol=1e-6)
    assert int(a_acc["steps"]) == 2 and int(a_acc["bad_step"]) == -1


def test_a_chunked_step_keeps_the_last_good_state_on_a_non_finite_loss():
    n, batch = 512, 512
    images = jnp.full((n, 8, 8, 1), jnp.nan, jnp.float32)
    data = (images, jnp.zeros(n, jnp.int32), jnp.arange(n, dtype=jnp.int32))
    policy = resolve_policy(batch, impl="fast", backend="cpu")
    state = _state()
    before = jax.tree.map(np.asarray, state.params)  # the state is donated to the step
    after, acc = _run(TrainProgram(policy, batch, Preprocess(1.0, (0.0,), (1.0,)), 1), state,
                      data, steps=1)
    assert int(acc["bad_step"]) == 1 and int(after.step) == 0
    for x, y in zip(jax.tree.leaves(after.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(x), y)


def test_bench_times_the_program_fit_runs():
    # jaxcnn bench --what train builds its step from the same plan as fit: equal programs
    # (policy, batch, preprocessing, gather, augmentation) and identical compiled code.
    for shape, batch in (((8, 8, 1), 64), ((32, 32, 3), 512)):
        config = BenchConfig(model=SPEC, input_shape=shape, num_classes=3,
                             reuse_host_memory="auto")
        images, labels, pre = bench_data(config, batch)
        ds = from_arrays(images, labels, images[:8], labels[:8], num_classes=3)
        state = create_train_state(build_model(SPEC, 3), shape, optax.adam(1e-3),
                                   jax.random.key(0))
        plan = plan_fit(state, ds, batch_size=batch, preprocess=pre, pipeline="device",
                        augment=resolve_augment(None, shape), reuse_host_memory="auto",
                        label_smoothing=config.label_smoothing)
        assert config.label_smoothing == Config().train.label_smoothing
        bench_program = train_program(config, batch, pre)
        assert plan.program == bench_program
        data = (jnp.asarray(images), jnp.asarray(labels), jnp.arange(len(labels)))
        carry = bench_program.init_carry(state)
        args = (state, carry, data, jax.random.key(1), jax.random.key(2))
        ours = [lw.as_text() for lw in plan.program.lower(*args)]
        theirs = [lw.as_text() for lw in bench_program.lower(*args)]
        assert ours == theirs


def test_fit_trains_with_a_chunked_step_and_reports_its_policy():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (600, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 600).astype(np.int32)
    ds = from_arrays(images, labels, images[:8], labels[:8], num_classes=3)
    keys = split_keys(0)
    result = fit(_state(), ds, keys=keys, epochs=1, batch_size=300, progress=False,
                 preprocess=Preprocess.fit(images), micro_batches="auto")
    policy = result.program.policy
    if policy.impl == "fast":  # the CPU fast path spreads 300 images over 3 calls
        assert (policy.chunks, policy.micro_batches) == (3, 3)
    assert int(result.state.step) == 2 and np.isfinite(result.history[0]["loss"])


def test_policy_is_hashable_and_describes_itself():
    p = ExecutionPolicy("cpu", "xla")
    assert hash(p) == hash(ExecutionPolicy("cpu", "xla"))
    assert p.describe() == {"backend": "cpu", "impl": "xla", "compiler_options": {},
                            "micro_batches": 1, "chunks": 1, "host_memory": False}
