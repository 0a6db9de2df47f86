"""The callback interface of ``fit``, and the callbacks it brings: progress and early stopping.

Checkpointing is a callback too (:class:`jaxcnn.checkpoint.CheckpointCallback`).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

from jaxcnn.config import improves
from jaxcnn.training._state import TrainState


class Callback:
    """Hooks into :func:`~jaxcnn.training.fit`. Return True from a hook to stop training.

    ``on_step_end`` runs on the host after each step is *dispatched* (the
    device may still be computing); it must not pull arrays to the host unless
    it needs to, or it will serialise the loop.

    Example:
      >>> class StopAfter(Callback):
      ...     def __init__(self, n): self.n = n
      ...     def on_step_end(self, state, step): return step >= self.n
    """

    def on_train_start(self, state: TrainState) -> None:
        """Called once before the first step."""

    def on_epoch_start(self, epoch: int, first_index: int, steps_per_epoch: int) -> None:
        """Called before epoch ``epoch`` (0-based) starts at batch ``first_index``."""

    def on_step_end(self, state: TrainState, step: int) -> bool | None:
        """Called after step ``step`` (1-based, global) is dispatched."""

    def on_epoch_end(self, state: TrainState, record: dict) -> bool | None:
        """Called after each epoch with its history record."""

    def on_train_end(self, state: TrainState, history: list[dict]) -> None:
        """Called once after the last step (also after an early stop)."""


class EarlyStopping(Callback):
    """Stops when ``metric`` has not improved for ``patience`` epochs.

    Keeps a copy of the best epoch's state only when ``restore_best`` asks
    for it (``fit`` then returns that state). When it stops, :attr:`reason`
    says when and why, as one sentence (``fit`` adds which parameters it
    returns and logs it once).

    Args:
      metric: a history key: ``val_loss`` (lower is better) or ``val_accuracy``.
      patience: epochs without improvement before stopping (>= 1).
      restore_best: keep the best state for ``fit`` to return.
      history: records of earlier epochs (a resumed run), to know the best so far.

    Example:
      >>> es = EarlyStopping("val_loss", patience=1)
      >>> es.on_epoch_end(None, {"epoch": 1, "val_loss": 0.5}), es.on_epoch_end(
      ...     None, {"epoch": 2, "val_loss": 0.6})
      (False, True)
      >>> es.reason
      'early stopping at epoch 2: val_loss has not improved for 1 epoch (best 0.5 at epoch 1)'
      >>> es.stopped_epoch, es.best_epoch
      (2, 1)
    """

    def __init__(self, metric: str = "val_loss", patience: int = 1, restore_best: bool = True,
                 history: list[dict] = ()):
        self.metric, self.patience, self.restore_best = metric, int(patience), restore_best
        self.best_value = self.best_epoch = None
        self.best_state = None
        self.epochs_since = 0
        self.reason: str | None = None
        self.stopped_epoch: int | None = None
        for record in history:
            self._update(record, None)

    def _update(self, record: dict, state) -> bool:
        value = record.get(self.metric)
        if value is None:
            return False
        better = improves(self.metric, value, self.best_value)
        if better:
            self.best_value, self.best_epoch, self.epochs_since = value, record.get("epoch"), 0
            if self.restore_best and state is not None:
                self.best_state = jax.tree.map(jnp.copy, state)
        else:
            self.epochs_since += 1
        return better

    def on_epoch_end(self, state, record: dict) -> bool:
        improved = self._update(record, state)
        if not improved and self.epochs_since >= self.patience:
            s = "s" if self.patience != 1 else ""
            self.stopped_epoch = record.get("epoch")
            self.reason = (f"early stopping at epoch {self.stopped_epoch}: {self.metric} has not "
                           f"improved for {self.patience} epoch{s} (best {self.best_value:.4g} "
                           f"at epoch {self.best_epoch})")
            return True
        return False


def format_record(record: dict, epochs: int | None = None) -> str:
    """One line for an epoch's history record, Keras style.

    Example:
      >>> format_record({"epoch": 2, "step": 44, "loss": 0.5, "accuracy": 0.9,
      ...                "seconds": 1.25, "images_per_s": 1126.4}, 10)
      'epoch 2/10  step 44  1.2s  1,126 img/s  loss 0.5000  accuracy 0.9000'
    """
    total = f"/{epochs}" if epochs else ""
    parts = [f"epoch {record['epoch']}{total}", f"step {record['step']}",
             f"{record['seconds']:.1f}s", f"{record['images_per_s']:,.0f} img/s"]
    parts += [f"{k} {record[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
              if k in record]
    return "  ".join(parts)


class ProgressBar(Callback):
    """A progress bar on stderr: a live tqdm bar on a terminal, one line per epoch otherwise.

    Args:
      epochs: total epochs (for the ``epoch i/N`` label).
      batch_size: images per step (for images/s).
      running_metrics: returns the epoch's running ``{"loss", "accuracy",
        "steps"}`` (pulls them from the device: called at most every
        ``every_seconds``).
      every_seconds: how often to refresh the running metrics.

    Example:
      >>> bar = ProgressBar(1, 32, lambda: {"loss": 0.1, "accuracy": 1.0, "steps": 1})
    """

    def __init__(self, epochs: int, batch_size: int, running_metrics: Callable[[], dict],
                 every_seconds: float = 1.0):
        self.epochs, self.batch_size = epochs, batch_size
        self.running_metrics, self.every_seconds = running_metrics, every_seconds
        self._bar = None
        self._t0 = self._last = 0.0
        self._step = 0  # the global step the bar last showed

    def on_epoch_start(self, epoch, first_index, steps_per_epoch):
        if self._bar is None:
            self._bar = _make_bar(steps_per_epoch)
        self._bar.reset(total=steps_per_epoch)
        self._bar.update(first_index)
        self._step = epoch * steps_per_epoch + first_index
        self._bar.set_description(f"epoch {epoch + 1}/{self.epochs}")
        self._t0 = self._last = time.perf_counter()

    def on_step_end(self, state, step):
        # A call may run several steps (fit's steps_per_call).
        self._bar.update(step - self._step)
        self._step = step
        now = time.perf_counter()
        if now - self._last >= self.every_seconds:
            self._last = now
            self._show(self.running_metrics(), now - self._t0)

    def on_epoch_end(self, state, record):
        m = {"loss": record["loss"], "accuracy": record["accuracy"],
             "steps": record["images_per_s"] * record["seconds"] / self.batch_size}
        self._show(m, record["seconds"], record.get("val_accuracy"))
        self._bar.write(format_record(record, self.epochs))

    def on_train_end(self, state, history):
        self.close()

    def close(self) -> None:
        """Closes the bar (also after an error)."""
        if self._bar is not None:
            self._bar.close()

    def _show(self, m, seconds, val_accuracy=None):
        text = (f"loss {m['loss']:.4f} acc {m['accuracy']:.4f} "
                f"{m['steps'] * self.batch_size / max(seconds, 1e-9):,.0f} img/s")
        if val_accuracy is not None:
            text += f" val_acc {val_accuracy:.4f}"
        self._bar.set_postfix_str(text)


class _LineBar:
    """Without a terminal (logs, CI) a live bar is noise: print one line per epoch."""

    def reset(self, total=None): pass
    def update(self, n=1): pass
    def set_description(self, s): pass
    def set_postfix_str(self, s, refresh=True): pass
    def close(self): pass

    def write(self, s):
        print(s, file=sys.stderr, flush=True)


def _make_bar(total: int):
    if not sys.stderr.isatty():
        return _LineBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True, leave=False,
                mininterval=0.5)
