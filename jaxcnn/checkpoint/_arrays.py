"""The arrays of a train state: what a checkpoint holds, and the abstract target to
restore them into.

A train state's ``apply_fn`` and ``tx`` are code, not data: checkpoints hold
only the arrays, and :func:`with_arrays` puts restored arrays back into a
state built from the config.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.checkpoint._errors import CheckpointError
from jaxcnn.training import TrainState


def state_arrays(state: TrainState) -> dict[str, Any]:
    """The arrays a checkpoint holds: ``{"step", "params", "opt_state"}``, and
    ``"batch_stats"`` for a model with batch norm (absent otherwise, so checkpoints
    of other models keep the layout they always had).

    Example:
      >>> import optax
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
      >>> s = create_train_state(build_model("flatten softmax", 2), (2, 2, 1),
      ...                        optax.adam(1e-3), jax.random.key(0))
      >>> sorted(state_arrays(s))
      ['opt_state', 'params', 'step']
    """
    arrays = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    if state.batch_stats:
        arrays["batch_stats"] = state.batch_stats
    return arrays


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
                         opt_state=arrays["opt_state"],
                         batch_stats=arrays.get("batch_stats", state.batch_stats))


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


# The checksum recorded per array in a checkpoint's metadata.
CHECKSUM = "sha256"


def _leaf_name(path) -> str:
    """``params/Conv_0/kernel``: a leaf's path, the same whether the tree holds dicts,
    tuples or named tuples (Orbax may restore one as another)."""
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _digest(x: np.ndarray) -> str:
    x = np.ascontiguousarray(x)
    return hashlib.sha256(x.reshape(-1).view(np.uint8)).hexdigest()


def array_checksums(tree) -> dict[str, str]:
    """``{leaf path: "dtype:sha256"}`` of every array in ``tree`` (read to the host).

    Recorded with each checkpoint and compared on restore, so a flipped byte in
    a saved array is reported instead of silently changing the model. Arrays
    spread over several hosts (not fully addressable here) are skipped.

    Example:
      >>> c = array_checksums({"params": {"w": np.zeros(2, np.float32)}, "step": np.int32(3)})
      >>> sorted(c), c["params/w"].split(":")[0]
      (['params/w', 'step'], 'float32')
    """
    named = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if leaf is None or (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable):
            continue
        if jnp.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.extended):
            continue  # PRNG keys and other extended dtypes have no plain bytes
        named.append((_leaf_name(path), leaf))
    values = jax.device_get([leaf for _, leaf in named])
    out = {}
    for (name, _), value in zip(named, values):
        x = np.asarray(value)
        out[name] = f"{x.dtype.name}:{_digest(x)}"
    return out


def checksum_mismatches(tree, recorded: Mapping[str, str]) -> list[str]:
    """Paths of the arrays in ``tree`` whose checksum differs from ``recorded``.

    Arrays without a recorded checksum, and arrays restored into another dtype,
    are not compared.

    Example:
      >>> saved = array_checksums({"w": np.ones(3)})
      >>> checksum_mismatches({"w": np.ones(3)}, saved), checksum_mismatches({"w": np.zeros(3)}, saved)
      ([], ['w'])
    """
    now = array_checksums(tree)
    out = []
    for name, value in recorded.items():
        mine = now.get(name)
        if (isinstance(value, str) and mine is not None
                and mine.split(":")[0] == value.split(":")[0] and mine != value):
            out.append(name)
    return out


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite (one device scalar)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
