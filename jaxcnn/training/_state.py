"""The train state, the run's keys, and building both from a config.

:func:`build_state` is the one place where a model, its optimiser (with its
schedule) and a train state are made from a config and the dataset's
metadata: a fresh run, a resumed run and loading for inference all call it,
so they cannot disagree about what a run is.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxcnn.training._optimizer import build_optimizer


class TrainState(train_state.TrainState):
    """Step counter, parameters, optimiser and its state (Flax's ``TrainState``),
    and the model's running batch statistics.

    ``apply_fn`` and ``tx`` are static; ``step``, ``params``, ``opt_state`` and
    ``batch_stats`` are the arrays that checkpoints hold. ``step`` is an int32
    array from the start, so a fresh and a restored state have the same
    structure. ``batch_stats`` is the model's ``"batch_stats"`` collection
    (the running means and variances of its :class:`~jaxcnn.layers.BatchNorm`
    layers), updated by every training step and used by evaluation; ``{}``
    for a model without batch norm.
    """

    batch_stats: Any = struct.field(default_factory=dict)

    @classmethod
    def create(cls, *, apply_fn, params, tx, **kwargs):
        """A state at step 0 with ``tx.init(params)`` as optimiser state."""
        state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
        return state.replace(step=jnp.zeros((), jnp.int32))

    def variables(self, params=None) -> dict:
        """The model's variables for ``apply_fn``: ``{"params": ..., "batch_stats": ...}``
        (``params`` replaces the state's, e.g. inside a gradient).

        Example:
          >>> from jaxcnn.models import build_model
          >>> s = create_train_state(build_model("conv(4, 3) bn flatten softmax", 2), (4, 4, 1),
          ...                        optax.sgd(0.1), jax.random.key(0))
          >>> sorted(s.variables()), sorted(s.batch_stats["batch_norm_1"])
          (['batch_stats', 'params'], ['mean', 'var'])
        """
        out = {"params": self.params if params is None else params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


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
    variables = _init_variables(model, tuple(int(d) for d in input_shape), key)
    return TrainState.create(apply_fn=ModelApply(model), params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_variables(model, input_shape, key):
    variables = model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def model_impl(state) -> str:
    """The conv/pool ``impl`` of the model behind ``state`` (``"auto"`` if it has none)."""
    return getattr(getattr(state.apply_fn, "model", None), "impl", "auto")


@dataclasses.dataclass(frozen=True)
class BuiltState:
    """What :func:`build_state` makes.

    Attributes:
      model: the model.
      tx: the optimiser.
      schedule: its learning-rate schedule (step -> rate).
      state: the train state; abstract (``jax.ShapeDtypeStruct`` leaves) when
        built with ``abstract=True``.
    """

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state: TrainState


def build_state(config, image_shape: Sequence[int], num_classes: int, steps_per_epoch: int, *,
                key: jax.Array | None = None, abstract: bool = False) -> BuiltState:
    """Model, optimiser, schedule and train state of a run, from its config.

    Args:
      config: a :class:`jaxcnn.config.Config` (model, optimiser, epochs, seed).
      image_shape: ``(H, W, C)`` of the dataset.
      num_classes: classes of the dataset.
      steps_per_epoch: training steps per epoch (the schedule spans
        ``config.train.epochs * steps_per_epoch`` steps).
      key: the init key (default: ``split_keys(config.train.seed).init``).
      abstract: build the state with ``jax.eval_shape`` (no initialisation
        runs): the target to restore a checkpoint into.

    Returns:
      A :class:`BuiltState`.

    Example:
      >>> from jaxcnn.config import Config
      >>> b = build_state(Config(), (8, 8, 1), 10, steps_per_epoch=40, abstract=True)
      >>> b.state.step.shape, round(float(b.schedule(0)), 6)
      ((), 0.001)
    """
    from jaxcnn.models import build_model

    shape = tuple(int(d) for d in image_shape)
    model = build_model(config.model.name, int(num_classes), dtype=config.model.dtype,
                        impl=config.model.impl)
    tx, schedule = build_optimizer(config.optimizer, config.train.epochs * steps_per_epoch)
    key = split_keys(config.train.seed).init if key is None else key
    if abstract:
        state = jax.eval_shape(lambda k: create_train_state(model, shape, tx, k), key)
    else:
        state = create_train_state(model, shape, tx, key)
    return BuiltState(model, tx, schedule, state)
