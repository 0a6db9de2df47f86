"""The input pipeline: on the device or streamed, and keyed augmentation.

:func:`jaxcnn.fit` feeds the model one of two ways, chosen by
:func:`choose_pipeline` from the size of the training split and a memory
budget:

* ``device``: the whole training split is put on the device once; every step
  gathers its batch there from the epoch's permutation (no host round trip).
* ``stream``: a background thread gathers each batch on the host and puts it on
  the device ahead of time (:class:`Prefetcher`), for splits too big for the
  device. Batches follow the same permutation, so both paths train on the same
  batches in the same order.

Augmentation (:func:`augment_batch`: random crop after zero padding, and
horizontal flip) runs inside the compiled step on the device. The key of step
``n`` is ``fold_in(augment_key(keys), n)``, so the same run key gives the same
augmented batches, also after a resume.

Example:
  >>> import jax.numpy as jnp
  >>> aug = Augment(crop_padding=2, flip=True)
  >>> x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  >>> y = augment_batch(x, jax.random.key(0), aug)
  >>> y.shape, bool((y == augment_batch(x, jax.random.key(0), aug)).all())
  ((2, 4, 4, 1), True)
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import provenance, sharding as shd
from jaxcnn.errors import ConfigError

# Tag folded into the data key to make the augmentation key; epochs use small
# non-negative tags of the same key, so a large constant never collides.
_AUGMENT_STREAM = 0x61756700
CPU_DEFAULT_BUDGET = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class Augment:
    """What :func:`augment_batch` does (hashable: a static argument of compiled steps).

    Attributes:
      crop_padding: zero pixels added on each side before a random crop back to
        the original size (0: no crop).
      flip: flip each image horizontally with probability 1/2.

    Example:
      >>> Augment(4, True).active, Augment(0, False).active
      (True, False)
    """

    crop_padding: int = 4
    flip: bool = True

    @property
    def active(self) -> bool:
        """Whether this changes images at all."""
        return self.crop_padding > 0 or self.flip


def shape_augment(image_shape) -> Augment:
    """The augmentation that suits images of this shape, when augmentation is on.

    Colour images: a random crop after 4 pixels of padding (or an eighth of
    the side, at least 1, below 24x24) and a horizontal flip (the CIFAR
    recipe). Grey images (digits, characters): shifts only, by up to
    ``max(1, side // 12)`` pixels (1 on 8x8, 2 on 28x28), and no flip: a
    mirrored glyph can be another class.

    Example:
      >>> shape_augment((32, 32, 3)), shape_augment((8, 8, 1))
      (Augment(crop_padding=4, flip=True), Augment(crop_padding=1, flip=False))
    """
    h, w, c = (int(d) for d in image_shape)
    side = min(h, w)
    if c == 3:
        return Augment(4 if side >= 24 else max(1, side // 8), True)
    return Augment(max(1, side // 12), False)


def default_augment(image_shape) -> bool:
    """Whether augmentation is on by default for images of this shape.

    On where it was measured to help:

    * colour images of at least 24x24 (CIFAR, SVHN and the like), whose
      classes do not change under small shifts and mirroring;
    * small grey images (below 24x24, such as the embedded 8x8 digits):
      1-pixel shifts raised the default recipe's mean test accuracy on digits
      from 98.9 % to 99.3 % over 10 seeds (docs/experiments.md, "The default
      recipe").

    Off for larger grey images (MNIST-like 28x28), where short runs have not
    been measured with it; ``--augment on`` turns shifts on there.

    Example:
      >>> default_augment((32, 32, 3)), default_augment((28, 28, 1)), default_augment((8, 8, 1))
      (True, False, True)
    """
    h, w, c = (int(d) for d in image_shape)
    return min(h, w) >= 24 if c == 3 else min(h, w) < 24


def resolve_augment(setting: bool | None, image_shape, crop_padding: int | None = None,
                    flip: bool | None = None) -> Augment | None:
    """The :class:`Augment` a run uses, or None for none.

    Args:
      setting: True, False, or None for :func:`default_augment`.
      image_shape: ``(H, W, C)``.
      crop_padding, flip: see :class:`Augment`; None: :func:`shape_augment`'s
        choice for the shape.

    Returns:
      An :class:`Augment`, or None when augmentation is off or does nothing.

    Example:
      >>> resolve_augment(None, (32, 32, 3))
      Augment(crop_padding=4, flip=True)
      >>> resolve_augment(None, (28, 28, 1)) is None
      True
      >>> resolve_augment(True, (28, 28, 1))
      Augment(crop_padding=2, flip=False)
      >>> resolve_augment(None, (8, 8, 1), crop_padding=0) is None
      True
    """
    on = default_augment(image_shape) if setting is None else bool(setting)
    auto = shape_augment(image_shape)
    aug = Augment(auto.crop_padding if crop_padding is None else int(crop_padding),
                  auto.flip if flip is None else bool(flip))
    return aug if on and aug.active else None


def augment_key(keys) -> jax.Array:
    """The run's augmentation key, derived from its data key.

    Args:
      keys: the run's keys (as :func:`jaxcnn.split_keys` makes them); only
        ``keys.data`` is used.

    Returns:
      A key of its own, the same for the same data key.

    Example:
      >>> from types import SimpleNamespace
      >>> keys = SimpleNamespace(data=jax.random.key(0))
      >>> k = augment_key(keys)
      >>> bool((jax.random.key_data(k) == jax.random.key_data(augment_key(keys))).all())
      True
    """
    return jax.random.fold_in(keys.data, _AUGMENT_STREAM)


def augment_batch(images: jax.Array, key: jax.Array, augment: Augment, *,
                  rows: tuple | None = None) -> jax.Array:
    """Randomly crops (after zero padding) and flips each image of a batch.

    Works on stored images (uint8 or float) before preprocessing; padding is
    zero (black). Pure and jit-able; the same key gives the same batch.

    Args:
      images: ``(N, H, W, C)``.
      key: this step's key.
      augment: what to do.
      rows: ``(start, total)`` when ``images`` are rows ``start`` to
        ``start + N`` of a batch of ``total``: they are then cropped and
        flipped exactly as those rows of the whole batch would be (``start``
        may be traced). For a step spread over several compiled calls.

    Returns:
      The augmented batch, same shape and dtype.

    Example:
      >>> x = jnp.ones((3, 8, 8, 3), jnp.uint8)
      >>> augment_batch(x, jax.random.key(1), Augment(0, True)).sum() == x.sum()
      Array(True, dtype=bool)
    """
    n, h, w, c = images.shape
    start, total = rows if rows is not None else (0, n)

    def mine(draws):  # this call's rows of draws made for the whole batch
        return draws if rows is None else jax.lax.dynamic_slice_in_dim(draws, start, n)

    crop_key, flip_key = jax.random.split(key)
    x = images
    p = augment.crop_padding
    if p > 0:
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = mine(jax.random.randint(crop_key, (total, 2), 0, 2 * p + 1))

        def crop(img, off):
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

        x = jax.vmap(crop)(padded, offsets)
    if augment.flip:
        flip = mine(jax.random.bernoulli(flip_key, 0.5, (total,)))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    return x


def device_memory_budget(device=None, fraction: float = 0.25,
                         budget_bytes: int | None = None) -> int:
    """Bytes of device memory the training split may take.

    Args:
      device: the device (default ``jax.devices()[0]``).
      fraction: share of the device's memory, on devices that report it.
      budget_bytes: an explicit budget; wins when given.

    Returns:
      ``budget_bytes``, else ``fraction`` of the device's ``bytes_limit``, else
      2 GiB (the CPU reports no limit).

    Example:
      >>> device_memory_budget(budget_bytes=1000)
      1000
    """
    if budget_bytes is not None:
        return int(budget_bytes)
    device = device or jax.devices()[0]
    stats = provenance.device_memory_stats(device)
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] * fraction)
    return CPU_DEFAULT_BUDGET


def choose_pipeline(mode: str, nbytes: int, budget: int) -> str:
    """``device`` or ``stream`` for a training split of ``nbytes``.

    Args:
      mode: ``auto``, ``device`` or ``stream``.
      nbytes: bytes of the training images and labels.
      budget: :func:`device_memory_budget`.

    Returns:
      ``device`` when asked, or (``auto``) when the split fits the budget;
      ``stream`` otherwise.

    Example:
      >>> choose_pipeline("auto", 10, 100), choose_pipeline("auto", 1000, 100)
      ('device', 'stream')
    """
    if mode not in ("auto", "device", "stream"):
        raise ConfigError(f"data.pipeline must be auto, device or stream; got {mode!r}")
    if mode != "auto":
        return mode
    return "device" if nbytes <= budget else "stream"


class Prefetcher:
    """Yields device batches that a background thread gathers and transfers ahead.

    The thread gathers ``images[perm[i*b:(i+1)*b]]`` on the host for each
    step of each epoch and puts the batch on the device (``jax.device_put``
    is asynchronous), keeping up to ``depth`` batches in flight, so the next
    batch is on the device while the current step runs.

    Args:
      images, labels: the host arrays of the training split.
      permutation: ``epoch -> (N,)`` host array of example indices.
      batch_size: examples per batch.
      steps_per_epoch: batches per epoch (the partial batch is dropped).
      start_step: the global step to start at (resume).
      num_steps: batches to produce.
      place: where batches go (a device or a sharding).
      depth: batches in flight.

    Example:
      >>> x = np.arange(8, dtype=np.float32).reshape(8, 1, 1, 1); y = np.arange(8)
      >>> with Prefetcher(x, y, lambda e: np.arange(8), 4, 2, 0, 3,
      ...                 jax.devices()[0]) as batches:
      ...     [b[1].tolist() for b in batches]
      [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray,
                 permutation: Callable[[int], np.ndarray], batch_size: int,
                 steps_per_epoch: int, start_step: int, num_steps: int, place, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
        self._stop = threading.Event()
        self._args = (images, labels, permutation, batch_size, steps_per_epoch, start_step,
                      num_steps, place)
        self._remaining = num_steps
        self._thread = threading.Thread(target=self._run, name="jaxcnn-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        images, labels, permutation, b, spe, start, num, place = self._args
        try:
            # In a multi-process job this process reads only its rows of each batch.
            rows = shd.local_rows(place, b)
            epoch, perm = None, None
            for step in range(start, start + num):
                e, i = divmod(step, spe)
                if e != epoch:
                    epoch, perm = e, np.asarray(permutation(e))
                idx = perm[i * b:(i + 1) * b][rows]
                batch = shd.put_batch((images[idx], labels[idx]), place, b)
                if not self._put(batch):
                    return
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            self._put(_Failure(err))

    def __iter__(self) -> Iterator:
        while self._remaining > 0:
            item = self._queue.get()
            if isinstance(item, _Failure):
                raise item.error
            self._remaining -= 1
            yield item

    def close(self) -> None:
        """Stops the thread (after an early stop) and waits for it."""
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclasses.dataclass
class _Failure:
    error: BaseException


def fit_options(data_config, image_shape) -> dict:
    """The pipeline arguments of :func:`jaxcnn.fit` from a run's data config.

    Args:
      data_config: a :class:`jaxcnn.config.DataConfig`.
      image_shape: ``(H, W, C)`` of the dataset (decides the augmentation default).

    Returns:
      ``{"pipeline", "augment", "memory_budget", "prefetch"}``.

    Example:
      >>> from jaxcnn.config import DataConfig
      >>> fit_options(DataConfig(memory_budget_bytes=10**9), (32, 32, 3))["augment"]
      Augment(crop_padding=4, flip=True)
    """
    c = data_config
    return {
        "pipeline": c.pipeline,
        "augment": resolve_augment(c.augment, image_shape, c.crop_padding, c.flip),
        "memory_budget": device_memory_budget(fraction=c.device_memory_fraction,
                                              budget_bytes=c.memory_budget_bytes),
        "prefetch": c.prefetch,
    }
