"""Evaluation and prediction over whole splits, each example counted once."""

from __future__ import annotations

from typing import Any, Iterable

import jax
import numpy as np

from jaxcnn import ops
from jaxcnn import sharding as shd
from jaxcnn.data import Preprocess, Split, as_images
from jaxcnn.errors import DataError
from jaxcnn.training._policy import jit_with
from jaxcnn.training._state import TrainState, model_impl
from jaxcnn.training._steps import eval_step


def _options(state) -> tuple:
    """The XLA options of the conv/pool path of the model behind ``state``."""
    return tuple(sorted(ops.compiler_options(model_impl(state)).items()))


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    if len(x) == size:
        return x
    pad = np.zeros((size - len(x), *x.shape[1:]), x.dtype)
    return np.concatenate([x, pad])


def eval_call(state, images, labels, mask, preprocess):
    """The compiled call of :func:`evaluate` (and ``jaxcnn bench --what eval``):
    preprocess stored images, then :func:`eval_step` with a mask."""
    return eval_step(state, {"image": preprocess(images), "label": labels, "mask": mask})


def predict_call(variables, images, apply_fn, preprocess):
    """The compiled call of :func:`predict` (and ``jaxcnn bench --what infer``):
    class probabilities of stored images. ``variables``: ``state.variables()``."""
    logits = apply_fn(variables, preprocess(images), train=False)
    return jax.nn.softmax(logits, axis=-1)


def compiled_eval(state):
    """:func:`eval_call` jitted with the model's compiler options."""
    return jit_with(eval_call, _options(state), static_argnames=("preprocess",))


def compiled_predict(state):
    """:func:`predict_call` jitted with the model's compiler options."""
    return jit_with(predict_call, _options(state), static_argnames=("apply_fn", "preprocess"))


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
      >>> import optax
      >>> from jaxcnn.data import load_dataset
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
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
    if mesh is None:
        mesh = _job_mesh(state)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
    batch_size = min(batch_size, n) if mesh is None else batch_size
    sharding = shd.batch_sharding(mesh) if mesh is not None else None
    eval_fn = compiled_eval(state)
    # In a multi-process job each process reads only its rows of every batch.
    rows = shd.local_rows(sharding, batch_size)
    totals = []
    for start in range(0, n, batch_size):
        lo, hi = min(start + rows.start, n), min(start + rows.stop, n)
        images, labels = split.images[lo:hi], split.labels[lo:hi]
        mask = np.ones(len(labels), np.float32)
        arrays = tuple(_pad(a, rows.stop - rows.start) for a in (images, labels, mask))
        if sharding is not None:
            arrays = shd.put_batch(arrays, sharding, batch_size)
        totals.append(eval_fn(state, *arrays, preprocess))
    return merge_metrics(jax.device_get(totals))


def _job_mesh(state):
    """The mesh of a state that spans several processes (None: a local state)."""
    leaf = jax.tree.leaves(state.params)[0]
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and not sharding.is_fully_addressable:
        return sharding.mesh
    return None


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
      >>> import optax
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
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
    predict_fn = compiled_predict(state)
    out = []
    for start in range(0, n, batch_size):
        chunk = _pad(x[start:start + batch_size], batch_size)
        out.append(predict_fn(state.variables(), chunk, state.apply_fn, preprocess))
    return np.concatenate(jax.device_get(out))[:n]
