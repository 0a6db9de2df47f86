"""The optimiser and its learning-rate schedule, built together from a config."""

from __future__ import annotations

import functools

import optax

from jaxcnn.config import OptimizerConfig
from jaxcnn.errors import ConfigError


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


# Equal arguments return the same objects: a train state's ``tx`` is static in
# compiled steps, so sharing it lets identical runs share compiled code.
@functools.lru_cache(maxsize=64)
def build_optimizer(cfg: OptimizerConfig, total_steps: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax optimiser the config describes, and the schedule it follows.

    Args:
      cfg: the optimiser config; ``name="adam"`` gives
        ``optax.adam(schedule, b1, b2, eps)``.
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
