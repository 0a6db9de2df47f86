"""Datasets from local files, no tfds and no network: IDX directories and ``.npz`` files.

``idx:DIR``
  A directory in the MNIST IDX format, as MNIST, Fashion-MNIST, KMNIST and
  EMNIST distribute it: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or
  ``.gz``; ``test-`` may stand for ``t10k-``, and ``.`` for the ``-`` before
  ``idx`` (``train-images.idx3-ubyte``). Prefixed names such as
  ``emnist-digits-train-images-idx3-ubyte`` work too; when a directory holds
  several prefixes, name one: ``idx:DIR/emnist-digits``. EMNIST images are
  stored transposed and are turned upright; its ``PREFIX-mapping.txt`` (when
  present) gives the class names.

``npz:FILE``
  A NumPy ``.npz`` archive holding ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` (as Keras's ``mnist.npz``). Also accepted, per split:
  ``train_images``/``train_labels``, ``images_train``/``labels_train``,
  ``X_train``/``Y_train``; a validation split as ``x_val``/``y_val`` (or
  ``x_validation``/``y_validation``, ``val_images``/``val_labels``);
  ``class_names`` (strings); or a single unsplit ``x``/``y`` (``images``/
  ``labels``) from which a stratified 20% test split is held out.

Malformed files (bad magic number, truncated or oversized data, images and
labels that do not pair up) raise :class:`~jaxcnn.errors.DataError`; nothing is
ever partially loaded.

Example:
  >>> import tempfile, os
  >>> d = tempfile.mkdtemp()
  >>> rng = np.random.default_rng(0)
  >>> for split, n in (("train", 30), ("t10k", 10)):
  ...     write_idx(os.path.join(d, f"{split}-images-idx3-ubyte.gz"),
  ...               rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
  ...     write_idx(os.path.join(d, f"{split}-labels-idx1-ubyte.gz"),
  ...               (np.arange(n) % 10).astype(np.uint8))
  >>> ds = load_idx(d)
  >>> ds.image_shape, ds.num_classes, len(ds.train), len(ds.test)
  ((28, 28, 1), 10, 30, 10)
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zipfile

import numpy as np

from jaxcnn.data._core import Dataset, Split, as_images, as_labels, from_arrays
from jaxcnn.errors import DataError

# IDX type codes -> big-endian NumPy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}

_IDX_NAME = re.compile(
    r"^(?:(?P<prefix>.+)-)?(?P<split>train|t10k|test)-(?P<kind>images|labels)"
    r"[-.]idx(?P<ndim>[13])-ubyte(?P<gz>\.gz)?$")


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (raw or gzip-compressed) completely.

    Args:
      path: the file.

    Returns:
      The array, in native byte order, with the shape the header declares.

    Raises:
      DataError: unreadable file, bad magic number, unknown type code, or data
        shorter or longer than the header declares.

    Example:
      >>> import tempfile, os
      >>> p = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
      >>> write_idx(p, np.array([3, 1, 4], np.uint8))
      >>> read_idx(p)
      array([3, 1, 4], dtype=uint8)
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; the file is damaged or not "
                        "gzip data, download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        magic = raw[:4].hex() if raw else "empty file"
        raise DataError(
            f"{path} is not an IDX file (bad magic number {magic}; IDX files start with "
            "00 00 <type> <ndim>, e.g. 00000803 for images); check that it is the MNIST-format "
            "file and not, e.g., an HTML error page")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} "
                        "dimensions); download the file again")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what}: the header declares shape {dims} ({expected:,} data bytes) "
            f"but the file has {got:,}; download it again")
    arr = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes an array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Args:
      path: the file to write.
      array: uint8, int8, int16, int32, float32 or float64, at least 1-D.

    Example:
      >>> import tempfile, os
      >>> p = os.path.join(tempfile.mkdtemp(), "x-idx3-ubyte.gz")
      >>> write_idx(p, np.zeros((2, 3, 3), np.uint8))
      >>> read_idx(p).shape
      (2, 3, 3)
    """
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.newbyteorder("="))
    if code is None or a.ndim == 0:
        raise DataError(f"IDX cannot store a {a.ndim}-D {a.dtype} array; use uint8, int8, "
                        "int16, int32, float32 or float64 with at least one axis")
    data = (bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
            + a.astype(np.dtype(_IDX_TYPES[code])).tobytes())
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def find_idx_files(path: str) -> tuple[str, dict[tuple[str, str], str]]:
    """Finds the four IDX files of a directory (or of ``DIR/PREFIX``).

    Args:
      path: a directory, or a directory joined with a file prefix
        (``/data/emnist/emnist-digits``).

    Returns:
      ``(prefix, {("train"|"test", "images"|"labels"): file})``.

    Raises:
      DataError: missing files (the expected names are listed) or several
        prefixes in one directory (they are listed).

    Example:
      >>> find_idx_files("/no/such/dir")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      jaxcnn.errors.DataError: idx dataset directory /no/such/dir does not exist; ...
    """
    if os.path.isdir(path):
        directory, want = path, None
    elif os.path.isdir(os.path.dirname(path) or "."):
        directory, want = os.path.dirname(path) or ".", os.path.basename(path)
    else:
        raise DataError(f"idx dataset directory {path} does not exist; give the directory "
                        "holding the IDX files, e.g. --dataset idx:~/data/mnist")
    found: dict[str, dict[tuple[str, str], str]] = {}
    for fname in sorted(os.listdir(directory)):
        m = _IDX_NAME.match(fname)
        if not m:
            continue
        prefix = m["prefix"] or ""
        split = "train" if m["split"] == "train" else "test"
        if (m["kind"] == "images") != (m["ndim"] == "3"):
            continue
        slot = found.setdefault(prefix, {})
        key = (split, m["kind"])
        # Raw files win over .gz copies of the same data (no decompression).
        if key not in slot or slot[key].endswith(".gz"):
            slot[key] = os.path.join(directory, fname)
    names = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte (raw or .gz, optionally PREFIX-...)")
    if want is not None:
        if want not in found:
            raise DataError(
                f"no IDX files with prefix {want!r} in {directory}; prefixes there: "
                f"{', '.join(repr(p) for p in sorted(found)) or 'none'}; expected {names}")
        prefix = want
    elif len(found) == 1:
        prefix = next(iter(found))
    elif not found:
        raise DataError(f"no IDX files in {directory}; expected {names}")
    else:
        raise DataError(
            f"{directory} holds IDX files with several prefixes "
            f"({', '.join(repr(p) for p in sorted(found))}); choose one, e.g. "
            f"--dataset idx:{os.path.join(directory, sorted(p for p in found if p)[0])}")
    files = found[prefix]
    missing = [f"{s}-{k}" for s in ("train", "test") for k in ("images", "labels")
               if (s, k) not in files]
    if missing:
        raise DataError(f"IDX files missing in {directory}"
                        f"{' for prefix ' + repr(prefix) if prefix else ''}: "
                        f"{', '.join(missing)}; expected {names}")
    return prefix, files


def _emnist_class_names(directory: str, prefix: str) -> list[str] | None:
    path = os.path.join(directory, f"{prefix}-mapping.txt")
    if not os.path.isfile(path):
        return None
    mapping = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    mapping[int(parts[0])] = chr(int(parts[1]))
    except (OSError, ValueError):
        return None
    return [mapping.get(i, str(i)) for i in range(max(mapping) + 1)] if mapping else None


def load_idx(path: str, *, validation_fraction: float = 0.0, seed: int = 0,
             name: str | None = None) -> Dataset:
    """Loads an IDX dataset directory (MNIST, Fashion-MNIST, KMNIST, EMNIST).

    Args:
      path: the directory, or ``DIR/PREFIX`` (see :func:`find_idx_files`).
      validation_fraction: stratified fraction of train held out for validation.
      seed: seed of that split.
      name: the dataset's name in records (default ``idx:PATH``).

    Returns:
      A :class:`Dataset` of uint8 ``(N, H, W, 1)`` images.

    Raises:
      DataError: missing or malformed files, or image and label counts that differ.

    Example:
      >>> load_idx("/no/such/dir")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      jaxcnn.errors.DataError: idx dataset directory /no/such/dir does not exist; ...
    """
    path = os.path.expanduser(path)
    prefix, files = find_idx_files(path)
    arrays = {}
    for (split, kind), f in files.items():
        a = read_idx(f)
        if kind == "images" and a.ndim != 3:
            raise DataError(f"{f}: image files hold (N, H, W) arrays; this one is {a.shape}")
        if kind == "labels" and a.ndim != 1:
            raise DataError(f"{f}: label files hold (N,) arrays; this one is {a.shape}")
        arrays[split, kind] = a
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[split, "images"]), len(arrays[split, "labels"])
        if n_img != n_lab:
            raise DataError(
                f"{files[split, 'images']} holds {n_img:,} images but "
                f"{files[split, 'labels']} holds {n_lab:,} labels; the files do not belong "
                "together (mixed downloads?): use the four files of one dataset")
    if prefix.startswith("emnist"):
        # EMNIST's binaries store each image transposed relative to MNIST.
        for split in ("train", "test"):
            arrays[split, "images"] = np.ascontiguousarray(
                arrays[split, "images"].transpose(0, 2, 1))
    names = _emnist_class_names(os.path.dirname(files["train", "images"]), prefix)
    y_max = max(int(arrays["train", "labels"].max()), int(arrays["test", "labels"].max()))
    num_classes = max(len(names) if names else 0, y_max + 1)
    if names and len(names) < num_classes:
        names = names + [str(i) for i in range(len(names), num_classes)]
    return from_arrays(arrays["train", "images"], arrays["train", "labels"],
                       arrays["test", "images"], arrays["test", "labels"],
                       num_classes=num_classes, class_names=names,
                       validation_fraction=validation_fraction, seed=seed,
                       name=name or f"idx:{path}")


_NPZ_KEYS = {
    "train": [("x_train", "y_train"), ("train_images", "train_labels"),
              ("images_train", "labels_train"), ("X_train", "Y_train"), ("X_train", "y_train")],
    "test": [("x_test", "y_test"), ("test_images", "test_labels"),
             ("images_test", "labels_test"), ("X_test", "Y_test"), ("X_test", "y_test")],
    "validation": [("x_val", "y_val"), ("x_validation", "y_validation"),
                   ("val_images", "val_labels"), ("validation_images", "validation_labels"),
                   ("X_val", "y_val")],
    "all": [("x", "y"), ("images", "labels"), ("X", "y"), ("X", "Y")],
}


def load_npz(path: str, *, validation_fraction: float = 0.0, seed: int = 0,
             name: str | None = None) -> Dataset:
    """Loads a ``.npz`` dataset (Keras's ``mnist.npz`` layout and the others the module lists).

    Args:
      path: the file.
      validation_fraction: stratified fraction of train held out for validation
        (ignored when the file holds a validation split).
      seed: seed of held-out splits.
      name: the dataset's name in records (default ``npz:PATH``).

    Returns:
      A :class:`Dataset`.

    Raises:
      DataError: unreadable or damaged file, missing keys (the accepted ones
        are listed), object arrays, or images and labels that do not pair up.

    Example:
      >>> import tempfile, os
      >>> p = os.path.join(tempfile.mkdtemp(), "mnist.npz")
      >>> rng = np.random.default_rng(0)
      >>> np.savez(p, x_train=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
      ...          y_train=np.arange(40) % 10,
      ...          x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
      ...          y_test=np.arange(10))
      >>> ds = load_npz(p)
      >>> ds.image_shape, len(ds.train), len(ds.test)
      ((28, 28, 1), 40, 10)
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f"npz file {path} does not exist; give the path of a .npz file, e.g. "
                        "--dataset npz:~/.keras/datasets/mnist.npz")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable .npz archive (no zip directory: the file "
                        "is damaged, truncated or not .npz); download it again, or save it "
                        "with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)

            def pair(split):
                for kx, ky in _NPZ_KEYS[split]:
                    if kx in keys and ky in keys:
                        return z[kx], z[ky]
                return None

            train, test, val, whole = (pair(s) for s in ("train", "test", "validation", "all"))
            class_names = z["class_names"] if "class_names" in keys else None
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise DataError(f"{path} holds Python objects (pickled arrays); store plain "
                            "numeric arrays: np.savez(path, x_train=..., y_train=...)") from None
        raise DataError(f"cannot read {path}: {e}; the file is damaged, save it again") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"cannot read {path} as an .npz archive ({e}); the file is damaged "
                        "or not an .npz file, save or download it again") from None
    if train is None and whole is None:
        accepted = "; ".join(f"{kx}/{ky}" for s in ("train", "all") for kx, ky in _NPZ_KEYS[s])
        raise DataError(f"{path} has no training arrays (keys: {', '.join(sorted(keys))}); "
                        f"accepted key pairs: {accepted} (with x_test/y_test for a test split)")
    if train is None:
        train = whole
    x_test, y_test = test if test is not None else (None, None)
    for what, arrays in (("train", train), ("test", test), ("validation", val)):
        if arrays is None:
            continue
        n_x, n_y = (int(np.shape(a)[0]) if np.ndim(a) else 0 for a in arrays)
        if n_x != n_y:
            raise DataError(f"{path}: the {what} split has {n_x:,} images but {n_y:,} labels; "
                            "each image needs exactly one label, save matching arrays")
    names = [str(c) for c in class_names.tolist()] if class_names is not None else None
    num_classes = len(names) if names is not None else None
    ds = from_arrays(train[0], train[1], x_test, y_test, num_classes=num_classes,
                     class_names=names,
                     validation_fraction=0.0 if val is not None else validation_fraction,
                     seed=seed, name=name or f"npz:{path}")
    if val is not None:
        xv = as_images(val[0], "x_val")
        if xv.shape[1:] != ds.image_shape:
            raise DataError(f"{path}: validation images are {xv.shape[1:]} but training images "
                            f"are {ds.image_shape}")
        ds = dataclasses.replace(ds, validation=Split(
            xv.astype(ds.train.images.dtype), as_labels(val[1], len(xv), ds.num_classes, "y_val")))
    return ds

