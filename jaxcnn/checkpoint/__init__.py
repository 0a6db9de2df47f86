"""Checkpoints: save, resume, survive preemption and crashes, restore on any device layout.

Orbax is imported in one place, the private ``_store`` module, behind a small interface:

* :class:`Checkpoints`: a directory of numbered checkpoints. Each step holds
  two items: ``state`` (the train state's arrays: ``step``, ``params``,
  ``opt_state``; written with ``StandardSave``) and ``meta`` (JSON: the
  resolved config, dataset metadata, the preprocessing statistics, the
  metrics at that step, the history so far and the library versions). It keeps
  the last ``keep`` checkpoints plus the ``keep_best`` best by a metric, saves
  asynchronously, and raises :class:`CheckpointError` when a background save
  failed.
* :func:`abstract_arrays` and :meth:`Checkpoints.restore`: restore into an
  abstract target (shapes, dtypes and the *target* sharding), so a checkpoint
  written with the batch sharded over 8 devices restores onto 1 device, onto 4,
  or into host NumPy arrays.
* :class:`CheckpointCallback` and :class:`PreemptionGuard`: save every N steps
  and/or every epoch during :func:`jaxcnn.training.fit`; on SIGTERM or SIGINT
  finish the current step, save, wait, and stop (:class:`Preempted`).
* :func:`resume`: continue a run from its latest checkpoint, refusing a config
  that changes the model or the data.
* :func:`load`: a trained run's checkpoint as a train state, for evaluation
  and prediction.
* Integrity: each step records a SHA-256 checksum per array in its ``meta``
  (``array_checksums``); :meth:`Checkpoints.restore` recomputes them and
  refuses a step whose bytes changed. Stored metadata is checked against sane
  bounds (:func:`meta_problem`) and against the saved arrays before use.
* :func:`lock_workdir`: ``jaxcnn train`` holds an exclusive ``flock`` on its
  run directory for the whole run; a second writer fails at once, naming the
  holder.

A train state's ``apply_fn`` and ``tx`` are code, not data: checkpoints hold
only the arrays, and :func:`with_arrays` puts restored arrays back into a
state built from the config.

Crash safety comes from Orbax's commit protocol: a step is written into
``<step>.orbax-checkpoint-tmp`` and renamed to ``<step>`` only when complete
(with a ``commit_success.txt`` inside), so a process killed mid-save leaves
every earlier step intact; the next :class:`Checkpoints` that writes removes
the leftover temporary directory.

Example:
  >>> import tempfile
  >>> import jax.numpy as jnp
  >>> with Checkpoints(tempfile.mkdtemp(), async_save=False) as ckpts:
  ...     _ = ckpts.save(3, {"step": jnp.array(3), "params": {"w": jnp.ones(2)},
  ...                        "opt_state": ()}, meta={"note": "hi"})
  ...     arrays, meta = ckpts.restore(3)
  >>> int(arrays["step"]), meta["note"], ckpts.steps()
  (3, 'hi', [3])
"""

from jaxcnn.checkpoint._arrays import abstract_arrays, state_arrays, with_arrays
from jaxcnn.checkpoint._callback import CheckpointCallback, PreemptionGuard, explain_divergence
from jaxcnn.checkpoint._errors import CheckpointError, Preempted, ResumeMismatchError
from jaxcnn.checkpoint._load import Restored, load
from jaxcnn.checkpoint._resume import RESUME_FIELDS, Resumed, config_differences, resume
from jaxcnn.checkpoint._meta import meta_problem
from jaxcnn.checkpoint._store import (Checkpoints, from_config, leftover_temporary_dirs,
                                      readable_reason)
from jaxcnn.checkpoint._workdir import (checkpoint_dir, fresh_workdir, has_checkpoints,
                                        lock_workdir)

__all__ = [
    "RESUME_FIELDS", "CheckpointCallback", "CheckpointError", "Checkpoints", "Preempted",
    "PreemptionGuard", "Restored", "ResumeMismatchError", "Resumed", "abstract_arrays",
    "checkpoint_dir", "config_differences", "explain_divergence", "fresh_workdir",
    "from_config", "has_checkpoints", "leftover_temporary_dirs", "load", "lock_workdir",
    "meta_problem", "readable_reason", "resume", "state_arrays", "with_arrays",
]
