"""Checkpoints: save, resume, survive preemption and crashes, restore on any device layout.

The only module that imports Orbax. It wraps ``orbax.checkpoint.CheckpointManager``
behind a small interface:

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
  and/or every epoch during :func:`jaxcnn.train.fit`; on SIGTERM or SIGINT
  finish the current step, save, wait, and stop (:class:`Preempted`).
* :func:`resume`: continue a run from its latest checkpoint, refusing a config
  that changes the model or the data.

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

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import logging
import math
import os
import signal
import threading
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

from jaxcnn import env
from jaxcnn.config import CheckpointConfig, Config
from jaxcnn.errors import JaxcnnError, NonFiniteLossError
from jaxcnn.train import Callback, TrainState

log = logging.getLogger("jaxcnn")

#: Where a run directory keeps its checkpoints.
CHECKPOINT_SUBDIR = "checkpoints"

# Orbax writes a step into "<step>.orbax-checkpoint-tmp[-<timestamp>]" and renames it
# when the save is complete.
_TMP_MARKER = ".orbax-checkpoint-tmp"

# Config fields a resumed run must share with the checkpoint: they fix the shapes
# of the saved arrays, the data order or the key stream, so changing one would
# either fail to restore or silently train a different run.
RESUME_FIELDS = (
    "model.name", "model.dtype", "data.dataset", "data.train_split", "data.validation_split",
    "data.batch_size", "data.validation_fraction", "data.normalize", "optimizer.name",
    "optimizer.grad_clip_norm", "train.seed",
)


class CheckpointError(JaxcnnError):
    """A checkpoint that cannot be written, found or read.

    Example:
      >>> issubclass(CheckpointError, JaxcnnError)
      True
    """


class ResumeMismatchError(CheckpointError):
    """The config differs from the checkpoint's in a field that resuming needs unchanged.

    Attributes:
      differences: ``{"section.field": (checkpoint value, new value)}``.

    Example:
      >>> e = ResumeMismatchError("differs", differences={"model.name": ("a", "b")})
      >>> e.differences["model.name"]
      ('a', 'b')
    """

    def __init__(self, message: str, *, differences: Mapping[str, tuple]):
        super().__init__(message)
        self.differences = dict(differences)


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; run again to resume.

    Not a :class:`~jaxcnn.errors.JaxcnnError`: nothing was wrong with the
    input. The command line exits with ``EXIT_PREEMPTED`` (75).

    Attributes:
      step: the step that was saved.
      workdir: the run directory to resume from.
      signal_name: ``SIGTERM`` or ``SIGINT``.

    Example:
      >>> str(Preempted(step=7, workdir="runs/a", signal_name="SIGTERM")).split(";")[0]
      'SIGTERM: saved step 7 in runs/a'
    """

    def __init__(self, *, step: int, workdir: str, signal_name: str):
        super().__init__(f"{signal_name}: saved step {step} in {workdir}; run the same command "
                         "again to resume")
        self.step, self.workdir, self.signal_name = step, workdir, signal_name


# ---------------------------------------------------------------------------
# The arrays of a train state


def state_arrays(state: TrainState) -> dict[str, Any]:
    """The arrays a checkpoint holds: ``{"step", "params", "opt_state"}``.

    Example:
      >>> import optax
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.train import create_train_state
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
      >>> from jaxcnn.train import create_train_state
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
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# ---------------------------------------------------------------------------
# A directory of checkpoints


def _metric_fn(metric: str) -> Callable[[Mapping], float]:
    """Orbax ranks checkpoints by a score where higher is better."""
    sign = -1.0 if metric.endswith("loss") else 1.0

    def score(metrics):
        value = (metrics or {}).get(metric)
        if value is None or not math.isfinite(value):
            return -math.inf
        return sign * float(value)

    return score


def leftover_temporary_dirs(directory: str) -> list[str]:
    """Incomplete saves (``<step>.orbax-checkpoint-tmp*``) under a checkpoint directory.

    Example:
      >>> import tempfile
      >>> leftover_temporary_dirs(tempfile.mkdtemp())
      []
    """
    return sorted(glob.glob(os.path.join(glob.escape(directory), f"*{_TMP_MARKER}*")))


class Checkpoints:
    """A directory of numbered checkpoints (Orbax ``CheckpointManager``).

    Args:
      directory: where the step directories live (created unless ``read_only``).
      keep: keep the most recent ``keep`` checkpoints.
      keep_best: also keep the ``keep_best`` best by ``best_metric``.
      best_metric: a key of the ``metrics`` given to :meth:`save`.
      async_save: write in a background thread; :meth:`wait` or :meth:`close`
        waits for it.
      read_only: only read (for evaluation and prediction); nothing is
        created, cleaned or deleted.

    Use it as a context manager, or call :meth:`close`: it waits for the
    last save and raises :class:`CheckpointError` if it failed.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> with Checkpoints(d, keep=1, keep_best=1, best_metric="accuracy") as c:
      ...     for step, acc in [(1, 0.9), (2, 0.5), (3, 0.7)]:
      ...         _ = c.save(step, {"step": jnp.array(step)}, meta={},
      ...                    metrics={"accuracy": acc})
      >>> c.steps(), c.best_step(), c.latest_step()
      ([1, 3], 1, 3)
    """

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 3,
        keep_best: int = 1,
        best_metric: str = "val_accuracy",
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        self._pending: int | None = None  # the step a background save is writing
        self.read_only = read_only
        if read_only:
            if not os.path.isdir(self.directory):
                raise CheckpointError(f"no checkpoints in {self.directory}: the directory does "
                                      "not exist; train first (jaxcnn train --workdir W)")
        else:
            _check_writable(self.directory)
        leftovers = [] if read_only else leftover_temporary_dirs(self.directory)
        score = _metric_fn(best_metric)
        policies = [ocp_policies.LatestN(n=keep)]
        if keep_best:
            policies.append(ocp_policies.BestN(get_metric_fn=score, n=keep_best,
                                               keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            best_fn=score,
            best_mode="max",
            preservation_policy=ocp_policies.AnyPreservationPolicy(policies),
        )
        # Handlers registered up front, so a fresh manager can read either item alone.
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state_handler, meta_handler = ocp.StandardCheckpointHandler(), ocp.JsonCheckpointHandler()
        for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
            registry.add("state", args, state_handler)
        for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
            registry.add("meta", args, meta_handler)
        with _quiet_absl(read_only):  # Orbax warns that a read-only manager will not save
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  handler_registry=registry)
        if leftovers:
            # Orbax deletes them in the background; wait, so a crash right now cannot race it.
            getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
            log.info("removed %d incomplete checkpoint(s) left by an interrupted save: %s",
                     len(leftovers), ", ".join(os.path.basename(p) for p in leftovers))

    # -- queries ---------------------------------------------------------------

    def steps(self) -> list[int]:
        """Complete checkpoint steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The best step by ``best_metric`` (the latest when none has the metric)."""
        return self._manager.best_step()

    def step_path(self, step: int) -> str:
        """The directory of one step."""
        return os.path.join(self.directory, str(step))

    def resolve(self, which: int | str | None = "latest") -> int:
        """A step number from ``"latest"``, ``"best"`` or an int; raises if absent.

        Example:
          >>> import tempfile
          >>> with Checkpoints(tempfile.mkdtemp()) as c:
          ...     try:
          ...         c.resolve("latest")
          ...     except CheckpointError as e:
          ...         print(str(e).split(":")[0])
          no checkpoints in ...
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoints in {self.directory}: train first "
                                  "(jaxcnn train --workdir W), or check the --workdir")
        if which is None or which == "latest":
            return steps[-1]
        if which == "best":
            return int(self.best_step())
        step = int(which)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                                  f"available steps: {', '.join(map(str, steps))}")
        return step

    # -- saving ----------------------------------------------------------------

    def save(self, step: int, arrays, meta: Mapping, metrics: Mapping | None = None) -> bool:
        """Starts saving ``arrays`` (any pytree of arrays) and ``meta`` (JSON) as ``step``.

        With ``async_save`` the call returns once the arrays are copied off
        the device; the files are written in the background. An earlier
        background save that failed raises here.

        Args:
          step: the step number (a step already saved is skipped).
          arrays: e.g. :func:`state_arrays` of a train state.
          meta: JSON-serialisable metadata stored beside the arrays.
          metrics: numbers that rank checkpoints for ``keep_best``.

        Returns:
          True when a save was started.

        Raises:
          CheckpointError: this or an earlier save failed (disk full,
            permissions), naming the directory.
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only; cannot save")
        if step in self._manager.all_steps():
            return False
        # Fails at once on a vanished or read-only directory; Orbax would wait minutes
        # for a step directory that can never be created.
        _check_writable(self.directory)
        # Orbax would wait for the previous background save inside save(); waiting here
        # first attributes a failure to the step that actually failed.
        self.wait()
        metrics = {k: float(v) for k, v in (metrics or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        try:
            saved = bool(self._manager.save(
                int(step), force=True, metrics=metrics,
                args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                        meta=ocp.args.JsonSave(_jsonable(meta)))))
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for I/O failures
            raise self._save_error(step, e) from e
        self._pending = int(step) if saved else None
        return saved

    def wait(self) -> None:
        """Waits for a background save; raises :class:`CheckpointError` if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(self._pending, e) from e
        finally:
            self._pending = None

    def close(self) -> None:
        """Waits for the last save (raising if it failed) and releases Orbax's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing: still finish writing what was started, but keep the first error.
        try:
            self.close()
        except Exception as e:  # noqa: BLE001
            log.error("%s", e)

    def _save_error(self, step, error: BaseException) -> CheckpointError:
        latest = [s for s in self.steps() if os.path.isdir(self.step_path(s))]
        what = f"step {step}" if step is not None else "a checkpoint"
        kept = (f"the last complete checkpoint is step {latest[-1]} in {self.directory}"
                if latest else "no complete checkpoint exists yet")
        return CheckpointError(
            f"saving {what} to {self.directory} failed ({type(error).__name__}: {error}); "
            f"{kept}. Free disk space or fix the permissions, or choose another --workdir")

    # -- restoring -------------------------------------------------------------

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with ``step``.

        Raises:
          CheckpointError: it is missing or not valid JSON (names the path and
            the previous complete step).
        """
        step = self.resolve(step)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = out["meta"]
        except Exception as e:  # noqa: BLE001
            raise self._corrupt(step, e) from e
        if not isinstance(meta, dict):
            raise self._corrupt(step, ValueError("meta is not a JSON object"))
        return meta

    def restore(self, step: int | str | None = "latest", target=None) -> tuple[Any, dict]:
        """Restores the arrays and metadata of one step.

        Args:
          step: a step number, ``"latest"`` or ``"best"``.
          target: the structure to restore into, from :func:`abstract_arrays`
            (this is where the device layout is chosen). None restores the
            saved structure as plain arrays on the first local device.

        Returns:
          ``(arrays, meta)``.

        Raises:
          CheckpointError: the step is missing, or its files are corrupt or
            truncated (the message names the step, its path and the previous
            complete step).
        """
        step = self.resolve(step)
        meta = self.read_meta(step)
        try:
            if target is None:
                target = abstract_arrays(self.array_metadata(step))
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))
        except Exception as e:  # noqa: BLE001
            raise self._corrupt(step, e) from e
        return out["state"], meta

    def array_metadata(self, step: int):
        """The saved arrays' structure with shapes and dtypes (nothing is read but metadata).

        Raises:
          CheckpointError: the metadata is missing or unreadable.
        """
        try:
            tree = self._manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise self._corrupt(step, e) from e
        if tree is None:
            raise self._corrupt(step, FileNotFoundError("no array metadata"))
        return tree.tree if hasattr(tree, "tree") else tree

    def _corrupt(self, step: int, error: BaseException) -> CheckpointError:
        earlier = [s for s in self.steps() if s < step]
        offer = (f"step {earlier[-1]} is the previous complete checkpoint: move {self.step_path(step)} "
                 f"away to resume from it (or pass --step {earlier[-1]} to eval/predict)"
                 if earlier else "no earlier checkpoint exists: start over with --force-new")
        text = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {text[0][:300] if text else ''}"
        return CheckpointError(f"checkpoint at step {step} ({self.step_path(step)}) is corrupt or "
                               f"truncated ({reason}); {offer}")


@contextlib.contextmanager
def _quiet_absl(enabled: bool = True):
    logger = logging.getLogger("absl")
    level = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_writable(directory: str) -> None:
    problem = env.writable_dir_problem(directory)
    if problem:
        raise CheckpointError(f"cannot write checkpoints to {directory!r}: {problem}; fix its "
                              "permissions or free space, or choose another --workdir")


def _jsonable(obj):
    """JSON-ready copy: tuples to lists, NumPy scalars to Python, non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def from_config(directory: str, cfg: CheckpointConfig, read_only: bool = False) -> Checkpoints:
    """:class:`Checkpoints` set up from a :class:`~jaxcnn.config.CheckpointConfig`.

    Example:
      >>> import tempfile
      >>> from jaxcnn.config import CheckpointConfig
      >>> with from_config(tempfile.mkdtemp(), CheckpointConfig(keep=2)) as c:
      ...     c.steps()
      []
    """
    return Checkpoints(directory, keep=cfg.keep, keep_best=cfg.keep_best,
                       best_metric=cfg.best_metric, async_save=cfg.async_save,
                       read_only=read_only)


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``.

    Example:
      >>> checkpoint_dir("runs/a")
      'runs/a/checkpoints'
    """
    return os.path.join(workdir, CHECKPOINT_SUBDIR)


def has_checkpoints(workdir: str) -> bool:
    """Whether a run directory holds at least one complete checkpoint.

    Example:
      >>> import tempfile
      >>> has_checkpoints(tempfile.mkdtemp())
      False
    """
    d = checkpoint_dir(workdir)
    return os.path.isdir(d) and any(name.isdigit() and os.path.isdir(os.path.join(d, name))
                                    for name in os.listdir(d))


def fresh_workdir(workdir: str) -> str:
    """``workdir`` if it has no checkpoints, else the first free ``workdir-2``, ``-3``, ...

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> fresh_workdir(d) == d
      True
    """
    if not has_checkpoints(workdir):
        return workdir
    base = workdir.rstrip("/")
    n = 2
    while has_checkpoints(f"{base}-{n}") or (os.path.exists(f"{base}-{n}")
                                              and os.listdir(f"{base}-{n}")):
        n += 1
    return f"{base}-{n}"


# ---------------------------------------------------------------------------
# Preemption


class PreemptionGuard:
    """Turns SIGTERM and SIGINT into a request to stop after the current step.

    Inside the ``with`` block the signals only set :attr:`requested`; the
    previous handlers come back on exit. A second SIGINT raises
    ``KeyboardInterrupt`` as usual (a user insisting). Outside the main
    thread, signals cannot be caught and the guard does nothing.

    Orbax's own preemption check needs ``jax.distributed``; this works in a
    single process too.

    Example:
      >>> with PreemptionGuard() as guard:
      ...     os.kill(os.getpid(), signal.SIGTERM)
      ...     guard.requested
      'SIGTERM'
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: finishing the current step, saving a checkpoint, then "
                    "stopping", self.requested)

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ---------------------------------------------------------------------------
# Saving during fit


class CheckpointCallback(Callback):
    """Saves checkpoints from :func:`jaxcnn.train.fit`.

    Saves at the end of every ``every_epochs``-th epoch (with the epoch's
    record as metrics), every ``every_steps`` steps, at the end of training,
    and when ``guard`` reports a signal (then it stops training). A state that
    is not finite is never saved.

    Args:
      checkpoints: where to save.
      meta: JSON metadata common to every save (config, dataset,
        preprocessing, versions); each save adds ``step``, ``epoch``,
        ``metrics`` and ``history``.
      steps_per_epoch: to tell epoch boundaries.
      every_steps: save every this many steps (0: off).
      every_epochs: save every this many epochs (0: off).
      history: epoch records of earlier, resumed training.
      guard: a :class:`PreemptionGuard`, or None.

    Attributes:
      preempted_step: the step saved on a signal (None if none came).
      last_saved: the newest step saved or found.

    Example:
      >>> import tempfile
      >>> with Checkpoints(tempfile.mkdtemp()) as c:
      ...     cb = CheckpointCallback(c, {"config": {}}, steps_per_epoch=10, every_epochs=1)
      ...     cb.last_saved is None
      True
    """

    def __init__(self, checkpoints: Checkpoints, meta: Mapping, *, steps_per_epoch: int,
                 every_steps: int = 0, every_epochs: int = 1, history=(), guard=None):
        self.checkpoints = checkpoints
        self.meta = dict(meta)
        self.steps_per_epoch = steps_per_epoch
        self.every_steps, self.every_epochs = every_steps, every_epochs
        self.history = list(history)
        self.guard = guard
        self.preempted_step: int | None = None
        self.last_saved = checkpoints.latest_step()
        self._skipped_bad = False

    def save(self, state: TrainState, step: int, record: Mapping | None = None) -> bool:
        """Saves ``state`` as ``step`` unless it is already saved or not finite."""
        if self.last_saved is not None and step <= self.last_saved:
            return False
        # fit keeps the last good state when a loss is not finite but counts on; the
        # mismatch means this step was bad, and fit raises at its next log point.
        if int(jax.device_get(state.step)) != step or not bool(_all_finite(state.params)):
            if int(jax.device_get(state.step)) == step:
                raise NonFiniteLossError(
                    f"the parameters became NaN or Inf by step {step}; not saving them. The "
                    f"last good checkpoint (step {self.last_saved}) in "
                    f"{self.checkpoints.directory} was kept. Lower the learning rate or clip "
                    "gradients (--set optimizer.grad_clip_norm=1.0)", step=step)
            if not self._skipped_bad:
                log.warning("not saving step %d or later: the loss was not finite", step)
            self._skipped_bad = True
            return False
        meta = {**self.meta, "step": step, "epoch": step / self.steps_per_epoch,
                "metrics": dict(record or {}), "history": self.history,
                "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        saved = self.checkpoints.save(step, state_arrays(state), meta, metrics=record)
        if saved:
            self.last_saved = step
        return saved

    def _check_guard(self, state, step) -> bool:
        if self.guard is not None and self.guard.requested and self.preempted_step is None:
            self.save(state, step)
            self.checkpoints.wait()
            self.preempted_step = step
            log.warning("saved step %d in %s after %s", step, self.checkpoints.directory,
                        self.guard.requested)
            return True
        return False

    def on_step_end(self, state, step):
        """Saves on a signal or every ``every_steps`` (epoch ends wait for the record)."""
        if self._check_guard(state, step):
            return True
        if step % self.steps_per_epoch and self.every_steps and step % self.every_steps == 0:
            self.save(state, step)
        return None

    def on_epoch_end(self, state, record):
        """Saves every ``every_epochs`` epochs (or a due ``every_steps``) with the record."""
        step = record["step"]
        if step % self.steps_per_epoch:  # a partial epoch cut short by a stop
            return None
        self.history.append(dict(record))
        epoch = step // self.steps_per_epoch
        due = ((self.every_epochs and epoch % self.every_epochs == 0)
               or (self.every_steps and step % self.every_steps == 0))
        if due:
            self.save(state, step, record)
        return self._check_guard(state, step) or None

    def on_train_end(self, state, history):
        """Saves the final state if it is newer than the last save."""
        step = int(jax.device_get(state.step))
        record = next((r for r in reversed(self.history) if r.get("step") == step), None)
        if self.preempted_step is None:
            self.save(state, step, record)


# ---------------------------------------------------------------------------
# Resuming a run


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
      CheckpointError: the latest checkpoint is corrupt.

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


# ---------------------------------------------------------------------------
# Loading a trained run for evaluation and prediction


@dataclasses.dataclass
class Restored:
    """A trained model loaded from a run directory's checkpoint.

    Attributes:
      state: a train state holding the restored arrays (usable with
        :func:`jaxcnn.train.evaluate` and :func:`jaxcnn.train.predict`).
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
        """One name per class (from the dataset metadata)."""
        d = self.meta.get("dataset") or {}
        return list(d.get("class_names") or map(str, range(int(d.get("num_classes", 0)))))

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
      CheckpointError: no checkpoint, a missing step, or corrupt files.

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
    from jaxcnn.data import Preprocess
    from jaxcnn.models import build_model
    from jaxcnn.train import create_train_state, make_optimizer

    ckpts = Checkpoints(checkpoint_dir(workdir), read_only=True)
    try:
        step = ckpts.resolve(which)
        meta = ckpts.read_meta(step)
        try:
            config = Config.from_dict(meta["config"])
            dataset = meta["dataset"]
            preprocess = Preprocess.from_dict(meta["preprocess"])
            steps_per_epoch = int(meta["steps_per_epoch"])
        except (KeyError, TypeError, ValueError) as e:
            raise ckpts._corrupt(step, e) from e  # noqa: SLF001
        model = build_model(config.model.name, int(dataset["num_classes"]),
                            dtype=config.model.dtype, impl=config.model.impl)
        tx = make_optimizer(config.optimizer, config.train.epochs * steps_per_epoch)
        shape = tuple(int(v) for v in dataset["image_shape"])
        abstract = jax.eval_shape(
            lambda key: create_train_state(model, shape, tx, key), jax.random.key(0))
        arrays, meta = ckpts.restore(step, abstract_arrays(abstract, sharding))
    finally:
        ckpts.close()
    template = TrainState(step=None, apply_fn=abstract.apply_fn, params=None, tx=tx,
                          opt_state=None)
    return Restored(with_arrays(template, arrays), step, config, preprocess, meta,
                    ckpts.step_path(step))
