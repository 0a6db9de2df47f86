"""Where a run directory keeps its checkpoints, which names are steps, the one-writer lock
on a run directory, and choosing a fresh run directory."""

from __future__ import annotations

import os
import re

from jaxcnn import _fs
from jaxcnn.checkpoint._errors import CheckpointError

# Where a run directory keeps its checkpoints.
_SUBDIR = "checkpoints"

# The train state counts steps in int32: a step directory must name one.
MAX_STEP = 2**31 - 1
_STEP_NAME = re.compile(r"0|[1-9][0-9]{0,9}")
# What Orbax reads as a step directory (``\d`` also matches non-ASCII digits).
_ORBAX_STEP_NAME = re.compile(r"0|[1-9]\d*")


def is_step_name(name: str) -> bool:
    """Whether ``name`` is a checkpoint step directory's name: ``0`` or a decimal without
    leading zeros, at most :data:`MAX_STEP`.

    Example:
      >>> is_step_name("44"), is_step_name("007"), is_step_name("1" * 23), is_step_name("٣")
      (True, False, False, False)
    """
    return bool(_STEP_NAME.fullmatch(name)) and int(name) <= MAX_STEP


def bad_step_dirs(directory: str) -> list[str]:
    """Directories Orbax would take for steps but that are not valid step numbers
    (too large for the step counter, or written with non-ASCII digits).

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> os.mkdir(os.path.join(d, "1" * 23)); os.mkdir(os.path.join(d, "5"))
      >>> [len(name) for name in bad_step_dirs(d)]
      [23]
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if _ORBAX_STEP_NAME.fullmatch(n) and not is_step_name(n)
                  and os.path.isdir(os.path.join(directory, n)))


def lock_workdir(workdir: str) -> _fs.DirectoryLock:
    """An exclusive lock on a run directory (a context manager; see
    :class:`jaxcnn._fs.DirectoryLock`), held by ``jaxcnn train`` for the whole run.

    Raises:
      CheckpointError: another live process holds it (names its pid, host and
        start time, and says to wait or choose another ``--workdir``).

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> with lock_workdir(d):
      ...     try:
      ...         lock_workdir(d).acquire()
      ...     except CheckpointError as e:
      ...         print("in use by process" in str(e))
      True
    """
    return _fs.DirectoryLock(workdir, error=CheckpointError)


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``.

    Example:
      >>> checkpoint_dir("runs/a")
      'runs/a/checkpoints'
    """
    return os.path.join(workdir, _SUBDIR)


def has_checkpoints(workdir: str) -> bool:
    """Whether a run directory holds at least one complete checkpoint.

    Example:
      >>> import tempfile
      >>> has_checkpoints(tempfile.mkdtemp())
      False
    """
    d = checkpoint_dir(workdir)
    return os.path.isdir(d) and any(is_step_name(name) and os.path.isdir(os.path.join(d, name))
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
