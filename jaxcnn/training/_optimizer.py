"""The optimiser and its learning-rate schedule, built together from a config."""

from __future__ import annotations

import functools

import jax
import optax

from jaxcnn.config import OptimizerConfig
from jaxcnn.errors import ConfigError


# one_cycle starts at learning_rate / this (optax's and PyTorch's default div_factor).
ONE_CYCLE_DIV_FACTOR = 25.0


def decay_mask(params):
    """Which parameters weight decay applies to: kernels (2 or more dimensions, i.e.
    conv and dense kernels), not biases or normalisation scales and offsets (1-D).

    The usual rule of modern CNN recipes (timm, big_vision): biases and
    normalisation parameters are few and are not what weight decay is meant to
    regularise.

    Args:
      params: a parameter pytree.

    Returns:
      A pytree of bools of the same structure.

    Example:
      >>> import jax.numpy as jnp
      >>> decay_mask({"kernel": jnp.zeros((3, 3, 1, 8)), "bias": jnp.zeros(8)})
      {'bias': False, 'kernel': True}
    """
    return jax.tree.map(lambda p: jax.numpy.ndim(p) >= 2, params)


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
      >>> s = learning_rate_schedule(OptimizerConfig(schedule="linear", warmup_steps=10), 100)
      >>> [round(float(s(i)), 6) for i in (0, 5, 10, 55, 100)]
      [0.0, 0.0005, 0.001, 0.0005, 0.0]
    """
    lr = float(cfg.learning_rate)
    total_steps = max(int(total_steps), 1)
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    warmup = min(cfg.warmup_steps, total_steps - 1)
    end = lr * cfg.end_factor
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
            decay_steps=total_steps, end_value=end)
    if cfg.schedule == "linear":
        decay = optax.linear_schedule(lr, end, total_steps - warmup)
        if not warmup:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
    if cfg.schedule == "one_cycle":
        # optax.cosine_onecycle_schedule's shape (and its div_factor 25), ending at
        # end_factor * lr instead of lr / (25 * final_div_factor).
        start = lr / ONE_CYCLE_DIV_FACTOR if warmup else lr
        scales = {warmup: lr / start, total_steps: cfg.end_factor} if warmup else {
            total_steps: cfg.end_factor}
        return optax.piecewise_interpolate_schedule("cosine", start, scales)
    boundaries = {max(1, int(b * total_steps)): cfg.step_factor for b in cfg.step_boundaries}
    return optax.piecewise_constant_schedule(lr, boundaries)


# Equal arguments return the same objects: a train state's ``tx`` is static in
# compiled steps, so sharing it lets identical runs share compiled code.
@functools.lru_cache(maxsize=64)
def build_optimizer(cfg: OptimizerConfig, total_steps: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax optimiser the config describes, and the schedule it follows.

    Args:
      cfg: the optimiser config; ``name="adam"`` gives
        ``optax.adam(schedule, b1, b2, eps)``. ``adamw``'s decoupled weight
        decay and the ``l2`` penalty (any optimiser: ``l2 * w`` added to the
        gradient first, PyTorch's ``weight_decay``) apply to kernels only
        (:func:`decay_mask`).
      total_steps: steps of the whole run (for the schedule).

    Returns:
      ``(tx, schedule)``: the schedule is the very function inside ``tx``, so
      the rate a run logs is the rate it used.

    Example:
      >>> tx, schedule = build_optimizer(OptimizerConfig(learning_rate=1e-3), total_steps=10)
      >>> float(schedule(0))
      0.001
    """
    lr = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adam":
        tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        # Decoupled: -lr * (adam step + wd * w), the decay scaled by the schedule.
        tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                         mask=decay_mask)
    elif cfg.name == "sgd":
        tx = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    elif cfg.name == "rmsprop":
        tx = optax.rmsprop(lr, decay=cfg.rho, eps=cfg.eps, momentum=cfg.momentum or None)
    elif cfg.name == "adagrad":
        tx = optax.adagrad(lr, eps=cfg.eps)
    else:  # OptimizerConfig validates the name; this guards library misuse.
        raise ConfigError(f"unknown optimizer {cfg.name!r}")
    if cfg.l2:
        # l2 * w joins the (clipped) gradient before the optimiser: PyTorch's weight_decay.
        tx = optax.chain(optax.add_decayed_weights(cfg.l2, mask=decay_mask), tx)
    if cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx, lr


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Builds the optax optimiser the config describes (:func:`build_optimizer` without
    the schedule).

    Example:
      >>> import jax.numpy as jnp
      >>> tx = make_optimizer(OptimizerConfig(learning_rate=1e-3), total_steps=10)
      >>> state = tx.init({"w": jnp.zeros(3)})
    """
    return build_optimizer(cfg, total_steps)[0]
