"""Loading a trained run for evaluation and prediction."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import optax

from jaxcnn import _fs
from jaxcnn.checkpoint._arrays import abstract_arrays, with_arrays
from jaxcnn.checkpoint._meta import check_meta
from jaxcnn.checkpoint._resume import _tree_differences
from jaxcnn.checkpoint._errors import CheckpointError
from jaxcnn.checkpoint._store import Checkpoints, corrupt_error, damaged_error
from jaxcnn.checkpoint._workdir import checkpoint_dir
from jaxcnn.config import BEST_METRICS, CheckpointConfig, Config
from jaxcnn.data import Preprocess
from jaxcnn.training import TrainState, build_state


@dataclasses.dataclass
class Restored:
    """A trained model loaded from a run directory's checkpoint.

    Attributes:
      state: a train state holding the restored arrays (usable with
        :func:`jaxcnn.training.evaluate` and :func:`jaxcnn.training.predict`).
      step: the restored step.
      config: the run's config.
      preprocess: the stored input transform.
      meta: everything saved with the step (dataset metadata, metrics, history, versions).
      path: the step's directory.
      which: how the step was chosen: ``"best"``, ``"latest"`` or ``"step"`` (a
        step number was given).
      best_metric: the metric ``"best"`` ranks by (None unless ``which`` is ``"best"``).
      metric_value: the step's value of ``best_metric`` (None: it has none, so
        ``"best"`` fell back to the latest checkpoint).
      why: why this step, in words: ``best by val_accuracy (0.9861)``,
        ``latest checkpoint``, ``step 44, as asked``, or ``latest checkpoint (no
        validation split: nothing to choose the best by)``.
    """

    state: TrainState
    step: int
    config: Config
    preprocess: Any
    meta: dict
    path: str
    which: str = "latest"
    best_metric: str | None = None
    metric_value: float | None = None
    why: str = "latest checkpoint"

    @property
    def epoch(self) -> int | float | None:
        """The epoch the step ends (a whole number at an epoch's end, else a fraction
        rounded to 0.01; None if the metadata does not say)."""
        return checkpoint_epoch(self.meta, self.step)

    @property
    def class_names(self) -> list[str]:
        """One name per class (from the dataset metadata), with control characters
        escaped (:func:`jaxcnn._fs.printable`): they came from a file and get printed."""
        d = self.meta.get("dataset") or {}
        names = d.get("class_names") or map(str, range(int(d.get("num_classes", 0))))
        return [_fs.printable(name) for name in names]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` the model was trained on."""
        return tuple(int(v) for v in self.meta["dataset"]["image_shape"])


def load(workdir: str, which: int | str | None = "best", sharding=None, *,
         best_metric: str | None = None) -> Restored:
    """Restores a run's checkpoint into a train state built from its stored config.

    The state is built abstractly (``jax.eval_shape``: no initialisation
    runs) and the arrays are restored straight onto ``sharding``, whatever
    device layout wrote them. The result says which step it is and why
    (:attr:`Restored.why`).

    ``"best"`` ranks the checkpoints still on disk by ``best_metric`` (the
    run's ``checkpoint.best_metric``); only checkpoints saved at the end of an
    epoch carry metrics. When none carries it (no validation split for a
    ``val_*`` metric), ``"best"`` is the latest checkpoint, and ``why`` says so.

    Args:
      workdir: the run directory (holding ``checkpoints/``).
      which: ``"best"``, ``"latest"`` or a step number.
      sharding: see :func:`abstract_arrays` (None: the first device;
        ``"numpy"``: host arrays).
      best_metric: what ``"best"`` ranks by (None: the run's
        ``checkpoint.best_metric``, read from its latest checkpoint).

    Returns:
      A :class:`Restored`.

    Raises:
      CheckpointError: no checkpoint, a missing step, corrupt files, arrays that
        fail their checksums, or stored metadata out of bounds or not fitting
        the saved arrays (names the field).

    Example:
      >>> import tempfile
      >>> from jaxcnn.config import override
      >>> from jaxcnn.run import train_and_evaluate
      >>> d = tempfile.mkdtemp()
      >>> cfg = override(Config(), {"train.epochs": 1, "train.num_devices": 1,
      ...                           "data.validation_fraction": 0.0})
      >>> _ = train_and_evaluate(cfg, d, progress=False)
      >>> r = load(d, "latest")
      >>> r.step, r.image_shape, r.epoch, r.why
      (44, (8, 8, 1), 1, 'latest checkpoint')
      >>> load(d, "best").why
      'latest checkpoint (no validation split: nothing to choose the best by)'
    """
    if which == "best" and best_metric is None:
        best_metric = _stored_best_metric(workdir)
    ckpts = Checkpoints(checkpoint_dir(workdir), read_only=True,
                        best_metric=best_metric or CheckpointConfig.best_metric)
    try:
        step = ckpts.resolve(which)
        meta = ckpts.read_meta(step)
        check_meta(ckpts, step, meta)  # before anything is built from it
        try:
            config = Config.from_dict(meta["config"])
            dataset = meta["dataset"]
            preprocess = Preprocess.from_dict(meta["preprocess"])
            steps_per_epoch = int(meta["steps_per_epoch"])
            dataset["image_shape"], dataset["num_classes"]  # noqa: B018 - both required
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt_error(ckpts, step, e) from e
        abstract, tx = _abstract_state(config, dataset, steps_per_epoch)
        # The model the metadata describes must be the one whose arrays were saved
        # (compared as shapes, before anything is allocated).
        stored = ckpts.array_metadata(step)
        try:
            differences = _tree_differences({"params": stored["params"]},
                                            {"params": abstract.params})
        except (KeyError, TypeError) as e:
            raise corrupt_error(ckpts, step, e) from e
        if differences:
            raise damaged_error(
                ckpts, step, "its stored config and dataset metadata (model, image_shape, "
                f"num_classes) do not fit its saved arrays ({'; '.join(differences[:4])})")
        arrays, meta = ckpts.restore(step, abstract_arrays(abstract, sharding))
    finally:
        ckpts.close()
    template = TrainState(step=None, apply_fn=abstract.apply_fn, params=None, tx=tx,
                          opt_state=None)
    kind, value, why = _why(which, step, meta, best_metric)
    return Restored(with_arrays(template, arrays), step, config, preprocess, meta,
                    ckpts.step_path(step), kind, best_metric if kind == "best" else None, value,
                    why)


def checkpoint_epoch(meta: Mapping, step: int) -> int | float | None:
    """The epoch a checkpoint's step ends, from its stored metadata: the epoch's number
    when it was saved at an epoch's end, else a fraction rounded to 0.01.

    Example:
      >>> checkpoint_epoch({"metrics": {"step": 44, "epoch": 2}, "epoch": 2.0}, 44)
      2
      >>> checkpoint_epoch({"epoch": 31 / 22}, 31)
      1.41
    """
    metrics = meta.get("metrics") or {}
    if metrics.get("step") == step and isinstance(metrics.get("epoch"), int):
        return metrics["epoch"]
    epoch = meta.get("epoch")
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool) or not math.isfinite(epoch):
        return None
    return int(epoch) if float(epoch).is_integer() else round(float(epoch), 2)


def _stored_best_metric(workdir: str) -> str:
    """The ``checkpoint.best_metric`` of the run's latest checkpoint (its stored config);
    the default when it cannot be read (the step's own error comes from :func:`load`)."""
    try:
        with Checkpoints(checkpoint_dir(workdir), read_only=True) as ckpts:
            meta = ckpts.read_meta(ckpts.resolve("latest"))
    except CheckpointError:
        return CheckpointConfig.best_metric
    metric = ((meta.get("config") or {}).get("checkpoint") or {}).get("best_metric")
    return metric if metric in BEST_METRICS else CheckpointConfig.best_metric


def _why(which, step: int, meta: Mapping, best_metric: str | None):
    """``(which, metric value, why)`` for :class:`Restored`."""
    if which is None or which == "latest":
        return "latest", None, "latest checkpoint"
    if which != "best":
        return "step", None, f"step {step}, as asked"
    value = (meta.get("metrics") or {}).get(best_metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return "best", float(value), f"best by {best_metric} ({value:.4g})"
    splits = (meta.get("dataset") or {}).get("splits") or {}
    if best_metric.startswith("val_") and not splits.get("validation"):
        because = "no validation split: nothing to choose the best by"
    else:
        because = (f"no checkpoint on disk records {best_metric}; only those saved at the end "
                   "of an epoch do")
    return "best", None, f"latest checkpoint ({because})"


def _abstract_state(config: Config, dataset: Mapping,
                    steps_per_epoch: int) -> tuple[TrainState, optax.GradientTransformation]:
    """The train state a stored config builds, as shapes only, and its optimiser
    (:func:`jaxcnn.training.build_state`, as training and resuming build it)."""
    built = build_state(config, dataset["image_shape"], int(dataset["num_classes"]),
                        steps_per_epoch, key=jax.random.key(0), abstract=True)
    return built.state, built.tx
