"""Core types of the data package: splits, datasets, preprocessing and arrays checks.

A :class:`Dataset` holds NumPy arrays (images NHWC, integer labels) and the
metadata that the model needs (image shape, number of classes, class names).
Every source (embedded, synthetic, local files, tfds) builds one through
:func:`from_arrays`, or, for images decoded on demand, through
:func:`carve_validation` directly; both hold validation data out the same way.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcnn.errors import DataError


class UnknownDatasetError(DataError):
    """A dataset name that no source knows.

    Sources raise it so that :func:`jaxcnn.data.load_dataset` can tell an
    unknown name from a known dataset that fails to load, by type rather than
    by message.

    Example:
      >>> from jaxcnn.data import load_dataset
      >>> try:
      ...     load_dataset("no_such_dataset_xyz")
      ... except UnknownDatasetError as e:
      ...     print(str(e)[:40])
      unknown dataset 'no_such_dataset_xyz'; k
    """


@dataclasses.dataclass(frozen=True)
class Split:
    """Images and labels of one split.

    Attributes:
      images: ``(N, H, W, C)`` uint8 in [0, 255] or float in [0, 1].
      labels: ``(N,)`` int32 in ``[0, num_classes)``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset held in host memory.

    Attributes:
      name: the dataset's name (as given to :func:`load_dataset`).
      train: the training split.
      test: the test split (used for the final evaluation).
      validation: held-out split for per-epoch evaluation, or None.
      num_classes: number of classes.
      class_names: one name per class.

    Example:
      >>> from jaxcnn.data import load_dataset
      >>> ds = load_dataset("digits")
      >>> ds.image_shape, ds.num_classes, len(ds.train), len(ds.test)
      ((8, 8, 1), 10, 1437, 360)
    """

    name: str
    train: Split
    test: Split
    validation: Split | None
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(int(d) for d in self.train.images.shape[1:])  # type: ignore[return-value]

    def metadata(self) -> dict:
        """JSON-ready metadata: name, image shape, classes and split sizes."""
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "splits": {
                k: len(s) for k, s in
                (("train", self.train), ("validation", self.validation), ("test", self.test))
                if s is not None
            },
        }


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Maps stored images to model inputs: ``(x * scale - mean) / std`` per channel.

    ``scale`` is 1/255 for uint8 images and 1 for images already in [0, 1].
    The statistics come from the training split only and are saved with a run,
    so evaluation, prediction and resumed training apply the same transform.

    Example:
      >>> import numpy as np
      >>> p = Preprocess.fit(np.full((4, 2, 2, 1), 255, np.uint8), normalize=False)
      >>> p.scale, p.mean, p.std
      (0.00392156862745098, (0.0,), (1.0,))
      >>> float(p(np.full((1, 2, 2, 1), 255, np.uint8)).max())
      1.0
    """

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @staticmethod
    def fit(images: np.ndarray, normalize: bool = True) -> "Preprocess":
        """Computes the transform from training images (per-channel mean and std)."""
        scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
        channels = images.shape[-1]
        if not normalize:
            return Preprocess(scale, (0.0,) * channels, (1.0,) * channels)
        # Chunked float64 sums: exact enough and no full float copy of big datasets.
        total = np.zeros(channels)
        total_sq = np.zeros(channels)
        for start in range(0, len(images), 8192):
            chunk = images[start:start + 8192].astype(np.float64) * scale
            total += chunk.sum(axis=(0, 1, 2))
            total_sq += np.square(chunk).sum(axis=(0, 1, 2))
        n = images.shape[0] * images.shape[1] * images.shape[2]
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        std = np.where(std < 1e-6, 1.0, std)
        return Preprocess(scale, tuple(map(float, mean)), tuple(map(float, std)))

    def __call__(self, images):
        """Applies the transform (NumPy or JAX arrays; returns float32)."""
        xp = np if isinstance(images, np.ndarray) else _jnp()
        x = images.astype(xp.float32) * xp.float32(self.scale)
        return (x - xp.asarray(self.mean, xp.float32)) / xp.asarray(self.std, xp.float32)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Preprocess":
        """Inverse of :meth:`to_dict` (also after a JSON round trip).

        Example:
          >>> import json
          >>> p = Preprocess(1 / 255, (0.1307,), (0.3081,))
          >>> Preprocess.from_dict(json.loads(json.dumps(p.to_dict()))) == p
          True
        """
        return Preprocess(float(d["scale"]), tuple(float(v) for v in d["mean"]),
                          tuple(float(v) for v in d["std"]))


def _jnp():
    import jax.numpy as jnp

    return jnp


# ---------------------------------------------------------------------------
# Building datasets from arrays


def as_images(images, what: str = "images") -> np.ndarray:
    """Checks and converts images to NHWC (NHW gets a channel axis).

    Example:
      >>> as_images(np.zeros((5, 28, 28), np.uint8)).shape
      (5, 28, 28, 1)
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(
            f"{what} must be shaped (N, H, W, C) or (N, H, W); got shape {x.shape}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{what} is empty")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{what} must be numeric; got dtype {x.dtype}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{what} contain NaN or Inf values")
    return x


def as_labels(labels, n: int, num_classes: int | None, what: str = "labels") -> np.ndarray:
    """Checks labels: 1-D integers in ``[0, num_classes)``, one per image.

    Example:
      >>> as_labels([0, 2, 1], 3, 3)
      array([0, 2, 1], dtype=int32)
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{what} must be a 1-D array of integer class ids; got shape {y.shape} "
            "(for one-hot labels pass labels.argmax(-1))"
        )
    if y.shape[0] != n:
        raise DataError(f"{what} has {y.shape[0]} entries but there are {n} images")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{what} must be integer class ids; got dtype {y.dtype}")
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise DataError(
            f"{what} must lie in [0, {num_classes}); found values from {y.min()} to {y.max()}"
        )
    return y.astype(np.int32)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (keep, held_out) with ``fraction`` of each class held out.

    Example:
      >>> keep, held = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, 0)
      >>> len(keep), len(held), sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1])[held].tolist())
      (6, 2, [0, 1])
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """Holds a stratified ``fraction`` of a training split out for validation.

    The one place validation data is carved from train, for in-memory arrays
    and for images decoded on demand alike (those are subset lazily, through
    their ``subset`` method, rather than decoded).

    Args:
      train: the training split.
      fraction: share of each class held out; 0 holds nothing out.
      seed: the dataset's seed; the carve draws with ``seed + 1``, so it is
        independent of a test split held out with ``seed``.

    Returns:
      ``(train, validation)``; ``validation`` is None when ``fraction`` is 0.

    Example:
      >>> split = Split(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10) % 2)
      >>> train, val = carve_validation(split, 0.2, seed=0)
      >>> len(train), len(val), sorted(val.labels.tolist())
      (8, 2, [0, 1])
    """
    if fraction <= 0:
        return train, None
    keep, held = stratified_split(train.labels, fraction, seed + 1)
    subset = getattr(train.images, "subset", None)
    take = subset if subset is not None else train.images.__getitem__
    return (Split(take(keep), train.labels[keep]), Split(take(held), train.labels[held]))


def from_arrays(
    x_train,
    y_train,
    x_test=None,
    y_test=None,
    *,
    num_classes: int | None = None,
    class_names=None,
    validation_fraction: float = 0.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "arrays",
) -> Dataset:
    """Makes a :class:`Dataset` from your own NumPy arrays.

    Images may be NHWC or NHW (grayscale), uint8 in [0, 255] or float in
    [0, 1]; labels are integer class ids. Without a test set, a stratified
    ``test_fraction`` of the training arrays is held out for it.

    Args:
      x_train, y_train: training images and labels.
      x_test, y_test: test images and labels (optional, both or neither).
      num_classes: defaults to ``max(label) + 1``.
      class_names: defaults to ``"0"``, ``"1"``, ...
      validation_fraction: stratified fraction of train held out for validation.
      test_fraction: used only when no test arrays are given.
      seed: seed of the held-out splits.
      name: a name for the run's records.

    Returns:
      A :class:`Dataset`.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> ds = from_arrays(rng.random((100, 8, 8)), rng.integers(0, 4, 100))
      >>> ds.image_shape, ds.num_classes, len(ds.train), len(ds.test)
      ((8, 8, 1), 4, 80, 20)
    """
    x_train = as_images(x_train, "x_train")
    y_raw = np.asarray(y_train)
    if num_classes is None:
        # Shape and dtype problems get their own message before the class count is guessed.
        as_labels(y_raw, len(x_train), None, "y_train")
        num_classes = int(np.max(y_raw)) + 1
        if x_test is not None and y_test is not None and np.size(y_test):
            num_classes = max(num_classes, int(np.max(y_test)) + 1)
    if num_classes < 2:
        raise DataError(f"a classifier needs at least 2 classes; the labels have {num_classes}")
    y_train = as_labels(y_raw, len(x_train), num_classes, "y_train")
    if (x_test is None) != (y_test is None):
        raise DataError("give both x_test and y_test, or neither")
    if x_test is None:
        keep, held = stratified_split(y_train, test_fraction, seed)
        x_test, y_test = x_train[held], y_train[held]
        x_train, y_train = x_train[keep], y_train[keep]
    else:
        x_test = as_images(x_test, "x_test")
        y_test = as_labels(y_test, len(x_test), num_classes, "y_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(
                f"x_test images are {x_test.shape[1:]} but x_train images are {x_train.shape[1:]}"
            )
        if x_test.dtype != x_train.dtype:
            x_test = x_test.astype(x_train.dtype)
    train, validation = carve_validation(Split(x_train, y_train), validation_fraction, seed)
    if class_names is None:
        class_names = tuple(str(i) for i in range(num_classes))
    elif len(class_names) != num_classes:
        raise DataError(f"{len(class_names)} class names for {num_classes} classes")
    return Dataset(name, train, Split(x_test, y_test), validation,
                   int(num_classes), tuple(str(c) for c in class_names))
