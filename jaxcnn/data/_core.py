"""Core types of the data package: splits, datasets, preprocessing and arrays checks.

A :class:`Dataset` holds NumPy arrays (images NHWC, integer labels) and the
metadata that the model needs (image shape, number of classes, class names).
Every source (embedded, synthetic, local files, tfds) builds one through
:func:`from_arrays`, or, for images decoded on demand, through
:func:`carve_validation` directly; both hold validation data out the same way.
"""

from __future__ import annotations

import dataclasses
import operator
import os

import numpy as np

from jaxcnn.errors import DataError

# ---------------------------------------------------------------------------
# Limits that hostile or mistaken data meets before anything is allocated

MEMORY_BUDGET_ENV = "JAXCNN_DATA_MEMORY_BUDGET"
"""Environment variable that overrides :data:`MEMORY_BUDGET_BYTES` (bytes, e.g. ``64e9``)."""

MEMORY_BUDGET_FRACTION = 0.5
"""Share of the host's physical memory that :data:`MEMORY_BUDGET_BYTES` allows."""

MEMORY_BUDGET_CAP = 256 * 1024**3
"""Most bytes :data:`MEMORY_BUDGET_BYTES` allows, however much memory the host has."""

MAX_CLASSES = 100_000
"""Most classes a dataset may have (class names, a declared count, or labels)."""

CLASS_ID_SPREAD = 10
"""Without a declared class count, labels ``0..K-1`` give ``K`` classes, and ``K``
may be at most this many times the number of distinct labels present: a stray
label (``1000`` among ``0..9``, ``255`` in a 0/1 mask) is refused rather than
trained as hundreds of empty classes."""


def _physical_memory_bytes() -> int | None:
    """The host's physical memory, or the cgroup's limit when that is smaller (None if unknown)."""
    try:
        total = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max",
                       "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:
            total = int(text) if total is None else min(total, int(text))
    return total


def _memory_budget_and_rule() -> tuple[int, str]:
    override = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if override:
        try:
            value = int(float(override))
        except (ValueError, OverflowError):  # not a number, inf, nan: ignored
            value = 0
        if value > 0:
            return value, f"set by {MEMORY_BUDGET_ENV}"
    total = _physical_memory_bytes()
    if total is None:
        return 8 * 1024**3, "the default where the physical memory is unknown"
    return (int(min(total * MEMORY_BUDGET_FRACTION, MEMORY_BUDGET_CAP)),
            f"half the physical memory, at most {MEMORY_BUDGET_CAP // 1024**3} GiB")


def _memory_budget() -> int:
    return _memory_budget_and_rule()[0]


_BUDGET_BYTES, _BUDGET_RULE = _memory_budget_and_rule()
MEMORY_BUDGET_BYTES: int = _BUDGET_BYTES
"""Host memory (bytes) one dataset may take once loaded.

Half the physical memory (or of the cgroup's memory limit, when smaller), at
most 256 GiB; 8 GiB where neither can be read. Set when jaxcnn is imported;
``JAXCNN_DATA_MEMORY_BUDGET=BYTES`` in the environment replaces it. A dataset
whose arrays would take more (as file headers declare them, or as a synthetic
spec asks) is refused with :class:`DataError` before anything is allocated:
a small file cannot make jaxcnn allocate terabytes. :func:`check_memory`
applies it.
"""


def _size(nbytes: int) -> str:
    return f"{nbytes:,} bytes ({nbytes / 1024**3:,.1f} GiB)"


def check_memory(nbytes: int, what: str) -> None:
    """Refuses data that would take more host memory than :data:`MEMORY_BUDGET_BYTES`.

    Args:
      nbytes: bytes the data would take once loaded (a Python int: no overflow).
      what: the data, for the message (a file, a dataset name).

    Raises:
      DataError: naming the bytes needed, the budget and how to raise it.

    Example:
      >>> check_memory(1024, "a small file")
      >>> try:
      ...     check_memory(10**15, "huge.npz")
      ... except DataError as e:
      ...     print(str(e)[:60])
      huge.npz would take 1,000,000,000,000,000 bytes (931,322.6 G
    """
    budget = MEMORY_BUDGET_BYTES
    if nbytes > budget:
        raise DataError(
            f"{what} would take {_size(nbytes)} of host memory, more than the data memory "
            f"budget of {_size(budget)} ({_BUDGET_RULE}); use smaller data, or set "
            f"{MEMORY_BUDGET_ENV}=BYTES if this machine really has the memory")


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

        Raises:
          DataError: a dict that :meth:`fit` cannot have made (read from a
            damaged or edited file): missing keys, non-numbers, a ``scale``,
            ``mean`` or ``std`` that is not finite, a ``std`` or ``scale``
            that is not > 0, or ``mean`` and ``std`` of different lengths.

        Example:
          >>> import json
          >>> p = Preprocess(1 / 255, (0.1307,), (0.3081,))
          >>> Preprocess.from_dict(json.loads(json.dumps(p.to_dict()))) == p
          True
          >>> Preprocess.from_dict({"scale": 1.0, "mean": [0.0], "std": [0.0]})
          Traceback (most recent call last):
          jaxcnn.errors.DataError: preprocessing statistics std=[0.0] are not valid: ...
        """
        try:
            scale = float(d["scale"])
            mean = tuple(float(v) for v in d["mean"])
            std = tuple(float(v) for v in d["std"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise DataError(f"preprocessing statistics {d!r:.200} are not valid "
                            f"({type(e).__name__}: {e}); they need scale, mean and std "
                            "numbers") from None
        if not (np.isfinite(scale) and scale > 0):
            raise DataError(f"preprocessing statistics scale={scale} are not valid: the scale "
                            "must be finite and > 0")
        if not mean or len(mean) != len(std):
            raise DataError(f"preprocessing statistics mean={list(mean)} std={list(std)} are not "
                            "valid: one mean and one std per channel")
        if not all(np.isfinite(v) for v in mean):
            raise DataError(f"preprocessing statistics mean={list(mean)} are not valid: every "
                            "mean must be finite")
        if not all(np.isfinite(v) and v > 0 for v in std):
            raise DataError(f"preprocessing statistics std={list(std)} are not valid: every std "
                            "must be finite and > 0")
        return Preprocess(scale, mean, std)


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
        raise DataError(f"{what} is empty (0 images, shape {x.shape}); every split needs at "
                        "least one image")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"{what} must be integer or floating-point pixels; got dtype "
                            f"{x.dtype}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{what} contain NaN or Inf values")
    return x


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _num(v) -> str:
    """A label value for a message: whole numbers in full, huge floats as ``1e+300``."""
    return str(int(v)) if abs(float(v)) < 1e18 else f"{float(v):g}"


def as_labels(labels, n: int, num_classes: int | None, what: str = "labels") -> np.ndarray:
    """Checks labels: 1-D integers in ``[0, num_classes)``, one per image.

    Float labels are accepted when every value is a whole number. A label that
    is NaN, Inf, fractional, negative or too large is refused with its value
    and index. Without ``num_classes`` the bound is :data:`MAX_CLASSES`.

    Args:
      labels: the labels.
      n: the number of images they belong to.
      num_classes: the class count, or None when it is not known yet.
      what: the labels' name or file, for messages.

    Returns:
      The labels as int32.

    Example:
      >>> as_labels([0, 2, 1], 3, 3)
      array([0, 2, 1], dtype=int32)
      >>> try:
      ...     as_labels([0.0, float("nan")], 2, 3, "y_train")
      ... except DataError as e:
      ...     print(e)
      y_train must be integer class ids; label nan at index 1 is not a number
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
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y)
        if bad.any():
            i = _first(bad)
            raise DataError(f"{what} must be integer class ids; label {y[i]} at index {i} "
                            "is not a number")
        bad = np.mod(y, 1) != 0
        if bad.any():
            i = _first(bad)
            raise DataError(f"{what} must be integer class ids; label {y[i]} at index {i} "
                            "is not a whole number")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what} must be integer class ids; got dtype {y.dtype}")
    if y.size:
        lo, hi = y.min(), y.max()
        lo_s, hi_s = _num(lo), _num(hi)
        limit = MAX_CLASSES if num_classes is None else int(num_classes)
        if lo < 0 or hi >= limit:
            i = _first(y < 0) if lo < 0 else _first(y >= limit)
            where = f"(label {_num(y[i])} at index {i})"
            if num_classes is not None:
                raise DataError(
                    f"{what} must lie in [0, {num_classes}); found values from {lo_s} to {hi_s} "
                    f"{where}; labels are class ids 0..{num_classes - 1}")
            if lo < 0:
                raise DataError(f"{what} must be class ids >= 0; found values from {lo_s} to "
                                f"{hi_s} {where}")
            raise DataError(
                f"{what} must be class ids below {MAX_CLASSES:,} (the most classes jaxcnn "
                f"accepts); found values from {lo_s} to {hi_s} {where}")
    return y.astype(np.int32)


def infer_num_classes(*labelled: tuple[np.ndarray, str]) -> int:
    """The class count labels imply when the data declares none: ``max(label) + 1``.

    The count may be at most :data:`CLASS_ID_SPREAD` (10) times the number of
    distinct labels present, so a stray label such as ``1000`` among ``0..9``
    is refused (naming its value, index and array) instead of silently
    training 1,001 classes. Real datasets pass: their labels are ``0..K-1``
    with (nearly) every class present.

    Args:
      labelled: ``(labels, what)`` pairs, checked already by :func:`as_labels`.

    Returns:
      The class count.

    Example:
      >>> infer_num_classes((np.array([0, 1, 2]), "y_train"), (np.array([3]), "y_test"))
      4
      >>> try:
      ...     infer_num_classes((np.r_[np.arange(10), 1000], "y_train"))
      ... except DataError as e:
      ...     print(str(e)[:58])
      label 1000 at index 10 of y_train would make 1,001 classes
    """
    top, where = -1, ("labels", 0)
    for y, what in labelled:
        if len(y) and int(y.max()) > top:
            top, where = int(y.max()), (what, int(np.argmax(y)))
    if top < 0:
        return 0
    distinct = np.unique(np.concatenate([np.asarray(y) for y, _ in labelled]))
    k = top + 1
    if k > CLASS_ID_SPREAD * len(distinct):
        shown = ", ".join(str(int(v)) for v in distinct[:12])
        if len(distinct) > 12:
            shown += f", ... ({len(distinct):,} values)"
        raise DataError(
            f"label {top} at index {where[1]} of {where[0]} would make {k:,} classes, but only "
            f"{len(distinct):,} distinct labels occur ({shown}); labels must be class ids "
            f"0..K-1 with at least one class in {CLASS_ID_SPREAD} present: fix the label, "
            "renumber the labels, or declare the class count (num_classes= in from_arrays, "
            "a class_names array in an .npz, PREFIX-mapping.txt next to IDX files)")
    return k


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
    if not keep:  # no labels at all
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _check_held_out(keep: np.ndarray, held: np.ndarray, setting: str, fraction: float,
                    n: int, held_name: str) -> None:
    """Refuses a stratified split that leaves one side without images."""
    if len(keep) == 0:
        raise DataError(
            f"{setting}={fraction} holds out all {n:,} training images as {held_name}, leaving "
            f"none to train on (each class keeps round((1 - fraction) * its count)); lower "
            f"{setting}, or use a larger dataset")
    if len(held) == 0:
        raise DataError(
            f"{setting}={fraction} of {n:,} training images holds out no {held_name} image "
            f"(each class holds out round(fraction * its count), and every class is too "
            f"small); raise {setting}"
            + (", or set it to 0 for no validation split" if held_name == "validation" else
               ", or give test arrays"))


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

    Raises:
      DataError: the fraction leaves no training image, or holds out none.

    Example:
      >>> split = Split(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10) % 2)
      >>> train, val = carve_validation(split, 0.2, seed=0)
      >>> len(train), len(val), sorted(val.labels.tolist())
      (8, 2, [0, 1])
    """
    if fraction <= 0:
        return train, None
    keep, held = stratified_split(train.labels, fraction, seed + 1)
    _check_held_out(keep, held, "data.validation_fraction", fraction, len(train), "validation")
    subset = getattr(train.images, "subset", None)
    take = subset if subset is not None else train.images.__getitem__
    return (Split(take(keep), train.labels[keep]), Split(take(held), train.labels[held]))


def _class_count(num_classes) -> int:
    try:
        k = operator.index(num_classes)
    except TypeError:
        raise DataError(f"num_classes must be an integer; got {num_classes!r}") from None
    if k < 2:
        raise DataError(f"a classifier needs at least 2 classes; the labels have {k}")
    if k > MAX_CLASSES:
        raise DataError(f"num_classes={k:,} is more than the {MAX_CLASSES:,} classes jaxcnn "
                        "accepts; check the class count")
    return int(k)


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
      num_classes: defaults to the number of ``class_names``, else to
        ``max(label) + 1`` (see :func:`infer_num_classes` for the bound).
      class_names: defaults to ``"0"``, ``"1"``, ...
      validation_fraction: stratified fraction of train held out for validation.
      test_fraction: used only when no test arrays are given.
      seed: seed of the held-out splits.
      name: a name for the run's records.

    Returns:
      A :class:`Dataset`.

    Raises:
      DataError: arrays of the wrong shape or type, empty splits, labels out
        of range (value and index named), more than :data:`MAX_CLASSES`
        classes.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> ds = from_arrays(rng.random((100, 8, 8)), rng.integers(0, 4, 100))
      >>> ds.image_shape, ds.num_classes, len(ds.train), len(ds.test)
      ((8, 8, 1), 4, 80, 20)
    """
    x_train = as_images(x_train, "x_train")
    y_raw = np.asarray(y_train)
    if (x_test is None) != (y_test is None):
        raise DataError("give both x_test and y_test, or neither")
    if x_test is not None:
        x_test = as_images(x_test, "x_test")
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    if num_classes is None:
        # Shape, dtype and range problems get their own message before the count is inferred.
        labelled = [(as_labels(y_raw, len(x_train), None, "y_train"), "y_train")]
        if x_test is not None:
            labelled.append((as_labels(y_test, len(x_test), None, "y_test"), "y_test"))
        num_classes = infer_num_classes(*labelled)
    num_classes = _class_count(num_classes)
    y_train = as_labels(y_raw, len(x_train), num_classes, "y_train")
    if x_test is None:
        keep, held = stratified_split(y_train, test_fraction, seed)
        _check_held_out(keep, held, "test_fraction", test_fraction, len(y_train), "test")
        x_test, y_test = x_train[held], y_train[held]
        x_train, y_train = x_train[keep], y_train[keep]
    else:
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
