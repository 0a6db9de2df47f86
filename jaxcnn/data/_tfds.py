"""Datasets from tensorflow-datasets (tfds), read without TensorFlow.

Prepared tfds data in the ArrayRecord format is read with
``tfds.data_source`` (random access, no TensorFlow); preparing it is
``tfds.builder(name).download_and_prepare(file_format="array_record")``,
which ``jaxcnn data prepare NAME --data-dir DIR`` runs on a machine with a
network. Loading never downloads: data that is not prepared fails at once with
the commands that prepare it, so nothing hangs on a machine without a network.

tfds is imported on first use only, so ``import jaxcnn`` does not need it.

The data directory is, in order: the ``data_dir`` argument (``--data-dir``),
the ``TFDS_DATA_DIR`` environment variable, ``~/tensorflow_datasets``.

Split names use the tfds split syntax (``train``, ``train[:90%]``,
``train[:5000]+test``). Without a validation split of its own, a dataset's
validation data is a stratified fraction carved from the training split.

Example:
  >>> import tempfile
  >>> try:
  ...     load_tfds("mnist", data_dir=tempfile.mkdtemp())
  ... except DataError as e:
  ...     print(str(e)[:40])
  tfds dataset 'mnist' is not prepared in
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from jaxcnn.data._core import (Dataset, Split, UnknownDatasetError, as_labels, carve_validation,
                               from_arrays)
from jaxcnn.errors import DataError

TF_EXTRA = 'pip install "tensorflow-datasets[tensorflow]"'
_CHUNK = 1024


def default_data_dir(data_dir: str | None = None) -> str:
    """The directory prepared datasets are read from (and written to).

    Args:
      data_dir: an explicit directory; wins over everything else.

    Returns:
      ``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``
      (user-expanded).

    Example:
      >>> default_data_dir("/data/tfds")
      '/data/tfds'
    """
    d = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(os.fspath(d))


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a declared dependency
        raise DataError(f"tfds datasets need tensorflow-datasets ({e}); "
                        "install it with: pip install tensorflow-datasets") from None
    return tfds


def prepare_commands(name: str, data_dir: str) -> str:
    """The commands that prepare ``name`` elsewhere and use it here.

    Example:
      >>> print(prepare_commands("mnist", "/data/tfds"))  # doctest: +NORMALIZE_WHITESPACE
      on a machine with a network: jaxcnn data prepare mnist --data-dir /data/tfds;
      copy /data/tfds to this machine; then pass --data-dir /data/tfds
      (or set TFDS_DATA_DIR=/data/tfds)
    """
    return (f"on a machine with a network: jaxcnn data prepare {name} --data-dir {data_dir}; "
            f"copy {data_dir} to this machine; then pass --data-dir {data_dir} "
            f"(or set TFDS_DATA_DIR={data_dir})")


@contextlib.contextmanager
def _quiet_tfds():
    # tfds warns about every missing dataset_info.json while it looks for prepared
    # versions; jaxcnn's own error says what is missing and what to do.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _builder(tfds, name: str, data_dir: str):
    try:
        with _quiet_tfds():
            return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}: neither a jaxcnn dataset nor a tensorflow-datasets "
            "name; see 'jaxcnn data list' for prepared datasets, "
            "https://www.tensorflow.org/datasets/catalog for tfds names, or use digits, "
            "synthetic:HxWxC:K, idx:DIR or npz:FILE") from None
    except Exception as e:  # bad version/config syntax, unreadable dir, ...
        raise DataError(f"cannot open tfds dataset {name!r} in {data_dir}: {e}; check the "
                        "name (NAME, NAME/CONFIG or NAME:VERSION) and --data-dir") from None


@dataclasses.dataclass(frozen=True)
class Features:
    """Which features of a tfds dataset are the image and the label.

    Attributes:
      image: the image feature's key.
      label: the class-label feature's key.
      image_shape: ``(H, W, C)``.
      class_names: one name per class.
    """

    image: str
    label: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]


def detect_features(info, name: str = "dataset") -> Features:
    """Finds the image and label features of a tfds ``DatasetInfo``.

    The dataset's ``supervised_keys`` win when they name an image and a class
    label; otherwise the one ``Image`` and the one ``ClassLabel`` feature.

    Args:
      info: ``builder.info``.
      name: the dataset's name, for error messages.

    Returns:
      :class:`Features`.

    Raises:
      DataError: no (or several) image / label features, or images whose
        size varies from example to example.

    Example:
      >>> import tensorflow_datasets as tfds
      >>> f = detect_features(tfds.builder("mnist").info)
      >>> f.image, f.label, f.image_shape, len(f.class_names)
      ('image', 'label', (28, 28, 1), 10)
    """
    tfds = _tfds()
    feats = info.features
    top = dict(feats.items()) if hasattr(feats, "items") else {}
    images = [k for k, f in top.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in top.items() if isinstance(f, tfds.features.ClassLabel)]
    sk = info.supervised_keys
    if (isinstance(sk, tuple) and len(sk) >= 2 and isinstance(sk[0], str)
            and sk[0] in images and sk[1] in labels):
        image, label = sk[0], sk[1]
    elif len(images) == 1 and len(labels) == 1:
        image, label = images[0], labels[0]
    else:
        raise DataError(
            f"tfds dataset {name!r} is not an image-classification dataset jaxcnn can read: "
            f"it needs one Image and one ClassLabel feature, and has "
            f"{', '.join(f'{k} ({type(f).__name__})' for k, f in top.items()) or 'none'}; "
            "load the arrays yourself and use jaxcnn.data.from_arrays")
    shape = tuple(top[image].shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise DataError(
            f"tfds dataset {name!r} has images of varying size {shape}; jaxcnn trains on "
            "fixed-size images: resize them to one size and use jaxcnn.data.from_arrays")
    names = tuple(str(n) for n in top[label].names)
    return Features(image, label, tuple(int(d) for d in shape), names)  # type: ignore[arg-type]


def _read_split(source, features: Features, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    if n == 0:
        raise DataError(f"split {split!r} of tfds dataset {name!r} is empty; choose another "
                        "split (e.g. train or test)")
    images = np.empty((n, *features.image_shape), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int32)
    dtype_checked = False
    for start in range(0, n, _CHUNK):
        keys = list(range(start, min(start + _CHUNK, n)))
        for i, rec in zip(keys, _records(source, keys)):
            img = np.asarray(rec[features.image])
            if not dtype_checked:
                if img.dtype != np.uint8:
                    images = images.astype(img.dtype)
                dtype_checked = True
            if img.shape != features.image_shape:
                raise DataError(
                    f"example {i} of {name!r} split {split!r} has image shape {img.shape}, "
                    f"but the dataset declares {features.image_shape}; re-prepare it with "
                    f"jaxcnn data prepare {name}")
            images[i] = img
            labels[i] = int(rec[features.label])
    return images, labels


def _split_names(info) -> set[str]:
    try:
        return set(info.splits.keys())
    except Exception:  # noqa: BLE001 - unknown splits (e.g. mocked metadata)
        return set()


def load_tfds(
    name: str,
    *,
    validation_fraction: float = 0.0,
    seed: int = 0,
    data_dir: str | None = None,
    splits: dict[str, str | None] | None = None,
    in_memory: bool | None = None,
) -> Dataset:
    """Loads a prepared tfds image-classification dataset.

    Args:
      name: the tfds name (``mnist``, ``cifar10``, ``emnist/digits``,
        ``mnist:3.0.1``, ...).
      validation_fraction: when no validation split is named and the dataset
        has a ``validation`` split, that split is used (if this is > 0);
        otherwise this stratified fraction of train is held out.
      seed: seed of the carved validation split.
      data_dir: where the prepared data is (see :func:`default_data_dir`).
      splits: ``{"train": ..., "validation": ..., "test": ...}`` in tfds split
        syntax (missing or None: ``train``, automatic, ``test``).
      in_memory: decode every image into host memory now (True), or keep
        the images in the data source and decode them when a batch needs them
        (False: :class:`SourceImages`; labels are still read at once). None:
        in memory when the decoded train split takes at most a quarter of the
        host's RAM.

    Returns:
      A :class:`jaxcnn.data.Dataset` with uint8 images (a NumPy array or
      :class:`SourceImages`), int32 labels and the class names from the
      dataset's metadata.

    Raises:
      DataError: not prepared here (the message gives the commands that
        prepare and copy it), an unknown name, a split that does not exist, or a
        dataset that is not image classification.

    Example:
      >>> import tensorflow_datasets as tfds
      >>> with tfds.testing.mock_data(num_examples=20):
      ...     ds = load_tfds("mnist", validation_fraction=0.2)
      >>> ds.image_shape, ds.num_classes, ds.metadata()["splits"]
      ((28, 28, 1), 10, {'train': 16, 'validation': 4, 'test': 20})
    """
    tfds = _tfds()
    data_dir = default_data_dir(data_dir)
    splits = dict(splits or {})
    train_split = splits.get("train") or "train"
    test_split = splits.get("test") or "test"
    val_split = splits.get("validation")
    builder = _builder(tfds, name, data_dir)
    features = detect_features(builder.info, name)
    known = _split_names(builder.info)
    if val_split is None and validation_fraction > 0 and "validation" in known:
        val_split = "validation"

    def source(split):
        try:
            with _quiet_tfds():
                return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # noqa: BLE001 - tfds raises many types; all become DataError
            _raise_unreadable(builder, name, data_dir, split, known, e)

    num_classes = len(features.class_names)
    train_source = source(train_split)
    if in_memory is None:
        per_image = int(np.prod(features.image_shape))
        in_memory = len(train_source) * per_image <= _host_memory_bytes() // 4
    if not in_memory:
        return _load_lazy(tfds, name, data_dir, features, source, train_source,
                          (train_split, val_split, test_split), validation_fraction, seed)
    x_train, y_train = _read_split(train_source, features, name, train_split)
    x_test, y_test = _read_split(source(test_split), features, name, test_split)
    ds = from_arrays(x_train, y_train, x_test, y_test, num_classes=num_classes,
                     class_names=features.class_names,
                     validation_fraction=0.0 if val_split else validation_fraction,
                     seed=seed, name=name)
    if val_split:
        x_val, y_val = _read_split(source(val_split), features, name, val_split)
        ds = dataclasses.replace(
            ds, validation=Split(x_val, as_labels(y_val, len(x_val), num_classes, val_split)))
    return ds


def _host_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 8 * 1024**3


def _records(source, keys):
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:
            return getitems([int(k) for k in keys])
        except TypeError:
            # Some data sources (tfds's own test mocks among them) implement only
            # per-record access.
            pass
    return [source[int(k)] for k in keys]


class SourceImages:
    """The images of a tfds data source, decoded when indexed (a lazy array).

    Behaves like the ``(N, H, W, C)`` uint8 array jaxcnn expects where it
    matters: ``len``, ``shape``, ``dtype``, ``nbytes`` (decoded size),
    indexing with an int, a slice or an integer array (each returns decoded
    NumPy images), and ``np.asarray`` (decodes all of them). Training on it
    streams: the prefetch thread decodes each batch ahead of the step.

    Args:
      source: a ``tfds.data_source`` split.
      key: the image feature's key.
      image_shape: ``(H, W, C)``.
      index: the source records this array holds, in order (default all).

    Example:
      >>> imgs = SourceImages([{"image": np.full((2, 2, 1), i, np.uint8)} for i in range(5)],
      ...                     "image", (2, 2, 1))
      >>> imgs.shape, imgs[[4, 0]][:, 0, 0, 0].tolist(), int(imgs.subset([1, 3])[1][0, 0, 0])
      ((5, 2, 2, 1), [4, 0], 3)
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, source, key: str, image_shape, index=None):
        self._source, self._key = source, key
        self._image_shape = tuple(int(d) for d in image_shape)
        self._index = np.arange(len(source)) if index is None else np.asarray(index, np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, H, W, C)``."""
        return (len(self._index), *self._image_shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded images."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self._index)

    def subset(self, indices) -> "SourceImages":
        """A lazy view of some of these images (``indices`` into this array)."""
        return SourceImages(self._source, self._key, self._image_shape,
                            self._index[np.asarray(indices, np.int64)])

    def __getitem__(self, item):
        if isinstance(item, (int, np.integer)):
            return self[np.asarray([item])][0]
        keys = self._index[item] if isinstance(item, slice) else self._index[np.asarray(item)]
        out = np.empty((len(keys), *self._image_shape), self.dtype)
        for i, rec in enumerate(_records(self._source, keys)):
            out[i] = np.asarray(rec[self._key]).reshape(self._image_shape)
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)


def _read_labels(tfds, name, data_dir, split, features) -> np.ndarray:
    # Labels only: skip decoding the images, which is most of the reading time.
    with _quiet_tfds():
        src = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                               decoders={features.image: tfds.decode.SkipDecoding()})
    labels = np.empty(len(src), np.int32)
    for start in range(0, len(src), _CHUNK):
        keys = range(start, min(start + _CHUNK, len(src)))
        for i, rec in zip(keys, _records(src, keys)):
            labels[i] = int(rec[features.label])
    return labels


def _load_lazy(tfds, name, data_dir, features, source, train_source, split_names,
               validation_fraction, seed):
    train_split, val_split, test_split = split_names
    num_classes = len(features.class_names)

    def lazy_split(src, split):
        labels = as_labels(_read_labels(tfds, name, data_dir, split, features), len(src),
                           num_classes, split)
        return Split(SourceImages(src, features.image, features.image_shape), labels)

    train = lazy_split(train_source, train_split)
    test = lazy_split(source(test_split), test_split)
    if val_split:
        validation = lazy_split(source(val_split), val_split)
    else:
        train, validation = carve_validation(train, validation_fraction, seed)
    return Dataset(name, train, test, validation, num_classes, features.class_names)


def _raise_unreadable(builder, name, data_dir, split, known, err) -> None:
    try:
        with _quiet_tfds():
            prepared = builder.is_prepared()
    except Exception:  # noqa: BLE001
        prepared = False
    if not prepared:
        raise DataError(
            f"tfds dataset {name!r} is not prepared in {data_dir} (searched "
            f"{builder.data_dir}), and jaxcnn does not download while loading; "
            f"{prepare_commands(name, data_dir)}") from None
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, NotImplementedError) or "file format" in msg.lower():
        raise DataError(
            f"tfds dataset {name!r} in {builder.data_dir} is prepared in a format jaxcnn "
            f"cannot read without TensorFlow ({msg}); re-prepare it as ArrayRecord: "
            f"jaxcnn data prepare {name} --data-dir <new dir>") from None
    raise DataError(
        f"cannot read split {split!r} of tfds dataset {name!r} ({msg}); splits here: "
        f"{', '.join(sorted(known)) or 'unknown'}; split syntax: train, train[:90%], "
        "train[:5000]+test") from None


def prepare_tfds(name: str, data_dir: str | None = None) -> dict[str, Any]:
    """Downloads a tfds dataset and writes it as ArrayRecord (needs a network).

    Args:
      name: the tfds name.
      data_dir: where to write it (see :func:`default_data_dir`).

    Returns:
      ``{"name", "data_dir", "path", "splits": {split: examples}}``.

    Raises:
      DataError: the download failed (no network), or the dataset's
        preparation code needs TensorFlow (the message names what to install).

    Example:
      >>> prepare_tfds("mnist", "/data/tfds")  # doctest: +SKIP
      {'name': 'mnist', 'data_dir': '/data/tfds', 'path': '/data/tfds/mnist/3.0.1', ...}
    """
    tfds = _tfds()
    data_dir = default_data_dir(data_dir)
    builder = _builder(tfds, name, data_dir)
    detect_features(builder.info, name)
    with _quiet_tfds():
        prepared = builder.is_prepared()
    if not prepared:
        _check_reachable(builder, name, data_dir)
    try:
        builder.download_and_prepare(file_format="array_record")
    except ModuleNotFoundError as e:
        if "tensorflow" in str(e) and "tensorflow_datasets" not in str(e):
            raise DataError(
                f"preparing tfds dataset {name!r} needs TensorFlow (its preparation code "
                f"encodes images with it): on the machine that prepares it, run {TF_EXTRA} "
                f"(reading the prepared data later needs no TensorFlow)") from None
        raise DataError(f"preparing {name!r} needs a module that is missing: {e}; "
                        "install it and retry") from None
    except (OSError, ConnectionError) as e:
        raise DataError(
            f"could not download tfds dataset {name!r} into {data_dir}: {e}; run "
            "'jaxcnn data prepare' on a machine with a network, then copy the directory "
            "here") from None
    return {"name": name, "data_dir": data_dir, "path": os.fspath(builder.data_dir),
            "splits": {k: int(v.num_examples) for k, v in builder.info.splits.items()}}


def _check_reachable(builder, name: str, data_dir: str, timeout: float = 10.0) -> None:
    """Fails at once when no download host answers (tfds would retry for minutes)."""
    import socket
    from urllib.parse import urlsplit

    try:
        urls = list(builder.url_infos or {})
    except Exception:  # noqa: BLE001 - builders without registered checksums
        urls = []
    hosts = []
    for url in urls:
        parts = urlsplit(url)
        if parts.hostname and parts.scheme in ("http", "https", "ftp"):
            port = parts.port or {"http": 80, "https": 443, "ftp": 21}[parts.scheme]
            if (parts.hostname, port) not in hosts:
                hosts.append((parts.hostname, port))
    errors = []
    for host, port in hosts[:3]:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as e:
            errors.append(f"{host}: {e}")
    if errors:
        raise DataError(
            f"cannot download tfds dataset {name!r}: its download host is unreachable "
            f"({'; '.join(errors)}); {prepare_commands(name, data_dir)}")


def list_prepared(data_dir: str | None = None) -> list[dict[str, Any]]:
    """The tfds datasets prepared under a data directory (reads metadata only).

    Args:
      data_dir: the directory (see :func:`default_data_dir`).

    Returns:
      One dict per prepared dataset version: ``name`` (with ``/config``),
      ``version``, ``file_format``, ``readable`` (ArrayRecord, so readable
      without TensorFlow), ``splits`` ``{split: examples}`` and ``path``;
      sorted by name and version.

    Example:
      >>> import tempfile
      >>> list_prepared(tempfile.mkdtemp())
      []
    """
    root = default_data_dir(data_dir)
    out = []
    if not os.path.isdir(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        if rel.split(os.sep)[0] in ("downloads", "manual"):
            dirnames[:] = []
            continue
        if depth >= 3:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith(("incomplete", "."))]
        if "dataset_info.json" not in filenames or depth < 2:
            continue
        try:
            with open(os.path.join(dirpath, "dataset_info.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        parts = rel.split(os.sep)
        name = "/".join(parts[:-1])
        fmt = info.get("fileFormat", "tfrecord")
        out.append({
            "name": name,
            "version": parts[-1],
            "file_format": fmt,
            "readable": fmt == "array_record",
            "splits": {s["name"]: sum(int(n) for n in s.get("shardLengths", []))
                       for s in info.get("splits", [])},
            "path": dirpath,
        })
    return sorted(out, key=lambda d: (d["name"], d["version"]))
