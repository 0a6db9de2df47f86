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

from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: Sequence[dict], path: str, title: str = "") -> str:
    """Draws loss and accuracy per epoch (train, and validation if present) to a PNG.

    Args:
      history: per-epoch records with ``epoch``, ``loss``, ``accuracy`` and
        optionally ``val_loss``, ``val_accuracy``.
      path: the PNG to write.
      title: a title for the figure.

    Returns:
      ``path``.
    """
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "learning_curves",
]
