"""File-system checks shared by the run directory and checkpoint code."""

from __future__ import annotations

import os


def writable_dir_problem(directory: str) -> str | None:
    """Creates ``directory`` if needed and checks that a file can be written in it.

    Checked before training starts, so a full disk or missing permission is
    reported at once instead of losing results later.

    Returns:
      None when the directory is writable, else the reason (``strerror``).

    Example:
      >>> import tempfile
      >>> writable_dir_problem(tempfile.mkdtemp()) is None
      True
    """
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


__all__ = [
    "writable_dir_problem",
]
