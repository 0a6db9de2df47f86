"""Resuming a run: continue from its latest checkpoint, refusing a config or data that
changes what the saved arrays, the data order or the key stream mean."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import numpy as np

from jaxcnn.checkpoint._arrays import abstract_arrays, with_arrays
from jaxcnn.checkpoint._errors import ResumeMismatchError
from jaxcnn.checkpoint._meta import check_meta
from jaxcnn.checkpoint._store import Checkpoints
from jaxcnn.config import Config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training import TrainState

# Config fields a resumed run must share with the checkpoint: they fix the shapes
# of the saved arrays, the data order or the key stream, so changing one would
# either fail to restore or silently train a different run.
RESUME_FIELDS = (
    "model.name", "model.dtype", "data.dataset", "data.train_split", "data.validation_split",
    "data.batch_size", "data.validation_fraction", "data.normalize", "optimizer.name",
    "optimizer.grad_clip_norm", "train.seed",
)


def config_differences(saved: Config, new: Config, fields=RESUME_FIELDS) -> dict[str, tuple]:
    """``{"section.field": (saved, new)}`` for the ``fields`` that differ.

    Example:
      >>> from jaxcnn.config import override
      >>> config_differences(Config(), override(Config(), {"model.name": "keras_convnet"}))
      {'model.name': ('seed_cnn', 'keras_convnet')}
    """
    a, b = saved.to_dict(), new.to_dict()
    out = {}
    for key in fields:
        section, name = key.split(".")
        if a[section].get(name) != b[section].get(name):
            out[key] = (a[section].get(name), b[section].get(name))
    return out


def _tree_differences(saved_tree, target) -> list[str]:
    """Leaves whose shape or dtype differ between the stored metadata and the target."""
    saved = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(saved_tree)}
    want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(target)}
    out = []
    for key in sorted(set(saved) | set(want)):
        s, w = saved.get(key), want.get(key)
        if s is None or w is None:
            out.append(f"{key}: {'missing in the checkpoint' if s is None else 'not in the model'}")
        elif tuple(s.shape) != tuple(w.shape) or np.dtype(s.dtype) != np.dtype(w.dtype):
            out.append(f"{key}: {tuple(s.shape)} {np.dtype(s.dtype)} saved, "
                       f"{tuple(w.shape)} {np.dtype(w.dtype)} now")
    return out


@dataclasses.dataclass
class Resumed:
    """What :func:`resume` found.

    Attributes:
      state: the train state with the restored arrays.
      meta: the metadata of the restored step.
      step: the restored step.
      history: epoch records up to that step.
    """

    state: TrainState
    meta: dict
    step: int
    history: list


def resume(checkpoints: Checkpoints, config: Config, state: TrainState, sharding=None, *,
           dataset: Mapping | None = None, steps_per_epoch: int | None = None) -> Resumed | None:
    """Restores the latest checkpoint into ``state``'s structure, or None if there is none.

    Args:
      checkpoints: the run's checkpoints.
      config: the new run's config; the fields in :data:`RESUME_FIELDS` must
        equal the checkpoint's.
      state: a freshly built state (its ``apply_fn``, ``tx`` and structure).
      sharding: where to place the arrays (see :func:`abstract_arrays`).
      dataset: the new run's ``Dataset.metadata()``; its image shape, classes
        and training-split size must match the checkpoint's.
      steps_per_epoch: the new run's; must match (the data position is
        derived from the step).

    Returns:
      A :class:`Resumed`, or None when there are no checkpoints.

    Raises:
      ResumeMismatchError: the config or the array shapes differ (all
        differing fields are listed).
      CheckpointError: the latest checkpoint is corrupt, fails its checksums or
        stores metadata out of bounds.

    Example:
      >>> import tempfile
      >>> from jaxcnn.run import prepare
      >>> run = prepare(Config())
      >>> with Checkpoints(tempfile.mkdtemp()) as c:
      ...     resume(c, run.config, run.state) is None
      True
    """
    step = checkpoints.latest_step()
    if step is None:
        return None
    meta = checkpoints.read_meta(step)
    check_meta(checkpoints, step, meta)  # the stored preprocess is used as it is
    where = checkpoints.step_path(step)
    fix = ("Run with the checkpoint's settings, pass --force-new to start over in a new "
           "directory, or choose another --workdir")
    try:
        saved = Config.from_dict(meta.get("config") or {})
    except JaxcnnError as e:
        raise ResumeMismatchError(f"the config saved with step {step} ({where}) does not load "
                                  f"({e}). {fix}", differences={}) from None
    diffs = config_differences(saved, config)
    # The data itself may differ under the same name (another version, other files).
    old_data = meta.get("dataset") or {}
    for key, new in (dataset or {}).items():
        if key in ("image_shape", "num_classes") and old_data.get(key) not in (None, new):
            diffs[f"dataset.{key}"] = (old_data.get(key), new)
    old_train = (old_data.get("splits") or {}).get("train")
    new_train = ((dataset or {}).get("splits") or {}).get("train")
    if None not in (old_train, new_train) and old_train != new_train:
        diffs["dataset.splits.train"] = (old_train, new_train)
    old_spe = meta.get("steps_per_epoch")
    if None not in (old_spe, steps_per_epoch) and old_spe != steps_per_epoch:
        diffs["steps_per_epoch"] = (old_spe, steps_per_epoch)
    if diffs:
        lines = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diffs.items())
        raise ResumeMismatchError(f"cannot resume from step {step} in {where}: the config "
                                  f"changes {lines}. {fix}", differences=diffs)
    target = abstract_arrays(state, sharding)
    stored = checkpoints.array_metadata(step)
    # Parameters are nested dicts both on disk and in the model, so their paths compare
    # directly; the optimiser state's structure follows from optimizer.name (checked above).
    shape_diffs = _tree_differences({"params": stored["params"]}, {"params": target["params"]})
    if shape_diffs:
        raise ResumeMismatchError(
            f"cannot resume from step {step} in {where}: the saved arrays do not fit the model "
            f"({'; '.join(shape_diffs[:8])}). {fix}",
            differences={k: ("saved", "now") for k in shape_diffs})
    arrays, meta = checkpoints.restore(step, target)
    return Resumed(with_arrays(state, arrays), meta, step, list(meta.get("history") or []))
