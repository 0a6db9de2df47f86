"""Training: the train state, the pure steps, evaluation, prediction and ``fit``.

The heart of the library is two pure functions:

* :func:`train_step` ``(state, batch, key) -> (state, metrics)``: forward,
  softmax cross-entropy on the logits, backward and the optimiser update.
* :func:`eval_step` ``(state, batch) -> metrics``.

They are plain functions, so a user can ``jax.jit`` them into a loop of their
own (see the README). :func:`fit` is the loop jaxcnn provides: it jits one step
per batch with buffer donation, gathers each batch on the device from a
per-epoch permutation, and pulls metrics to the host only at log points.

Randomness comes only from explicit keys. :func:`split_keys` turns the seed
into independent ``init``, ``data`` and ``dropout`` keys; the dropout key of
step ``n`` is ``fold_in(dropout_key, n)`` and the order of epoch ``e`` is
drawn from ``fold_in(data_key, e)``, so a run resumed at any step draws the
same masks and batches as one run straight through.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxcnn.config import OptimizerConfig
from jaxcnn.data import Dataset, Preprocess, Split, as_images
from jaxcnn.errors import ConfigError, DataError, NonFiniteLossError
from jaxcnn import env, ops
from jaxcnn import sharding as shd
from jaxcnn.pipeline import (Augment, Prefetcher, augment_batch, augment_key, choose_pipeline,
                             device_memory_budget)

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Step counter, parameters, optimiser and its state (Flax's ``TrainState``).

    ``apply_fn`` and ``tx`` are static; ``step``, ``params`` and ``opt_state``
    are the arrays that checkpoints hold. ``step`` is an int32 array from the
    start, so a fresh and a restored state have the same structure.
    """

    @classmethod
    def create(cls, *, apply_fn, params, tx, **kwargs):
        """A state at step 0 with ``tx.init(params)`` as optimiser state."""
        state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
        return state.replace(step=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class Keys:
    """The three independent key streams of a run, split from one seed.

    Example:
      >>> keys = split_keys(0)
      >>> sorted(f.name for f in dataclasses.fields(keys))
      ['data', 'dropout', 'init']
    """

    init: jax.Array
    data: jax.Array
    dropout: jax.Array


def split_keys(seed: int) -> Keys:
    """Splits ``jax.random.key(seed)`` once into init, data-order and dropout keys.

    Example:
      >>> k = split_keys(0)
      >>> bool((jax.random.key_data(k.init) != jax.random.key_data(k.dropout)).any())
      True
    """
    init, data, dropout = jax.random.split(jax.random.key(seed), 3)
    return Keys(init, data, dropout)


# ---------------------------------------------------------------------------
# Optimiser


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step.

    Args:
      cfg: the optimiser config (``schedule``, ``learning_rate``, ...).
      total_steps: the number of training steps of the whole run.

    Returns:
      An ``optax`` schedule.

    Example:
      >>> s = learning_rate_schedule(OptimizerConfig(schedule="step"), 100)
      >>> [round(float(s(i)), 6) for i in (0, 50, 75)]
      [0.001, 0.0001, 1e-05]
    """
    lr = float(cfg.learning_rate)
    total_steps = max(int(total_steps), 1)
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "warmup_cosine":
        warmup = min(cfg.warmup_steps, total_steps - 1)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
            decay_steps=total_steps, end_value=lr * cfg.end_factor)
    boundaries = {max(1, int(b * total_steps)): cfg.step_factor for b in cfg.step_boundaries}
    return optax.piecewise_constant_schedule(lr, boundaries)


@functools.lru_cache(maxsize=64)
def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Builds the optax optimiser the config describes.

    Args:
      cfg: the optimiser config; ``name="adam"`` gives
        ``optax.adam(schedule, b1, b2, eps)``.
      total_steps: steps of the whole run (for the schedule).

    Returns:
      An ``optax.GradientTransformation``. Equal arguments return the same
      object (a train state's ``tx`` is static in compiled steps, so sharing
      it lets identical runs share compiled code).

    Example:
      >>> tx = make_optimizer(OptimizerConfig(learning_rate=1e-3), total_steps=10)
      >>> state = tx.init({"w": jnp.zeros(3)})
    """
    lr = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adam":
        tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "sgd":
        tx = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    elif cfg.name == "rmsprop":
        tx = optax.rmsprop(lr, decay=cfg.rho, eps=cfg.eps, momentum=cfg.momentum or None)
    elif cfg.name == "adagrad":
        tx = optax.adagrad(lr, eps=cfg.eps)
    else:  # OptimizerConfig validates the name; this guards library misuse.
        raise ConfigError(f"unknown optimizer {cfg.name!r}")
    if cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx


def create_train_state(
    model: nn.Module,
    input_shape: Sequence[int],
    tx: optax.GradientTransformation,
    key: jax.Array,
) -> TrainState:
    """Initialises parameters and optimiser state.

    Args:
      model: a linen module taking ``(N, H, W, C)`` images and ``train=``.
      input_shape: ``(H, W, C)``.
      tx: the optimiser.
      key: the init key (``split_keys(seed).init``).

    Returns:
      A :class:`TrainState` at step 0.

    Example:
      >>> from jaxcnn.models import build_model
      >>> state = create_train_state(build_model("keras_convnet", 10), (28, 28, 1),
      ...                            optax.adam(1e-3), jax.random.key(0))
      >>> int(state.step), sum(p.size for p in jax.tree.leaves(state.params))
      (0, 34826)
    """
    params = _init_params(model, tuple(int(d) for d in input_shape), key)
    return TrainState.create(apply_fn=ModelApply(model), params=params, tx=tx)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_params(model, input_shape, key):
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)["params"]


@dataclasses.dataclass(frozen=True)
class ModelApply:
    """``model.apply`` as a value: equal models give equal (and equally hashed) functions.

    A train state's ``apply_fn`` is a static argument of every compiled step;
    a bound method compares by identity, which would recompile the step for
    every new but identical model. This wrapper compares by the model's value.

    Example:
      >>> from jaxcnn.models import build_model
      >>> ModelApply(build_model("seed_cnn", 10)) == ModelApply(build_model("seed_cnn", 10))
      True
    """

    model: nn.Module

    def __call__(self, *args, **kwargs):
        return self.model.apply(*args, **kwargs)


# ---------------------------------------------------------------------------
# The pure steps


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy from logits and integer labels.

    Computed as ``logsumexp(z) - z[label]``, which is exact and stable even
    when ``softmax(z)`` underflows to 0.

    Example:
      >>> float(cross_entropy(jnp.array([[0.0, 1000.0]]), jnp.array([0]))[0])
      1000.0
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


# Micro-batching. On XLA's CPU backend a training step of 128 images ran
# faster as 4 micro-batches of 32, one after the other, than in one pass
# (keras_convnet 1.61x, seed_cnn 1.12x, flax_cnn 1.02x; 16 images per
# micro-batch was no faster than the whole batch, and a lax.scan over
# micro-batches ran 10x slower). For keras_convnet most of that was its temporaries
# falling under glibc's 32 MiB mmap threshold, so that malloc reused them instead of
# mapping them afresh every step; against a one-pass step that keeps its memory
# (jaxcnn.env.reuse_host_memory), 4 x 32 ran keras_convnet about 1.0x and seed_cnn
# 1.1-1.2x (docs/benchmarks.md, "Host memory"). Each micro-batch is a copy of the
# model in the compiled step, hence the cap. Measurements: docs/benchmarks.md,
# "Micro-batches".
MICRO_BATCH_IMAGES = 32
MAX_MICRO_BATCHES = 4


def resolve_micro_batches(batch_size: int, setting: int | str = "auto", impl: str = "auto", *,
                          num_devices: int = 1, backend: str | None = None) -> int:
    """How many micro-batches a training step of ``batch_size`` images runs as.

    ``"auto"``: on the CPU fast path (``impl`` resolving to ``"fast"``) with
    one device, batches of 64 to 256 images run as 2-4 micro-batches of 32
    to 64 images (``min(batch // 32, 4)``); 1 (the whole batch in one pass)
    for other sizes and elsewhere. An int forces that many (1: off).

    Args:
      batch_size: the training batch size.
      setting: ``"auto"`` or an int >= 1 (``train.micro_batches``).
      impl: the model's conv/pool implementation.
      num_devices: devices the batch is sharded over.
      backend: a JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
      The number of micro-batches, >= 1.

    Raises:
      ConfigError: a bad setting, more micro-batches than images, or several
        micro-batches with a batch sharded over several devices.

    Example:
      >>> resolve_micro_batches(128, impl="fast", backend="cpu")
      4
      >>> resolve_micro_batches(32, impl="fast", backend="cpu"), resolve_micro_batches(
      ...     512, impl="fast", backend="cpu")
      (1, 1)
      >>> resolve_micro_batches(128, backend="gpu"), resolve_micro_batches(128, 2, backend="gpu")
      (1, 2)
    """
    if setting == "auto":
        backend = backend or jax.default_backend()
        if num_devices > 1 or backend != "cpu" or ops.resolve_impl(impl, backend) != "fast":
            return 1
        k = batch_size // MICRO_BATCH_IMAGES
        if k > MAX_MICRO_BATCHES:
            # Micro-batches of more than 64 images were not measured to pay.
            return MAX_MICRO_BATCHES if batch_size <= 2 * MICRO_BATCH_IMAGES * MAX_MICRO_BATCHES \
                else 1
        return max(k, 1)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"train.micro_batches must be 'auto' or an int >= 1 (1: the whole "
                          f"batch in one pass); got {setting!r}")
    if setting > batch_size:
        raise ConfigError(f"train.micro_batches={setting} is more than the batch size "
                          f"{batch_size}; use at most {batch_size}, or 'auto'")
    if setting > 1 and num_devices > 1:
        raise ConfigError(f"train.micro_batches={setting} with a batch sharded over "
                          f"{num_devices} devices is not supported; set train.micro_batches=1 "
                          "(or 'auto'), or train.num_devices=1")
    return setting


def train_step(state: TrainState, batch: Batch, key: jax.Array, *,
               micro_batches: int = 1) -> tuple[TrainState, Metrics]:
    """One optimisation step: forward, loss, backward and update.

    Pure and jit-able. The dropout key of this step is
    ``fold_in(key, state.step)``, so pass the run's dropout key unchanged at
    every step.

    With ``micro_batches=k > 1`` the batch runs as ``k`` near-equal
    micro-batches, one after the other, whose gradients add up to the
    gradient of the whole batch's mean loss; the optimiser then updates once.
    Without dropout that is the one-pass step up to float rounding; with
    dropout, micro-batch ``i`` draws its masks from ``fold_in(step_key, i)``
    (other masks than the one-pass step's, from the same distribution).
    :func:`resolve_micro_batches` picks ``k`` for :func:`fit`; jit with
    ``static_argnames="micro_batches"``.

    Args:
      state: the current :class:`TrainState`.
      batch: ``{"image": (N, H, W, C) float32, "label": (N,) int}``
        (preprocessed images).
      key: the run's dropout key.
      micro_batches: how many micro-batches the batch runs as (1: one pass).

    Returns:
      ``(new_state, {"loss": mean loss, "accuracy": mean accuracy})``.

    Example:
      >>> from jaxcnn.models import build_model
      >>> state = create_train_state(build_model("conv(4,3) flatten dropout(0.5) softmax", 3),
      ...                            (6, 6, 1), optax.adam(1e-2), jax.random.key(0))
      >>> batch = {"image": jnp.ones((8, 6, 6, 1)), "label": jnp.arange(8) % 3}
      >>> step = jax.jit(train_step, donate_argnums=0)
      >>> state, metrics = step(state, batch, jax.random.key(1))
      >>> int(state.step), sorted(metrics)
      (1, ['accuracy', 'loss'])
    """
    dropout_key = jax.random.fold_in(key, state.step)
    images, labels = batch["image"], batch["label"]
    n = labels.shape[0]
    if micro_batches == 1:
        parts = [(images, labels, dropout_key)]
    else:
        bounds = np.linspace(0, n, micro_batches + 1).round().astype(int)
        parts = [(images[a:b], labels[a:b], jax.random.fold_in(dropout_key, i))
                 for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]

    def loss_fn(params, x, y, k):
        logits = state.apply_fn({"params": params}, x, train=True, rngs={"dropout": k})
        # Summed over the micro-batch and divided by the whole batch: the
        # micro-batches' gradients add up to the gradient of the batch mean.
        return cross_entropy(logits, y).sum() / n, logits

    grads, loss, correct = None, 0.0, 0
    for x, y, k in parts:
        if grads is not None:
            # The next micro-batch starts once this one's gradient exists, so
            # XLA runs them one after the other rather than interleaved.
            grads, x = jax.lax.optimization_barrier((grads, x))
        (part_loss, logits), part_grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, x, y, k)
        grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
        loss = loss + part_loss
        correct = correct + jnp.sum(jnp.argmax(logits, -1) == y)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss, "accuracy": correct / n}


def eval_step(state: TrainState, batch: Batch) -> Metrics:
    """Loss and accuracy of a batch in evaluation mode (no dropout).

    Args:
      state: the train state.
      batch: ``{"image", "label"}`` and optionally ``"mask"`` (1 for real
        examples, 0 for padding).

    Returns:
      ``{"loss": mean, "accuracy": mean, "count": examples}`` over the
      unmasked examples (means are 0 when ``count`` is 0).

    Example:
      >>> from jaxcnn.models import build_model
      >>> state = create_train_state(build_model("flatten softmax", 3), (2, 2, 1),
      ...                            optax.adam(1e-2), jax.random.key(0))
      >>> m = eval_step(state, {"image": jnp.ones((4, 2, 2, 1)), "label": jnp.zeros(4, int),
      ...                       "mask": jnp.array([1, 1, 1, 0])})
      >>> int(m["count"])
      3
    """
    logits = state.apply_fn({"params": state.params}, batch["image"], train=False)
    mask = batch.get("mask")
    mask = jnp.ones(logits.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
    count = mask.sum()
    denom = jnp.maximum(count, 1.0)
    loss = (cross_entropy(logits, batch["label"]) * mask).sum() / denom
    correct = ((jnp.argmax(logits, -1) == batch["label"]) * mask).sum() / denom
    return {"loss": loss, "accuracy": correct, "count": count}


# ---------------------------------------------------------------------------
# Evaluation and prediction


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    if len(x) == size:
        return x
    pad = np.zeros((size - len(x), *x.shape[1:]), x.dtype)
    return np.concatenate([x, pad])


def _eval_batch_fn(state, images, labels, mask, preprocess):
    return eval_step(state, {"image": preprocess(images), "label": labels, "mask": mask})


def evaluate(
    state: TrainState,
    split: Split,
    preprocess: Preprocess,
    batch_size: int = 500,
    mesh=None,
) -> dict[str, float]:
    """Loss and accuracy over every example of a split, each counted once.

    The last partial batch is padded and masked, so no example is dropped or
    counted twice.

    Args:
      state: the train state.
      split: images (as stored) and labels.
      preprocess: the run's :class:`~jaxcnn.data.Preprocess`.
      batch_size: examples per compiled call.
      mesh: shard each batch over this mesh (None: default device).

    Returns:
      ``{"loss": float, "accuracy": float, "count": int}``.

    Example:
      >>> from jaxcnn.data import load_dataset
      >>> from jaxcnn.models import build_model
      >>> ds = load_dataset("digits")
      >>> state = create_train_state(build_model("seed_cnn", 10), ds.image_shape,
      ...                            optax.adam(1e-3), jax.random.key(0))
      >>> m = evaluate(state, ds.test, Preprocess.fit(ds.train.images), batch_size=128)
      >>> m["count"]
      360
    """
    n = len(split)
    if n == 0:
        raise DataError("cannot evaluate on an empty split")
    if mesh is not None:
        batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
    batch_size = min(batch_size, n) if mesh is None else batch_size
    sharding = shd.batch_sharding(mesh) if mesh is not None else None
    eval_fn = _compiled("eval", model_impl(state))
    totals = []
    for start in range(0, n, batch_size):
        images = split.images[start:start + batch_size]
        labels = split.labels[start:start + batch_size]
        mask = np.ones(len(labels), np.float32)
        images, labels, mask = (_pad(a, batch_size) for a in (images, labels, mask))
        arrays = (images, labels, mask)
        if sharding is not None:
            arrays = jax.device_put(arrays, sharding)
        totals.append(eval_fn(state, *arrays, preprocess))
    return merge_metrics(jax.device_get(totals))


def merge_metrics(parts: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Combines per-batch ``{"loss", "accuracy", "count"}`` means into overall means.

    Example:
      >>> merge_metrics([{"loss": 1.0, "accuracy": 1.0, "count": 1},
      ...                {"loss": 2.0, "accuracy": 0.0, "count": 3}])
      {'loss': 1.75, 'accuracy': 0.25, 'count': 4}
    """
    count = loss = correct = 0.0
    for p in parts:
        c = float(p["count"])
        count += c
        loss += float(p["loss"]) * c
        correct += float(p["accuracy"]) * c
    count_int = int(round(count))
    return {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1), "count": count_int}


def _predict_batch_fn(params, images, apply_fn, preprocess):
    logits = apply_fn({"params": params}, preprocess(images), train=False)
    return jax.nn.softmax(logits, axis=-1)


def predict(
    state: TrainState,
    images,
    preprocess: Preprocess | None = None,
    batch_size: int = 500,
) -> np.ndarray:
    """Class probabilities (softmax of the logits) for a batch of images.

    Args:
      state: a train state (or anything with ``apply_fn`` and ``params``).
      images: ``(N, H, W, C)`` or ``(N, H, W)``, stored as the training data
        was (uint8 or float in [0, 1]).
      preprocess: the run's transform; None feeds the images unchanged.
      batch_size: images per compiled call.

    Returns:
      ``(N, num_classes)`` float32 probabilities; rows sum to 1.

    Example:
      >>> from jaxcnn.models import build_model
      >>> state = create_train_state(build_model("flatten softmax", 3), (2, 2, 1),
      ...                            optax.adam(1e-2), jax.random.key(0))
      >>> p = predict(state, np.ones((5, 2, 2, 1), np.float32))
      >>> p.shape, bool(np.allclose(p.sum(-1), 1))
      ((5, 3), True)
    """
    x = as_images(images)
    preprocess = preprocess or Preprocess(1.0, (0.0,) * x.shape[-1], (1.0,) * x.shape[-1])
    n = len(x)
    batch_size = min(batch_size, n)
    predict_fn = _compiled("predict", model_impl(state))
    out = []
    for start in range(0, n, batch_size):
        chunk = _pad(x[start:start + batch_size], batch_size)
        out.append(predict_fn(state.params, chunk, state.apply_fn, preprocess))
    return np.concatenate(jax.device_get(out))[:n]


# ---------------------------------------------------------------------------
# The fit loop


class Callback:
    """Hooks into :func:`fit`. Return True from a hook to stop training.

    ``on_step_end`` runs on the host after each step is *dispatched* (the
    device may still be computing); it must not pull arrays to the host unless
    it needs to, or it will serialise the loop.

    Example:
      >>> class StopAfter(Callback):
      ...     def __init__(self, n): self.n = n
      ...     def on_step_end(self, state, step): return step >= self.n
    """

    def on_train_start(self, state: TrainState) -> None:
        """Called once before the first step."""

    def on_step_end(self, state: TrainState, step: int) -> bool | None:
        """Called after step ``step`` (1-based, global) is dispatched."""

    def on_epoch_end(self, state: TrainState, record: dict) -> bool | None:
        """Called after each epoch with its history record."""

    def on_train_end(self, state: TrainState, history: list[dict]) -> None:
        """Called once after the last step (also after an early stop)."""


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      state: the final train state (the best one when early stopping restored it).
      history: one record per epoch (see :func:`fit`).
      stopped_early: whether early stopping or a callback ended training.
      pipeline: the input pipeline used: ``device`` or ``stream``.
    """

    state: TrainState
    history: list[dict]
    stopped_early: bool = False
    pipeline: str = "device"


def _permutation(key: jax.Array, epoch: int, n: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


_jit_permutation = jax.jit(_permutation, static_argnums=2)


def _loop_step(state, acc, images, labels, perm, key, aug_key=None, *, batch_size,
               steps_per_epoch, preprocess, sharding, augment=None, micro_batches=1):
    """One compiled call of fit: gather the batch, train, and accumulate metrics.

    A non-finite loss leaves the state untouched (this step and every later
    one) and records the step, so the host can stop with the last good state.
    """
    index = state.step % steps_per_epoch
    idx = jax.lax.dynamic_slice(perm, (index * batch_size,), (batch_size,))
    x, y = images[idx], labels[idx]
    return _batch_step(state, acc, x, y, key, aug_key, preprocess=preprocess,
                       sharding=sharding, augment=augment, micro_batches=micro_batches)


def _stream_step(state, acc, x, y, key, aug_key=None, *, preprocess, sharding, augment=None,
                 micro_batches=1):
    """The streaming path's compiled call: the batch arrives already gathered."""
    return _batch_step(state, acc, x, y, key, aug_key, preprocess=preprocess,
                       sharding=sharding, augment=augment, micro_batches=micro_batches)


def _batch_step(state, acc, x, y, key, aug_key, *, preprocess, sharding, augment,
                micro_batches=1):
    if sharding is not None:
        x = jax.lax.with_sharding_constraint(x, sharding)
        y = jax.lax.with_sharding_constraint(y, sharding)
    if augment is not None:
        # Keyed by the step like dropout, so a resumed run augments identically.
        x = augment_batch(x, jax.random.fold_in(aug_key, state.step), augment)
    new_state, m = train_step(state, {"image": preprocess(x), "label": y}, key,
                              micro_batches=micro_batches)
    ok = jnp.isfinite(m["loss"]) & (acc["bad_step"] < 0)
    state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    zero = jnp.zeros((), jnp.float32)
    acc = {
        "loss": acc["loss"] + jnp.where(ok, m["loss"], zero),
        "accuracy": acc["accuracy"] + jnp.where(ok, m["accuracy"], zero),
        "steps": acc["steps"] + ok.astype(jnp.int32),
        "bad_step": jnp.where(~ok & (acc["bad_step"] < 0), state.step + 1, acc["bad_step"]),
    }
    return state, acc


_JIT_SPECS = {
    "loop": (_loop_step, {"donate_argnums": (0, 1), "static_argnames": (
        "batch_size", "steps_per_epoch", "preprocess", "sharding", "augment", "micro_batches")}),
    "stream": (_stream_step, {"donate_argnums": (0, 1), "static_argnames": (
        "preprocess", "sharding", "augment", "micro_batches")}),
    "eval": (_eval_batch_fn, {"static_argnames": ("preprocess",)}),
    "predict": (_predict_batch_fn, {"static_argnames": ("apply_fn", "preprocess")}),
}


def model_impl(state) -> str:
    """The conv/pool ``impl`` of the model behind ``state`` (``"auto"`` if it has none).

    Example:
      >>> from jaxcnn.models import build_model
      >>> s = create_train_state(build_model("flatten softmax", 3, impl="xla"), (2, 2, 1),
      ...                        optax.adam(1e-2), jax.random.key(0))
      >>> model_impl(s)
      'xla'
    """
    return getattr(getattr(state.apply_fn, "model", None), "impl", "auto")


def _compiled(name: str, impl: str) -> Callable:
    """The jitted ``name`` function, compiled with the XLA options of ``impl``."""
    return _jitted(name, tuple(sorted(ops.compiler_options(impl).items())))


# One jitted function per (function, options) for every call, so identical
# runs share compiled code.
@functools.lru_cache(maxsize=None)
def _jitted(name: str, options: tuple) -> Callable:
    fn, kwargs = _JIT_SPECS[name]
    return jax.jit(fn, compiler_options=dict(options), **kwargs)


def _zero_acc():
    return {"loss": jnp.zeros((), jnp.float32), "accuracy": jnp.zeros((), jnp.float32),
            "steps": jnp.zeros((), jnp.int32), "bad_step": jnp.full((), -1, jnp.int32)}


def make_fit_step(
    batch_size: int,
    steps_per_epoch: int,
    preprocess: Preprocess,
    mesh=None,
    augment: Augment | None = None,
    impl: str = "auto",
    micro_batches: int = 1,
) -> Callable:
    """The compiled per-batch function that :func:`fit` calls once per step.

    ``fn(state, acc, images, labels, perm, dropout_key, aug_key=None) -> (state, acc)``
    gathers batch ``state.step % steps_per_epoch`` of ``perm`` from the
    on-device ``images``/``labels``, augments it (with ``augment``, keyed by
    ``fold_in(aug_key, state.step)``), runs :func:`train_step`, and adds the
    metrics to ``acc``. ``state`` and ``acc`` are donated. It is compiled
    with the XLA options of the model's ``impl`` (:func:`jaxcnn.ops.compiler_options`);
    the step runs as ``micro_batches`` micro-batches (:func:`train_step`).

    Example:
      >>> fn = make_fit_step(32, 10, Preprocess(1.0, (0.0,), (1.0,)))
    """
    sharding = shd.batch_sharding(mesh) if mesh is not None and mesh.devices.size > 1 else None
    return functools.partial(_compiled("loop", impl), batch_size=batch_size,
                             steps_per_epoch=steps_per_epoch, preprocess=preprocess,
                             sharding=sharding, augment=augment, micro_batches=micro_batches)


def make_stream_step(preprocess: Preprocess, mesh=None, augment: Augment | None = None,
                     impl: str = "auto", micro_batches: int = 1) -> Callable:
    """The compiled per-batch function of the streaming pipeline.

    ``fn(state, acc, x, y, dropout_key, aug_key=None) -> (state, acc)``: like
    :func:`make_fit_step`, for a batch ``(x, y)`` already on the device.

    Example:
      >>> fn = make_stream_step(Preprocess(1.0, (0.0,), (1.0,)))
    """
    sharding = shd.batch_sharding(mesh) if mesh is not None and mesh.devices.size > 1 else None
    return functools.partial(_compiled("stream", impl), preprocess=preprocess, sharding=sharding,
                             augment=augment, micro_batches=micro_batches)


def fit(
    state: TrainState,
    dataset: Dataset,
    *,
    keys: Keys,
    epochs: int,
    batch_size: int,
    preprocess: Preprocess,
    eval_batch_size: int = 500,
    mesh=None,
    learning_rate: Callable[[int], Any] | None = None,
    early_stopping_patience: int = 0,
    early_stopping_metric: str = "val_loss",
    restore_best: bool = True,
    log_every_seconds: float = 1.0,
    callbacks: Sequence[Callback] = (),
    history: list[dict] | None = None,
    progress: bool = True,
    pipeline: str = "auto",
    augment: Augment | None = None,
    memory_budget: int | None = None,
    prefetch: int = 2,
    micro_batches: int | str = "auto",
    reuse_host_memory: bool | str = "auto",
) -> FitResult:
    """Trains ``state`` on ``dataset.train`` for ``epochs`` epochs.

    When the training split fits the memory budget it is put on the
    device(s) once and each step gathers its batch there; otherwise a
    background thread streams host batches to the device ahead of the step
    (see :mod:`jaxcnn.pipeline`). Either way each epoch draws a permutation
    from ``fold_in(keys.data, epoch)``; the trailing partial batch is dropped
    (a different one each epoch). Each step is one compiled call (augment,
    forward, backward, update, metrics); metrics reach the host only at log
    points and at the end of each epoch, when the validation split (if any)
    is evaluated.

    Training resumes where ``state.step`` says: epoch ``step //
    steps_per_epoch``, batch ``step % steps_per_epoch``.

    Each history record has ``epoch`` (1-based), ``step``, ``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy`` (with validation data),
    ``learning_rate``, ``seconds`` (training time of the epoch),
    ``eval_seconds`` and ``images_per_s``.

    Args:
      state: the initial (or restored) state.
      dataset: the data; ``dataset.validation`` is evaluated each epoch.
      keys: the run's keys (:func:`split_keys`).
      epochs: total epochs (counting epochs already done).
      batch_size: training batch size (a multiple of the mesh size).
      preprocess: the run's :class:`~jaxcnn.data.Preprocess`.
      eval_batch_size: validation batch size.
      mesh: a data mesh (:func:`jaxcnn.sharding.make_mesh`); None: one device.
      learning_rate: the schedule, to log the rate of each epoch.
      early_stopping_patience: epochs without improvement before stopping (0: off).
      early_stopping_metric: ``val_loss`` or ``val_accuracy``.
      restore_best: after early stopping, return the best epoch's state.
      log_every_seconds: how often to refresh the progress bar's metrics.
      callbacks: :class:`Callback` hooks.
      history: records of earlier epochs (when resuming).
      progress: show a progress bar on stderr.
      pipeline: ``auto``, ``device`` or ``stream`` (see
        :func:`jaxcnn.pipeline.choose_pipeline`).
      augment: on-device augmentation (:class:`jaxcnn.pipeline.Augment`), keyed
        by ``fold_in(augment_key(keys), step)``; None: none.
      memory_budget: bytes the training split may take on the device (None:
        :func:`jaxcnn.pipeline.device_memory_budget`'s default).
      prefetch: batches in flight on the streaming path.
      micro_batches: ``"auto"`` or how many micro-batches each step runs as
        (:func:`resolve_micro_batches`, :func:`train_step`).
      reuse_host_memory: ``"auto"``, True or False: whether glibc keeps freed
        host memory for the next step (:func:`jaxcnn.env.reuse_host_memory_for`;
        ``auto`` decides from the compiled step's temporary buffer).

    Returns:
      A :class:`FitResult`.

    Raises:
      NonFiniteLossError: a loss was NaN or Inf; ``err.state`` is the last good state.

    Example:
      >>> from jaxcnn.data import load_dataset
      >>> from jaxcnn.models import build_model
      >>> ds = load_dataset("digits")
      >>> keys = split_keys(0)
      >>> state = create_train_state(build_model("seed_cnn", 10), ds.image_shape,
      ...                            optax.adam(1e-3), keys.init)
      >>> result = fit(state, ds, keys=keys, epochs=1, batch_size=64,
      ...              preprocess=Preprocess.fit(ds.train.images), progress=False)
      >>> result.history[0]["epoch"], int(result.state.step)
      (1, 22)
    """
    n = len(dataset.train)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch size {batch_size} is larger than the training split ({n} examples); "
            f"use a batch size of at most {n}"
        )
    if mesh is not None:
        shd.check_batch_size(batch_size, mesh)
    k = resolve_micro_batches(batch_size, micro_batches, model_impl(state),
                          num_devices=mesh.devices.size if mesh is not None else 1)
    if not env.is_host_memory_setting(reuse_host_memory):
        raise ConfigError(f"reuse_host_memory must be 'auto', True or False; got "
                          f"{reuse_host_memory!r}")
    if early_stopping_patience and dataset.validation is None:
        raise ConfigError("early stopping needs validation data; set data.validation_fraction "
                          "(e.g. 0.1) or turn early stopping off")
    history = list(history or [])
    place = shd.replicated(mesh) if mesh is not None else jax.devices()[0]
    nbytes = dataset.train.images.nbytes + dataset.train.labels.nbytes
    mode = choose_pipeline(pipeline, nbytes, memory_budget if memory_budget is not None
                           else device_memory_budget() if pipeline == "auto" else 0)
    if mode == "device":
        step_fn = make_fit_step(batch_size, steps_per_epoch, preprocess, mesh, augment,
                                impl=model_impl(state), micro_batches=k)
        # np.asarray: images that a data source decodes on demand are read here, once.
        images = jax.device_put(np.asarray(dataset.train.images), place)
        labels = jax.device_put(dataset.train.labels, place)
    else:
        step_fn = make_stream_step(preprocess, mesh, augment, impl=model_impl(state),
                                   micro_batches=k)
    state = jax.device_put(state, place)
    dropout_key = jax.device_put(keys.dropout, place)
    aug_key = jax.device_put(augment_key(keys), place) if augment is not None else None

    step = int(jax.device_get(state.step))
    feeder = None
    if mode == "stream":
        multi = mesh is not None and mesh.devices.size > 1
        feeder = Prefetcher(
            dataset.train.images, dataset.train.labels,
            lambda e: jax.device_get(_jit_permutation(keys.data, e, n)), batch_size,
            steps_per_epoch, step, max(epochs * steps_per_epoch - step, 0),
            shd.batch_sharding(mesh) if multi else place, prefetch)
        batches = iter(feeder)
    start_epoch, start_index = divmod(step, steps_per_epoch)
    best = _Best(early_stopping_metric, state if restore_best else None)
    for record in history:
        best.update(record, None)
    for cb in callbacks:
        cb.on_train_start(state)
    stopped = False
    host_memory_pending = reuse_host_memory is not False
    bar = _progress_bar(progress, steps_per_epoch)
    try:
        for epoch in range(start_epoch, epochs):
            # Committed placement for every argument: the compiled step then sees the same
            # shardings on every call and compiles once.
            if mode == "device":
                perm = jax.device_put(_jit_permutation(keys.data, epoch, n), place)
            acc = jax.device_put(_zero_acc(), place)
            first = start_index if epoch == start_epoch else 0
            bar.reset(total=steps_per_epoch)
            bar.update(first)
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            t0 = last_log = time.perf_counter()
            for _ in range(first, steps_per_epoch):
                if mode == "device":
                    args = (state, acc, images, labels, perm, dropout_key, aug_key)
                else:
                    x, y = next(batches)
                    args = (state, acc, x, y, dropout_key, aug_key)
                if host_memory_pending:
                    # Compiles the step (the call below reuses it) to read its temporary size.
                    host_memory_pending = False
                    env.reuse_host_memory_for(
                        step_fn.func.lower(*args, **step_fn.keywords).compile(), reuse_host_memory)
                state, acc = step_fn(*args)
                del args
                step += 1
                bar.update(1)
                now = time.perf_counter()
                if now - last_log >= log_every_seconds:
                    last_log = now
                    _show(bar, _host_acc(acc, state), batch_size, now - t0)
                if any(cb.on_step_end(state, step) for cb in callbacks):
                    stopped = True
                    break
            m = _host_acc(acc, state)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "step": step, "loss": m["loss"], "accuracy": m["accuracy"]}
            if learning_rate is not None:
                record["learning_rate"] = float(learning_rate(step))
            t1 = time.perf_counter()
            if dataset.validation is not None:
                val = evaluate(state, dataset.validation, preprocess, eval_batch_size, mesh)
                record |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
            record |= {"seconds": seconds, "eval_seconds": time.perf_counter() - t1,
                       "images_per_s": m["steps"] * batch_size / max(seconds, 1e-9)}
            history.append(record)
            _show(bar, m, batch_size, seconds, record.get("val_accuracy"))
            if progress:
                bar.write(format_record(record, epochs))
            improved = best.update(record, state)
            if any(cb.on_epoch_end(state, record) for cb in callbacks):
                stopped = True
            if (early_stopping_patience and not improved
                    and best.epochs_since >= early_stopping_patience):
                stopped = True
            if stopped:
                break
    finally:
        bar.close()
        if feeder is not None:
            feeder.close()
    if stopped and restore_best and early_stopping_patience and best.state is not None:
        state = best.state
    for cb in callbacks:
        cb.on_train_end(state, history)
    return FitResult(state, history, stopped, mode)


def _host_acc(acc, state) -> dict[str, float]:
    """Pulls the epoch's running metrics to the host; raises on a non-finite loss."""
    a = jax.device_get(acc)
    if int(a["bad_step"]) >= 0:
        raise NonFiniteLossError(
            f"the training loss became NaN or Inf at step {int(a['bad_step'])}; training stopped "
            f"and the state from step {int(a['bad_step']) - 1} (the last good one) was kept. "
            "Lower the learning rate (e.g. --lr 1e-4), clip gradients "
            "(--set optimizer.grad_clip_norm=1.0), or check the inputs for NaN/Inf.",
            step=int(a["bad_step"]), state=state)
    steps = max(int(a["steps"]), 1)
    return {"loss": float(a["loss"]) / steps, "accuracy": float(a["accuracy"]) / steps,
            "steps": int(a["steps"])}


class _Best:
    """Tracks the best epoch for early stopping."""

    def __init__(self, metric: str, state):
        self.metric, self.keep = metric, state is not None
        self.value, self.state, self.epochs_since = None, None, 0

    def update(self, record: dict, state) -> bool:
        value = record.get(self.metric)
        if value is None:
            return False
        better = self.value is None or (
            value < self.value if self.metric.endswith("loss") else value > self.value)
        if better:
            self.value, self.epochs_since = value, 0
            if self.keep and state is not None:
                self.state = jax.tree.map(jnp.copy, state)
        else:
            self.epochs_since += 1
        return better


def format_record(record: dict, epochs: int | None = None) -> str:
    """One line for an epoch's history record, Keras style.

    Example:
      >>> format_record({"epoch": 2, "step": 44, "loss": 0.5, "accuracy": 0.9,
      ...                "seconds": 1.25, "images_per_s": 1126.4}, 10)
      'epoch 2/10  step 44  1.2s  1,126 img/s  loss 0.5000  accuracy 0.9000'
    """
    total = f"/{epochs}" if epochs else ""
    parts = [f"epoch {record['epoch']}{total}", f"step {record['step']}",
             f"{record['seconds']:.1f}s", f"{record['images_per_s']:,.0f} img/s"]
    parts += [f"{k} {record[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
              if k in record]
    return "  ".join(parts)


class _NoBar:
    def reset(self, total=None): pass
    def write(self, s): pass
    def update(self, n=1): pass
    def set_description(self, s): pass
    def set_postfix_str(self, s, refresh=True): pass
    def close(self): pass


class _LineBar(_NoBar):
    """Without a terminal (logs, CI) a live bar is noise: print one line per epoch."""

    def write(self, s):
        print(s, file=sys.stderr, flush=True)


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return _NoBar()
    if not sys.stderr.isatty():
        return _LineBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True, leave=False,
                mininterval=0.5)


def _show(bar, m, batch_size, seconds, val_accuracy=None):
    text = f"loss {m['loss']:.4f} acc {m['accuracy']:.4f} {m['steps'] * batch_size / max(seconds, 1e-9):,.0f} img/s"
    if val_accuracy is not None:
        text += f" val_acc {val_accuracy:.4f}"
    bar.set_postfix_str(text)
