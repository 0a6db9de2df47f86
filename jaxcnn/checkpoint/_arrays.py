"""The arrays of a train state: what a checkpoint holds, and the abstract target to
restore them into.

A train state's ``apply_fn`` and ``tx`` are code, not data: checkpoints hold
only the arrays, and :func:`with_arrays` puts restored arrays back into a
state built from the config.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.checkpoint._errors import CheckpointError
from jaxcnn.training import TrainState


def state_arrays(state: TrainState) -> dict[str, Any]:
    """The arrays a checkpoint holds: ``{"step", "params", "opt_state"}``.

    Example:
      >>> import optax
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
      >>> s = create_train_state(build_model("flatten softmax", 2), (2, 2, 1),
      ...                        optax.adam(1e-3), jax.random.key(0))
      >>> sorted(state_arrays(s))
      ['opt_state', 'params', 'step']
    """
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def with_arrays(state: TrainState, arrays: Mapping[str, Any]) -> TrainState:
    """``state`` (for its ``apply_fn`` and ``tx``) with restored arrays put in.

    Example:
      >>> import optax
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
      >>> s = create_train_state(build_model("flatten softmax", 2), (2, 2, 1),
      ...                        optax.adam(1e-3), jax.random.key(0))
      >>> int(with_arrays(s, {**state_arrays(s), "step": jnp.array(5, jnp.int32)}).step)
      5
    """
    return state.replace(step=arrays["step"], params=arrays["params"],
                         opt_state=arrays["opt_state"])


def abstract_arrays(tree, sharding=None):
    """A restore target: the shapes and dtypes of ``tree`` with the sharding to restore onto.

    Args:
      tree: a train state, the dict of :func:`state_arrays`, or the output of
        ``jax.eval_shape`` of either (no memory is touched).
      sharding: a ``jax.sharding.Sharding`` for every array (e.g.
        :func:`jaxcnn.sharding.replicated` of the target mesh), or ``"numpy"``
        to restore host NumPy arrays. None: the first local device.

    Returns:
      The same structure with ``jax.ShapeDtypeStruct`` leaves (NumPy arrays
      for ``"numpy"``; Orbax restores into a leaf's type).

    Example:
      >>> t = abstract_arrays({"w": jnp.zeros((2, 3))}, "numpy")
      >>> type(t["w"]).__name__, t["w"].shape
      ('ndarray', (2, 3))
    """
    if isinstance(tree, TrainState):
        tree = state_arrays(tree)
    if isinstance(sharding, str):
        if sharding != "numpy":
            raise CheckpointError(f"sharding must be a jax Sharding, None or 'numpy'; "
                                  f"got {sharding!r}")
        return jax.tree.map(lambda x: np.empty(x.shape, x.dtype), tree)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite (one device scalar)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
