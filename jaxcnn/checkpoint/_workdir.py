"""Where a run directory keeps its checkpoints, and choosing a fresh run directory."""

from __future__ import annotations

import os

# Where a run directory keeps its checkpoints.
_SUBDIR = "checkpoints"


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
