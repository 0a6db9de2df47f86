"""A directory of numbered checkpoints: the only module in jaxcnn that imports Orbax.

It wraps ``orbax.checkpoint.CheckpointManager`` behind :class:`Checkpoints`, so
a change in Orbax's API stays in this file. Each step holds two items:
``state`` (a pytree of arrays, written with ``StandardSave``) and ``meta``
(JSON, written with ``JsonSave``); arrays are restored into an abstract target
(see :func:`jaxcnn.checkpoint.abstract_arrays`), which chooses the device layout.

Crash safety comes from Orbax's commit protocol: a step is written into
``<step>.orbax-checkpoint-tmp`` and renamed to ``<step>`` only when complete
(with a ``commit_success.txt`` inside), so a process killed mid-save leaves
every earlier step intact; the next :class:`Checkpoints` that writes removes
the leftover temporary directory.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import logging
import math
import os
import re
import sys
import threading
from typing import Any, Callable, Mapping

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

from jaxcnn import _fs
from jaxcnn.checkpoint._arrays import (CHECKSUM, abstract_arrays, array_checksums,
                                       checksum_mismatches)
from jaxcnn.checkpoint._errors import CheckpointError
from jaxcnn.checkpoint._workdir import MAX_STEP, bad_step_dirs, is_step_name
from jaxcnn.config import CheckpointConfig, improves

log = logging.getLogger("jaxcnn")

# Orbax writes a step into "<step>.orbax-checkpoint-tmp[-<timestamp>]" and renames it
# when the save is complete.
_TMP_MARKER = ".orbax-checkpoint-tmp"

# The key of a step's metadata that holds one checksum per saved array.
CHECKSUMS_KEY = "array_checksums"
# Directories whose old, unchecked checkpoints were already mentioned (log once).
_UNCHECKED: set[str] = set()


def _metric_fn(metric: str) -> Callable[[Mapping], float]:
    """Orbax ranks checkpoints by a score where higher is better."""
    sign = 1.0 if improves(metric, 1.0, 0.0) else -1.0  # lower-is-better metrics negated

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
      >>> import jax.numpy as jnp
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
        bad = bad_step_dirs(self.directory)
        if bad:
            # Orbax would count it as the newest step, resume from it and delete real steps
            # to keep "the latest" ones.
            raise CheckpointError(
                f"{os.path.join(self.directory, _fs.printable(bad[0]))} is not a checkpoint "
                f"step (step directories are named by a whole number from 0 to {MAX_STEP}); "
                f"move it out of {self.directory}")
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
        _Noise.install()  # until close(): Orbax's background tracebacks become debug lines
        self._noise_installed = True
        # Handlers registered up front, so a fresh manager can read either item alone.
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state_handler, meta_handler = ocp.StandardCheckpointHandler(), ocp.JsonCheckpointHandler()
        for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
            registry.add("state", args, state_handler)
        for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
            registry.add("meta", args, meta_handler)
        try:
            with _quiet_absl(read_only):  # Orbax warns that a read-only manager will not save
                self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                      handler_registry=registry)
        except BaseException:
            self._noise_installed = False
            _Noise.uninstall()
            raise
        if leftovers:
            # Orbax deletes them in the background; wait, so a crash right now cannot race it.
            getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
            log.info("removed %d incomplete checkpoint(s) left by an interrupted save: %s",
                     len(leftovers), ", ".join(os.path.basename(p) for p in leftovers))

    # -- queries ---------------------------------------------------------------

    def steps(self) -> list[int]:
        """Complete checkpoint steps, oldest first."""
        return sorted(s for s in self._manager.all_steps() if is_step_name(str(s)))

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The best step by ``best_metric`` (the latest when none has the metric)."""
        best = self._manager.best_step()
        return best if best is None or best in self.steps() else self.latest_step()

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
        # One checksum per array, checked on restore: damage is reported, not evaluated.
        meta = {**meta, CHECKSUMS_KEY: {"algorithm": CHECKSUM,
                                        "arrays": array_checksums(arrays)}}
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
            with _quiet_orbax():
                _collect_orphans()
            raise self._save_error(self._pending, e) from e
        finally:
            self._pending = None

    def close(self) -> None:
        """Waits for the last save (raising if it failed) and releases Orbax's threads."""
        try:
            self.wait()
        finally:
            # A failed save leaves Orbax's threads and event loops with errors nobody
            # retrieves; silence them, so that our one-line message is the last word.
            with _quiet_orbax():
                try:
                    self._manager.close()
                except Exception as e:  # noqa: BLE001
                    log.debug("closing the checkpoint manager: %s", e)
                _collect_orphans()
            if getattr(self, "_noise_installed", False):
                self._noise_installed = False
                _Noise.uninstall()

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
            f"saving {what} to {self.directory} failed ({readable_reason(error)}); "
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
            raise corrupt_error(self, step, e) from e
        if not isinstance(meta, dict):
            raise corrupt_error(self, step, ValueError("meta is not a JSON object"))
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
          CheckpointError: the step is missing, its files are corrupt or
            truncated, or an array's bytes differ from the SHA-256 checksum
            recorded at save time (the message names the step, its path, the
            array and the previous complete step). Steps saved without
            checksums (older jaxcnn) restore unchecked.
        """
        step = self.resolve(step)
        meta = self.read_meta(step)
        try:
            if target is None:
                target = abstract_arrays(self.array_metadata(step))
            with _quiet_orbax(only_on_error=True):
                out = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target)))
        except Exception as e:  # noqa: BLE001
            raise corrupt_error(self, step, e) from e
        self._verify(step, out["state"], meta)
        return out["state"], meta

    def _verify(self, step: int, arrays, meta: Mapping) -> None:
        """Compares the restored arrays with the checksums recorded when they were saved."""
        recorded = meta.get(CHECKSUMS_KEY)
        if recorded is None:
            if self.directory not in _UNCHECKED:
                _UNCHECKED.add(self.directory)
                log.info("checkpoint step %d in %s has no array checksums (written by an "
                         "older jaxcnn); restored without an integrity check", step,
                         self.directory)
            return
        algorithm = recorded.get("algorithm") if isinstance(recorded, Mapping) else None
        sums = recorded.get("arrays") if isinstance(recorded, Mapping) else None
        if algorithm != CHECKSUM or not isinstance(sums, Mapping):
            raise damaged_error(self, step, f"its {CHECKSUMS_KEY} metadata is not readable")
        bad = checksum_mismatches(arrays, sums)
        if bad:
            names = ", ".join(_fs.printable(n) for n in bad[:3]) + (
                f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise damaged_error(self, step, f"the bytes of {names} differ from the "
                                            "checksums recorded when it was saved")

    def array_metadata(self, step: int):
        """The saved arrays' structure with shapes and dtypes (nothing is read but metadata).

        Raises:
          CheckpointError: the metadata is missing or unreadable.
        """
        try:
            tree = self._manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise corrupt_error(self, step, e) from e
        if tree is None:
            raise corrupt_error(self, step, FileNotFoundError("no array metadata"))
        return tree.tree if hasattr(tree, "tree") else tree


def _offer(checkpoints: Checkpoints, step: int) -> str:
    """What to do about an unusable ``step``: the other steps there are."""
    others = [s for s in checkpoints.steps() if s != step]
    earlier = [s for s in others if s < step]
    path = checkpoints.step_path(step)
    if earlier:
        return (f"step {earlier[-1]} is the previous complete checkpoint: move {path} away "
                f"(or delete it) to resume from it, or pass --step {earlier[-1]} to "
                "eval/predict")
    if others:
        return (f"other checkpoints: steps {', '.join(map(str, others[-5:]))}; pass --step N "
                f"to eval/predict, or delete {path}")
    return "no earlier checkpoint exists: start over with --force-new"


def corrupt_error(checkpoints: Checkpoints, step: int, error: BaseException) -> CheckpointError:
    """The error for an unreadable ``step``: names its path and the previous complete step.

    Used by :class:`Checkpoints` and by readers that find the stored metadata unusable.
    """
    return CheckpointError(f"checkpoint at step {step} ({checkpoints.step_path(step)}) is corrupt "
                           f"or truncated ({readable_reason(error)}); "
                           f"{_offer(checkpoints, step)}")


def damaged_error(checkpoints: Checkpoints, step: int, what: str) -> CheckpointError:
    """The error for a ``step`` whose files read but hold other values than were saved
    (a failed checksum, metadata out of bounds): names the step, what is wrong and
    the other steps to use."""
    return CheckpointError(f"checkpoint at step {step} ({checkpoints.step_path(step)}) is "
                           f"damaged: {what}; {_offer(checkpoints, step)}")


# TensorStore and Orbax errors embed object reprs, source locations and specs.
_NOISE = [
    re.compile(r"<bound method [^<>]*(<[^<>]*>)?[^<>]*>"),
    re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>"),
    re.compile(r"\s*\[(source locations|tensorstore_spec|os_error_code)='.*?'\]"),
]
_OS_ERROR = re.compile(r"\[os_error_code='(\d+)'\]")
_STATUS = {
    "DATA_LOSS": "the data is damaged", "NOT_FOUND": "a file is missing",
    "OUT_OF_RANGE": "a file is shorter than recorded", "FAILED_PRECONDITION": "a file is damaged",
    "INVALID_ARGUMENT": "a file holds invalid data", "RESOURCE_EXHAUSTED": "out of space",
    "PERMISSION_DENIED": "permission denied",
}


def readable_reason(error: BaseException) -> str:
    """One readable line for an error from Orbax or TensorStore (no object reprs,
    source locations or specs; TensorStore's status code spelled out).

    Example:
      >>> readable_reason(ValueError("DATA_LOSS: Error reading 'd/1': <bound method "
      ...                            "pybind11_x.Future.result of <F object at 0x7f>> "
      ...                            "[source locations='a.cc:1']"))
      "the data is damaged (DATA_LOSS: Error reading 'd/1')"
      >>> readable_reason(OSError(28, "No space left on device"))
      'OSError: [Errno 28] No space left on device'
    """
    seen, cause = set(), error
    text = ""
    while cause is not None and id(cause) not in seen:  # the innermost cause says most
        seen.add(id(cause))
        t = str(cause).strip()
        if t:
            error, text = cause, t
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    os_error = _OS_ERROR.search(text)
    for pattern in _NOISE:
        text = pattern.sub("", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = re.sub(r"\s+", " ", " ".join(lines[:2])).strip(" :;,")[:300]
    text = _fs.printable(text)
    if os_error:
        return f"{os.strerror(int(os_error.group(1)))} ({text})"
    status = next((code for code in _STATUS if code in text), None)
    if status and "Error writing" in text:
        return f"writing failed ({text})"
    if status:
        return f"{_STATUS[status]} ({text})"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def _quiet_orbax(only_on_error: bool = False):
    """Silences Orbax's and asyncio's loggers ("Task exception was never retrieved",
    absl tracebacks of a failed background write); with ``only_on_error``, only if
    the block raises, so that the error that reaches the user is the one line."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio", "orbax")]
    levels = [lg.level for lg in loggers]
    if not only_on_error:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    except BaseException:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        _collect_orphans()
        raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _Noise:
    """While a :class:`Checkpoints` is open: Orbax's error logs from its background
    threads (with tracebacks) and TensorStore's "Event loop is closed" after a failed
    write become debug lines of the ``jaxcnn`` logger (``-v``). The failure itself
    reaches the caller as one :class:`CheckpointError` from ``save``/``wait``/``close``."""

    _lock = threading.Lock()
    _users = 0
    _previous_hook = None

    @staticmethod
    def _orbax_record(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return False
        if str(record.msg).startswith("[process="):
            return True
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        return False

    @classmethod
    def _filter(cls, record: logging.LogRecord) -> bool:
        if cls._orbax_record(record):
            text = record.getMessage().strip().splitlines()
            log.debug("orbax: %s", text[0][:500] if text else "")
            return False
        return True

    @classmethod
    def _unraisable(cls, unraisable) -> None:
        if (isinstance(unraisable.exc_value, RuntimeError)
                and "Event loop is closed" in str(unraisable.exc_value)):
            log.debug("orbax: a write finished after its event loop closed")
            return
        (cls._previous_hook or sys.__unraisablehook__)(unraisable)

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            cls._users += 1
            if cls._users == 1:
                logging.getLogger("absl").addFilter(cls._filter)
                cls._previous_hook = sys.unraisablehook
                sys.unraisablehook = cls._unraisable

    @classmethod
    def uninstall(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                logging.getLogger("absl").removeFilter(cls._filter)
                if sys.unraisablehook is cls._unraisable:
                    sys.unraisablehook = cls._previous_hook or sys.__unraisablehook__
                cls._previous_hook = None


def _collect_orphans() -> None:
    """Collects the futures and tasks of a failed Orbax call now (while quiet), so that
    their "exception was never retrieved" is not printed later, after our message."""
    gc.collect()


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
    problem = _fs.writable_dir_problem(directory)
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


def from_config(directory: str, cfg: CheckpointConfig) -> Checkpoints:
    """:class:`Checkpoints` set up from a :class:`~jaxcnn.config.CheckpointConfig`.

    Example:
      >>> import tempfile
      >>> from jaxcnn.config import CheckpointConfig
      >>> with from_config(tempfile.mkdtemp(), CheckpointConfig(keep=2)) as c:
      ...     c.steps()
      []
    """
    return Checkpoints(directory, keep=cfg.keep, keep_best=cfg.keep_best,
                       best_metric=cfg.best_metric, async_save=cfg.async_save)
