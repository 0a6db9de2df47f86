"""Plots of training runs (matplotlib, drawn off-screen).

Example:
  >>> import os, tempfile
  >>> history = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4},
  ...            {"epoch": 2, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.7}]
  >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
  >>> learning_curves(history, path, title="demo") == path
  True
"""

from __future__ import annotations

import os
from typing import Sequence

from jaxcnn.errors import JaxcnnError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: Sequence[dict], path: str, title: str = "") -> str:
    """Draws loss and accuracy per epoch (train, and validation if present) to a PNG.

    The file is written next to ``path`` and renamed into place, so a failed
    write (a full disk) leaves any previous plot intact and no partial file.

    Args:
      history: per-epoch records with ``epoch``, ``loss``, ``accuracy`` and
        optionally ``val_loss``, ``val_accuracy``.
      path: the PNG to write.
      title: a title for the figure.

    Returns:
      ``path``.

    Raises:
      JaxcnnError: the file cannot be written (a full disk, no permission, a
        missing directory); the message names the file and the reason.

    Example:
      >>> import tempfile
      >>> try:
      ...     learning_curves([{"epoch": 1, "loss": 1.0, "accuracy": 0.5}],
      ...                     os.path.join(tempfile.mkdtemp(), "no", "curves.png"))
      ... except JaxcnnError as e:
      ...     print(str(e).split(":")[0])
      could not write the plot '/.../no/curves.png'
    """
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
            ax.plot(epochs, [r[key] for r in history], "o-", ms=3, label=f"train {label}")
            if any(f"val_{key}" in r for r in history):
                ax.plot(epochs, [r.get(f"val_{key}") for r in history], "s-", ms=3,
                        label=f"validation {label}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
        ax_loss.set_yscale("log")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


def save_figure(fig, path: str) -> None:
    """``fig.savefig(path, dpi=110)`` through a temporary file renamed into place.

    A full disk or a missing permission leaves no partial file and any previous
    one intact, and raises a :class:`~jaxcnn.errors.JaxcnnError` naming the path.

    Example:
      >>> import os, tempfile
      >>> plt = _pyplot()
      >>> fig = plt.figure(); path = os.path.join(tempfile.mkdtemp(), "f.png")
      >>> save_figure(fig, path); plt.close(fig); os.path.exists(path)
      True
    """
    stem, suffix = os.path.splitext(path)
    tmp = f"{stem}.tmp-{os.getpid()}{suffix}"  # keeps the suffix: it names the format
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise JaxcnnError(f"could not write the plot {path!r}: {e.strerror or e}; free disk "
                          "space or fix the directory's permissions") from None


__all__ = [
    "learning_curves", "save_figure",
]
