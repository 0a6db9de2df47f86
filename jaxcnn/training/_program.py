"""The compiled program of one training step, as ``fit`` and ``jaxcnn bench`` run it.

A :class:`TrainProgram` is everything static about a step: the execution
policy, the batch size, where the batch comes from (gathered on the device
from a per-epoch permutation, or handed over already gathered by the
streaming pipeline), preprocessing, augmentation and sharding. Its
:meth:`TrainProgram.step` runs one optimiser step as one compiled call (or,
for a batch spread over chunks, one call per chunk and one to apply the
update), with the in-graph non-finite guard: a NaN or Inf loss leaves the
state untouched from that step on and records the step, so the host can stop
with the last good state.

``fit`` and ``jaxcnn bench --what train`` build the same program from the
same arguments, so the benchmark times the step users train with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn import sharding as shd
from jaxcnn.data import Augment, Preprocess, augment_batch
from jaxcnn.errors import ConfigError
from jaxcnn.training._policy import ExecutionPolicy, jit_with
from jaxcnn.training._steps import accumulate_gradients, apply_update, train_step


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """One training step as compiled calls (hashable: a static argument of them).

    Attributes:
      policy: the :class:`~jaxcnn.training.ExecutionPolicy`.
      batch_size: images per optimiser step (the global batch).
      preprocess: stored images -> model inputs.
      steps_per_epoch: with a value, the step gathers its batch on the
        device: batch ``state.step % steps_per_epoch`` of the epoch's
        permutation (``data = (images, labels, permutation)``); None: the
        batch arrives gathered (``data = (images, labels)``, streaming).
      augment: on-device augmentation, keyed by ``fold_in(aug_key, step)``.
      sharding: the batch's sharding over several devices (None: one device).
      label_smoothing: the training loss's label smoothing (0: none).
      steps_per_call: optimiser steps per compiled call: a ``lax.scan`` over
        ``steps_per_call`` of the one-step program, the same arithmetic as as many
        single calls (each step gathers its own batch, keys and guard by
        ``state.step``). With the gathering pipeline the steps must lie in one epoch
        (one permutation); streaming, ``data`` holds that many batches stacked.
        Removes per-step dispatch, which small models on accelerators pay; on
        XLA's CPU backend a scan over convolution steps compiled and ran slower
        (docs/benchmarks.md, "Steps per call").

    Example:
      >>> from jaxcnn.training import resolve_policy
      >>> p = TrainProgram(resolve_policy(32, backend="cpu"), 32, Preprocess(1.0, (0.0,), (1.0,)))
      >>> p.streaming
      True
    """

    policy: ExecutionPolicy
    batch_size: int
    preprocess: Preprocess
    steps_per_epoch: int | None = None
    augment: Augment | None = None
    sharding: Any = None
    label_smoothing: float = 0.0
    steps_per_call: int = 1

    def __post_init__(self):
        k = self.steps_per_call
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise ConfigError(f"steps_per_call must be an int >= 1; got {k!r}")
        if k > 1 and self.policy.chunks > 1:
            raise ConfigError(
                f"steps_per_call={k} cannot run a batch spread over {self.policy.chunks} "
                "compiled calls (a large batch on the CPU); use --steps-per-call 1, or "
                "--micro-batches K to run the batch in one call")

    @property
    def streaming(self) -> bool:
        """Whether batches arrive gathered (the streaming pipeline)."""
        return self.steps_per_epoch is None

    # -- the carry: running metrics (and the gradient sum of a chunked step) ---------------

    def init_carry(self, state, place=None) -> dict:
        """Zeroed running metrics (and gradient sums) for an epoch, placed like the state.

        Example:
          >>> from jaxcnn.training import resolve_policy
          >>> p = TrainProgram(resolve_policy(8, backend="cpu"), 8, Preprocess(1.0, (0.0,), (1.0,)))
          >>> sorted(p.init_carry(None)["acc"])
          ['accuracy', 'bad_step', 'loss', 'steps']
        """
        carry = {"acc": {"loss": jnp.zeros((), jnp.float32),
                         "accuracy": jnp.zeros((), jnp.float32),
                         "steps": jnp.zeros((), jnp.int32),
                         "bad_step": jnp.full((), -1, jnp.int32)}}
        if self.policy.chunks > 1:
            carry["grads"] = jax.tree.map(jnp.zeros_like, state.params)
            carry["stats"] = jnp.zeros((2,), jnp.float32)
            carry["batch_stats"] = jax.tree.map(jnp.zeros_like, state.batch_stats)
        return carry if place is None else shd.put(carry, place)

    # -- one step ----------------------------------------------------------------------------

    def step(self, state, carry: dict, data: tuple, key: jax.Array, aug_key=None):
        """Runs one optimiser step; returns ``(state, carry)`` (both donated).

        Args:
          state: the train state.
          carry: from :meth:`init_carry` or the previous step.
          data: ``(images, labels, permutation)`` on the device, or
            ``(images, labels)`` of this batch when streaming.
          key: the run's dropout key.
          aug_key: the run's augmentation key (with ``augment``).
        """
        opts = self.policy.compiler_options
        if self.steps_per_call > 1:
            return jit_with(_train_calls, opts, donate_argnums=(0, 1), static_argnums=(5,))(
                state, carry, data, key, aug_key, self)
        if self.policy.chunks == 1:
            return jit_with(_train_call, opts, donate_argnums=(0, 1), static_argnums=(5,))(
                state, carry, data, key, aug_key, self)
        chunk_fn = jit_with(_chunk_call, opts, donate_argnums=(1,), static_argnums=(6,))
        for c in range(self.policy.chunks):
            carry = chunk_fn(state, carry, data, key, aug_key, jnp.int32(c), self)
        return jit_with(_apply_call, opts, donate_argnums=(0, 1), static_argnums=(2,))(
            state, carry, self)

    def lower(self, state, carry: dict, data: tuple, key: jax.Array, aug_key=None) -> list:
        """The lowered programs one step runs (``jax.stages.Lowered``), largest first.

        For compile-time and memory figures, and to compare two programs.
        """
        opts = self.policy.compiler_options
        if self.steps_per_call > 1:
            return [jit_with(_train_calls, opts, donate_argnums=(0, 1), static_argnums=(5,))
                    .lower(state, carry, data, key, aug_key, self)]
        if self.policy.chunks == 1:
            return [jit_with(_train_call, opts, donate_argnums=(0, 1), static_argnums=(5,))
                    .lower(state, carry, data, key, aug_key, self)]
        chunk = jit_with(_chunk_call, opts, donate_argnums=(1,), static_argnums=(6,)).lower(
            state, carry, data, key, aug_key, jnp.int32(0), self)
        apply = jit_with(_apply_call, opts, donate_argnums=(0, 1), static_argnums=(2,)).lower(
            state, carry, self)
        return [chunk, apply]


# ---------------------------------------------------------------------------------------
# The compiled functions (module level, so that equal programs share compilations).


def _rows(state, data, aug_key, program: TrainProgram, start=0, size=None):
    """Rows ``[start, start + size)`` of this step's batch ``(x, y)``, augmented as those
    rows of the whole batch are (``start`` may be traced: one program serves every chunk).

    Only these rows are gathered: gathering the whole batch and slicing it ran
    a chunk at half the speed of the same rows gathered directly (measured on
    XLA CPU, keras_convnet, 128 of 512 images).
    """
    b = program.batch_size
    size = b if size is None else size
    if program.streaming:
        x, y = data
        if size != b:
            x = jax.lax.dynamic_slice_in_dim(x, start, size)
            y = jax.lax.dynamic_slice_in_dim(y, start, size)
    else:
        images, labels, perm = data
        index = state.step % program.steps_per_epoch
        idx = jax.lax.dynamic_slice(perm, (index * b + start,), (size,))
        if program.sharding is not None:
            # Each device (and each process) gathers only its own rows of the batch.
            idx = jax.lax.with_sharding_constraint(idx, program.sharding)
        x, y = images[idx], labels[idx]
    if program.sharding is not None:
        x = jax.lax.with_sharding_constraint(x, program.sharding)
        y = jax.lax.with_sharding_constraint(y, program.sharding)
    if program.augment is not None:
        # Keyed by the step like dropout, so a resumed run augments identically.
        x = augment_batch(x, jax.random.fold_in(aug_key, state.step), program.augment,
                          rows=None if size == b else (start, b))
    return x, y


def _guarded(state, new_state, acc, loss, accuracy):
    """Keeps ``state`` and records the step when the loss is not finite (or was not before)."""
    ok = jnp.isfinite(loss) & (acc["bad_step"] < 0)
    state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    zero = jnp.zeros((), jnp.float32)
    acc = {
        "loss": acc["loss"] + jnp.where(ok, loss, zero),
        "accuracy": acc["accuracy"] + jnp.where(ok, accuracy, zero),
        "steps": acc["steps"] + ok.astype(jnp.int32),
        "bad_step": jnp.where(~ok & (acc["bad_step"] < 0), state.step + 1, acc["bad_step"]),
    }
    return state, acc


def _train_call(state, carry, data, key, aug_key, program: TrainProgram):
    x, y = _rows(state, data, aug_key, program)
    new_state, m = train_step(state, {"image": program.preprocess(x), "label": y}, key,
                              micro_batches=program.policy.micro_batches,
                              label_smoothing=program.label_smoothing)
    state, acc = _guarded(state, new_state, carry["acc"], m["loss"], m["accuracy"])
    return state, {**carry, "acc": acc}


def _train_calls(state, carry, data, key, aug_key, program: TrainProgram):
    """``program.steps_per_call`` steps of :func:`_train_call` as one ``lax.scan``."""
    one = dataclasses.replace(program, steps_per_call=1)
    if program.streaming:  # data: the steps' batches, stacked
        def body(c, batch):
            return _train_call(*c, batch, key, aug_key, one), None
        (state, carry), _ = jax.lax.scan(body, (state, carry), data)
    else:  # each step gathers its batch from the epoch's permutation
        def body(c, _):
            return _train_call(*c, data, key, aug_key, one), None
        (state, carry), _ = jax.lax.scan(body, (state, carry), None,
                                         length=program.steps_per_call)
    return state, carry


def _chunk_call(state, carry, data, key, aug_key, chunk, program: TrainProgram):
    # Chunk c trains on exactly the images that rows [c*m, (c+1)*m) of the one-call
    # step would, augmented identically.
    m = program.policy.images_per_call(program.batch_size)
    xs, ys = _rows(state, data, aug_key, program, chunk * m, m)
    k = program.policy.micro_batches
    grads, loss, correct, batch_stats = accumulate_gradients(
        state, program.preprocess(xs), ys, jax.random.fold_in(key, state.step),
        total=program.batch_size, micro_batches=k, first_index=chunk * k, grads=carry["grads"],
        split=True, label_smoothing=program.label_smoothing)
    stats = carry["stats"] + jnp.stack([loss, correct.astype(jnp.float32)])
    batch_stats = jax.tree.map(jnp.add, carry["batch_stats"], batch_stats)
    return {**carry, "grads": grads, "stats": stats, "batch_stats": batch_stats}


def _apply_call(state, carry, program: TrainProgram):
    new_state = apply_update(state, carry["grads"], carry["batch_stats"],
                             program.policy.chunks * program.policy.micro_batches)
    loss, correct = carry["stats"][0], carry["stats"][1]
    state, acc = _guarded(state, new_state, carry["acc"], loss, correct / program.batch_size)
    zeros = jax.tree.map(jnp.zeros_like, (carry["grads"], carry["batch_stats"]))
    return state, {"acc": acc, "grads": zeros[0], "stats": jnp.zeros_like(carry["stats"]),
                   "batch_stats": zeros[1]}
