"""Loading a trained run for evaluation and prediction."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import optax

from jaxcnn import _fs
from jaxcnn.checkpoint._arrays import abstract_arrays, with_arrays
from jaxcnn.checkpoint._meta import check_meta
from jaxcnn.checkpoint._resume import _tree_differences
from jaxcnn.checkpoint._store import Checkpoints, corrupt_error, damaged_error
from jaxcnn.checkpoint._workdir import checkpoint_dir
from jaxcnn.config import Config
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
    """

    state: TrainState
    step: int
    config: Config
    preprocess: Any
    meta: dict
    path: str

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


def load(workdir: str, which: int | str | None = "best", sharding=None) -> Restored:
    """Restores a run's checkpoint into a train state built from its stored config.

    The state is built abstractly (``jax.eval_shape``: no initialisation
    runs) and the arrays are restored straight onto ``sharding``, whatever
    device layout wrote them.

    Args:
      workdir: the run directory (holding ``checkpoints/``).
      which: ``"best"``, ``"latest"`` or a step number.
      sharding: see :func:`abstract_arrays` (None: the first device;
        ``"numpy"``: host arrays).

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
      >>> r.step, r.image_shape
      (44, (8, 8, 1))
    """
    ckpts = Checkpoints(checkpoint_dir(workdir), read_only=True)
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
    return Restored(with_arrays(template, arrays), step, config, preprocess, meta,
                    ckpts.step_path(step))


def _abstract_state(config: Config, dataset: Mapping,
                    steps_per_epoch: int) -> tuple[TrainState, optax.GradientTransformation]:
    """The train state a stored config builds, as shapes only, and its optimiser
    (:func:`jaxcnn.training.build_state`, as training and resuming build it)."""
    built = build_state(config, dataset["image_shape"], int(dataset["num_classes"]),
                        steps_per_epoch, key=jax.random.key(0), abstract=True)
    return built.state, built.tx
