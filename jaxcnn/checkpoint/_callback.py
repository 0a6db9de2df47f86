"""Saving during :func:`jaxcnn.training.fit`: the save callback, and the guard that turns
SIGTERM/SIGINT into "save and stop"."""

from __future__ import annotations

import datetime
import logging
import signal
import threading
import time
from typing import Mapping

import jax

from jaxcnn import distributed
from jaxcnn.checkpoint._arrays import all_finite, state_arrays
from jaxcnn.checkpoint._errors import CheckpointError
from jaxcnn.checkpoint._store import Checkpoints
from jaxcnn.config import improves
from jaxcnn.errors import NonFiniteLossError
from jaxcnn.training import Callback, TrainState

log = logging.getLogger("jaxcnn")

_DIVERGED_FIX = ("Lower the learning rate (e.g. --lr 1e-4), clip gradients "
                 "(--set optimizer.grad_clip_norm=1.0), or check the inputs for NaN/Inf.")


def saved_on_disk(checkpoints: Checkpoints | None) -> str:
    """A sentence saying which checkpoint a run has on disk (after the pending save).

    Example:
      >>> saved_on_disk(None)
      'Checkpoints are off (checkpoint.enabled=false), so nothing was saved.'
    """
    if checkpoints is None:
        return "Checkpoints are off (checkpoint.enabled=false), so nothing was saved."
    try:
        checkpoints.wait()
    except CheckpointError as e:  # reported on close; say what is on disk regardless
        log.debug("%s", e)
    latest = checkpoints.latest_step()
    if latest is None:
        return f"No checkpoint was saved in {checkpoints.directory}."
    return (f"The newest checkpoint on disk is step {latest} ({checkpoints.step_path(latest)}); "
            "running again with a lower learning rate resumes from it.")


def explain_divergence(error: NonFiniteLossError,
                       checkpoints: Checkpoints | None) -> NonFiniteLossError:
    """``error`` (from :func:`jaxcnn.training.fit`) restated with what exists on disk
    instead of the in-memory state, which a command loses when it exits.

    Example:
      >>> e = NonFiniteLossError("the training loss became NaN or Inf at step 5; training "
      ...                        "stopped and the state from step 4 was kept.", step=5)
      >>> print(explain_divergence(e, None))  # doctest: +NORMALIZE_WHITESPACE
      the training loss became NaN or Inf at step 5; training stopped. Checkpoints are off
      (checkpoint.enabled=false), so nothing was saved. Lower the learning rate (e.g. --lr
      1e-4), clip gradients (--set optimizer.grad_clip_norm=1.0), or check the inputs for
      NaN/Inf.
    """
    what = str(error).split(";")[0].strip()
    out = NonFiniteLossError(f"{what}; training stopped. {saved_on_disk(checkpoints)} "
                             f"{_DIVERGED_FIX}", step=error.step, state=error.state)
    return out


class PreemptionGuard:
    """Turns SIGTERM and SIGINT into a request to stop after the current step.

    Inside the ``with`` block the signals only set :attr:`requested`; the
    previous handlers come back on exit. A second SIGINT raises
    ``KeyboardInterrupt`` as usual (a user insisting). Outside the main
    thread, signals cannot be caught and the guard does nothing.

    In a multi-process job (:mod:`jaxcnn.distributed`) the guard installs no
    handler: JAX's preemption service catches SIGTERM in any process, and
    :meth:`check` turns true in every process at the same step, so all of
    them save that step together and stop (SIGINT there ends the job, see
    :class:`jaxcnn.distributed.FailureWatch`).

    Example:
      >>> import os, signal
      >>> with PreemptionGuard() as guard:
      ...     os.kill(os.getpid(), signal.SIGTERM)
      ...     guard.requested
      'SIGTERM'
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}
        self._multi = distributed.current().num_processes > 1
        self._checks = 0

    def check(self) -> bool:
        """Whether to save and stop now. Call it at the same points in every process:
        in a multi-process job each call is one step of JAX's preemption sync protocol."""
        if self._multi and self.requested is None:
            self._checks += 1
            if distributed.reached_preemption(self._checks):
                self.requested = "SIGTERM"
                log.warning("preemption notice (SIGTERM) reached every process: saving a "
                            "checkpoint, then stopping")
        return self.requested is not None

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: finishing the current step, saving a checkpoint, then "
                    "stopping", self.requested)

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread() and not self._multi:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class CheckpointCallback(Callback):
    """Saves checkpoints from :func:`jaxcnn.training.fit`.

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
      min_interval_seconds: skip a due epoch-end save while the last save
        is younger than this, unless the epoch's ``best_metric`` is the best
        so far (0: never skip). Step saves, signal saves and the final save
        are never skipped.
      best_metric: the record key (``val_accuracy``, ``val_loss``,
        ``accuracy`` or ``loss``; ``*loss`` is better when lower) whose
        improvement always saves.
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
                 every_steps: int = 0, every_epochs: int = 1,
                 min_interval_seconds: float = 0.0, best_metric: str | None = None,
                 history=(), guard=None):
        self.checkpoints = checkpoints
        self.meta = dict(meta)
        self.steps_per_epoch = steps_per_epoch
        self.every_steps, self.every_epochs = every_steps, every_epochs
        self.history = list(history)
        self.guard = guard
        self.preempted_step: int | None = None
        self.last_saved = checkpoints.latest_step()
        self._skipped_bad = False
        self.min_interval_seconds, self.best_metric = min_interval_seconds, best_metric
        self._last_save_time = time.monotonic()  # the run starts from its init or a restore
        self._last_step: int | None = None  # the step of the previous on_step_end
        self._best_value = None
        for record in self.history:  # a resumed run: the best of its earlier epochs
            self._improves(record)

    def save(self, state: TrainState, step: int, record: Mapping | None = None) -> bool:
        """Saves ``state`` as ``step`` unless it is already saved or not finite."""
        if self.last_saved is not None and step <= self.last_saved:
            return False
        # fit keeps the last good state when a loss is not finite but counts on; the
        # mismatch means this step was bad, and fit raises at its next log point.
        state_step = int(jax.device_get(state.step))
        if state_step != step or not bool(all_finite(state.params)):
            if state_step == step:
                raise NonFiniteLossError(
                    f"the parameters became NaN or Inf by step {step}; not saving them. "
                    f"{saved_on_disk(self.checkpoints)} {_DIVERGED_FIX}", step=step)
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
            self._last_save_time = time.monotonic()
        return saved

    def _improves(self, record: Mapping) -> bool:
        """Whether ``record`` holds the best ``best_metric`` so far (and remembers it)."""
        value = record.get(self.best_metric) if self.best_metric else None
        if value is None:
            return False
        better = improves(self.best_metric, value, self._best_value)
        if better:
            self._best_value = value
        return better

    def _check_guard(self, state, step) -> bool:
        if self.guard is not None and self.preempted_step is None and self.guard.check():
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
        # A multiple of every_steps passed since the last call (a call may run several
        # steps: fit's steps_per_call); epoch ends save with their record instead.
        previous, self._last_step = self._last_step, step
        due = self.every_steps and (
            step % self.every_steps == 0 if previous is None
            else step // self.every_steps > previous // self.every_steps)
        if step % self.steps_per_epoch and due:
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
        improves = self._improves(record)
        recent = time.monotonic() - self._last_save_time < self.min_interval_seconds
        if due and self.min_interval_seconds:
            recent = distributed.agree(recent)  # clocks differ; a save needs every process
        if due and recent and not improves:
            log.debug("not saving epoch %d: the last save is under %gs old", epoch,
                      self.min_interval_seconds)
        elif due:
            self.save(state, step, record)
        return self._check_guard(state, step) or None

    def on_train_end(self, state, history):
        """Saves the final state if it is newer than the last save."""
        step = int(jax.device_get(state.step))
        record = next((r for r in reversed(self.history) if r.get("step") == step), None)
        if self.preempted_step is None:
            self.save(state, step, record)
