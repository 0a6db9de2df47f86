"""The pure steps: ``train_step(state, batch, key)`` and ``eval_step(state, batch)``.

Plain functions, jit-able and testable without jit. Every loop (``fit``,
``jaxcnn bench``, a user's own) calls these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.training._state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy from logits and integer labels.

    Computed in float32 from the logits shifted by their row maximum ``m``:
    with ``z = logits - m``, the loss is ``log(sum(exp(z))) - z[label]``. The
    shift keeps ``exp`` from overflowing and keeps the result finite when
    ``softmax`` underflows to 0; taking ``z[label]`` after the shift (not
    ``logsumexp(logits) - logits[label]``, where both terms are large and
    nearly cancel) keeps it accurate to float32 rounding of the loss itself
    even for large, nearly tied logits (``[1e4, 1e4]`` gives ``ln 2``). ``m``
    is held constant under differentiation, so the gradient is the usual
    ``softmax(logits) - one_hot(label)``.

    With ``label_smoothing = s > 0`` the target is ``(1 - s) * one_hot(label)
    + s / K`` over the ``K`` classes (Szegedy et al., 2016): the loss is
    ``log(sum(exp(z))) - (1 - s) * z[label] - s * mean(z)``, and its minimum
    is no longer 0, so a smoothed loss near ``s * log(K)`` is a well-fit model.

    Example:
      >>> float(cross_entropy(jnp.array([[0.0, 1000.0]]), jnp.array([0]))[0])
      1000.0
      >>> round(float(cross_entropy(jnp.array([[-1e4, -1e4]]), jnp.array([0]))[0]), 6)
      0.693147
      >>> round(float(cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([0]), 0.1)[0]), 6)
      0.693147
    """
    z = logits.astype(jnp.float32)
    z = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.exp(z), axis=-1))
    label_z = jnp.take_along_axis(z, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
    if not label_smoothing:
        return lse - label_z
    s = jnp.float32(label_smoothing)
    return lse - (1 - s) * label_z - s * jnp.mean(z, axis=-1)


def micro_batch_bounds(n: int, micro_batches: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``n`` examples cut into near-equal micro-batches.

    Example:
      >>> micro_batch_bounds(10, 3)
      [(0, 3), (3, 7), (7, 10)]
    """
    bounds = np.linspace(0, n, micro_batches + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def accumulate_gradients(state: TrainState, images: jax.Array, labels: jax.Array,
                         step_key: jax.Array, *, total: int, micro_batches: int = 1,
                         first_index: int = 0, grads=None, split: bool | None = None,
                         label_smoothing: float = 0.0):
    """Gradients of ``sum(loss) / total`` over ``images``, as micro-batches in sequence.

    The building block of :func:`train_step`, and of steps that spread one
    batch over several compiled calls: call it once per chunk with
    ``first_index`` counting the micro-batches before it and ``grads`` the
    sum so far, then apply the sum once. Micro-batch ``i`` (counted over the
    whole batch) draws its dropout masks from ``fold_in(step_key, i)``;
    a single micro-batch uses ``step_key`` itself.

    Args:
      state: the train state (its ``params`` and ``apply_fn``).
      images: preprocessed ``(n, H, W, C)`` images of this call.
      labels: ``(n,)`` integer labels.
      step_key: this step's dropout key (``fold_in(run_key, state.step)``).
      total: examples in the whole batch (the mean's denominator).
      micro_batches: micro-batches ``images`` runs as.
      first_index: micro-batches of this batch before this call.
      grads: gradients to add to (None: start from these).
      split: whether the batch runs as several micro-batches in all (default:
        ``micro_batches > 1 or first_index > 0``); decides between
        ``fold_in(step_key, i)`` and ``step_key`` for the dropout masks.
      label_smoothing: the training loss's label smoothing (see
        :func:`cross_entropy`; 0: none).

    Batch normalisation: each micro-batch is normalised by its own statistics
    (as a batch split over several devices without cross-device statistics,
    or PyTorch's gradient accumulation), and the running statistics returned
    are the mean over the micro-batches of the value each would have set from
    ``state.batch_stats``: one update per step of
    ``momentum * running + (1 - momentum) * mean_i(batch_statistic_i)``. With
    one micro-batch that is the whole batch's statistics.

    Returns:
      ``(grads, loss_sum, correct, batch_stats)``: summed gradients,
      ``sum(loss) / total``, the number of correct predictions of this call,
      and the summed running statistics of its micro-batches (divide by the
      batch's micro-batch count; ``{}`` for a model without batch norm).

    Example:
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
      >>> s = create_train_state(build_model("flatten softmax", 2), (2, 2, 1),
      ...                        optax.adam(1e-2), jax.random.key(0))
      >>> g, loss, correct, stats = accumulate_gradients(
      ...     s, jnp.ones((4, 2, 2, 1)), jnp.zeros(4, int), jax.random.key(1), total=4)
      >>> jax.tree.structure(g) == jax.tree.structure(s.params)
      True
    """
    n = labels.shape[0]
    if split is None:
        split = micro_batches > 1 or first_index > 0
    parts = [(images[a:b], labels[a:b],
              jax.random.fold_in(step_key, first_index + i) if split else step_key)
             for i, (a, b) in enumerate(micro_batch_bounds(n, micro_batches))]

    has_stats = bool(state.batch_stats)

    def loss_fn(params, x, y, k):
        out = state.apply_fn(state.variables(params), x, train=True, rngs={"dropout": k},
                             **({"mutable": ["batch_stats"]} if has_stats else {}))
        logits, updates = out if has_stats else (out, {})
        # Summed over the micro-batch and divided by the whole batch: the
        # micro-batches' gradients add up to the gradient of the batch mean.
        loss = cross_entropy(logits, y, label_smoothing).sum() / total
        return loss, (logits, updates.get("batch_stats", {}))

    loss, correct, stats = 0.0, 0, None
    for x, y, k in parts:
        if grads is not None:
            # The next micro-batch starts once this one's gradient exists, so
            # XLA runs them one after the other rather than interleaved.
            grads, x = jax.lax.optimization_barrier((grads, x))
        (part_loss, (logits, part_stats)), part_grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params, x, y, k)
        grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
        stats = part_stats if stats is None else jax.tree.map(jnp.add, stats, part_stats)
        loss = loss + part_loss
        correct = correct + jnp.sum(jnp.argmax(logits, -1) == y)
    return grads, loss, correct, stats


def train_step(state: TrainState, batch: Batch, key: jax.Array, *,
               micro_batches: int = 1, label_smoothing: float = 0.0
               ) -> tuple[TrainState, Metrics]:
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
    :func:`jaxcnn.training.resolve_policy` picks ``k`` for ``fit``; jit with
    ``static_argnames="micro_batches"``.

    Args:
      state: the current :class:`TrainState`.
      batch: ``{"image": (N, H, W, C) float32, "label": (N,) int}``
        (preprocessed images).
      key: the run's dropout key.
      micro_batches: how many micro-batches the batch runs as (1: one pass).
      label_smoothing: smooth the one-hot targets by this much (0: none;
        see :func:`cross_entropy`). The reported loss is the smoothed one.
        Static: jit with ``static_argnames=("micro_batches", "label_smoothing")``.

    Returns:
      ``(new_state, {"loss": mean loss, "accuracy": mean accuracy})``.

    Example:
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
      >>> state = create_train_state(build_model("conv(4,3) flatten dropout(0.5) softmax", 3),
      ...                            (6, 6, 1), optax.adam(1e-2), jax.random.key(0))
      >>> batch = {"image": jnp.ones((8, 6, 6, 1)), "label": jnp.arange(8) % 3}
      >>> step = jax.jit(train_step, donate_argnums=0)
      >>> state, metrics = step(state, batch, jax.random.key(1))
      >>> int(state.step), sorted(metrics)
      (1, ['accuracy', 'loss'])
    """
    n = batch["label"].shape[0]
    grads, loss, correct, stats = accumulate_gradients(
        state, batch["image"], batch["label"], jax.random.fold_in(key, state.step), total=n,
        micro_batches=micro_batches, label_smoothing=label_smoothing)
    state = apply_update(state, grads, stats, micro_batches)
    return state, {"loss": loss, "accuracy": correct / n}


def apply_update(state: TrainState, grads, stats_sum, count: int) -> TrainState:
    """The optimiser update from summed gradients, and the running statistics from the
    sum of ``count`` micro-batches' (their mean; see :func:`accumulate_gradients`).

    Example:
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
      >>> s = create_train_state(build_model("flatten softmax", 2), (2, 2, 1),
      ...                        optax.sgd(0.1), jax.random.key(0))
      >>> g = jax.tree.map(jnp.ones_like, s.params)
      >>> int(apply_update(s, g, {}, 1).step)
      1
    """
    state = state.apply_gradients(grads=grads)
    if state.batch_stats:
        scale = jnp.float32(1.0 / count)
        state = state.replace(batch_stats=jax.tree.map(lambda v: v * scale, stats_sum))
    return state


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
      >>> from jaxcnn.training import create_train_state
      >>> state = create_train_state(build_model("flatten softmax", 3), (2, 2, 1),
      ...                            optax.adam(1e-2), jax.random.key(0))
      >>> m = eval_step(state, {"image": jnp.ones((4, 2, 2, 1)), "label": jnp.zeros(4, int),
      ...                       "mask": jnp.array([1, 1, 1, 0])})
      >>> int(m["count"])
      3
    """
    logits = state.apply_fn(state.variables(), batch["image"], train=False)
    mask = batch.get("mask")
    mask = jnp.ones(logits.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
    count = mask.sum()
    denom = jnp.maximum(count, 1.0)
    loss = (cross_entropy(logits, batch["label"]) * mask).sum() / denom
    correct = ((jnp.argmax(logits, -1) == batch["label"]) * mask).sum() / denom
    return {"loss": loss, "accuracy": correct, "count": count}
