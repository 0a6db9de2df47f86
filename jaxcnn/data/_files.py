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
ever partially loaded. Hostile files meet the same error within bounded
memory: every header (IDX, ``.npy`` inside ``.npz``) is read first and its
declared size checked, in Python integers, against what the file can hold and
against :data:`~jaxcnn.data._core.MEMORY_BUDGET_BYTES` before any data is read;
gzip data is decompressed in chunks and never past the declared size; object
(pickled) and non-numeric arrays are refused by dtype; labels are checked
against the declared class count (``class_names``, ``PREFIX-mapping.txt``) or
:func:`~jaxcnn.data._core.infer_num_classes`. :func:`read_npy` reads one
``.npy`` array under the same rules.

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
import math
import os
import re
import zipfile
import zlib

import numpy as np

from jaxcnn.data._core import (MAX_CLASSES, Dataset, Split, as_images, as_labels, check_memory,
                               from_arrays, infer_num_classes)
from jaxcnn.errors import DataError

# IDX type codes -> big-endian NumPy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}

_IDX_NAME = re.compile(
    r"^(?:(?P<prefix>.+)-)?(?P<split>train|t10k|test)-(?P<kind>images|labels)"
    r"[-.]idx(?P<ndim>[13])-ubyte(?P<gz>\.gz)?$")

# DEFLATE (gzip, zip) expands one compressed byte into at most 1032 bytes: a header
# that declares more than that many times the compressed size is a lie.
_DEFLATE_MAX_RATIO = 1032
_READ_CHUNK = 8 * 1024**2
_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def _idx_header(f, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Reads an IDX header from an open file: ``(dims, dtype, header bytes)``."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
        magic = head[:4].hex() if head else "empty file"
        raise DataError(
            f"{path} is not an IDX file (bad magic number {magic}; IDX files start with "
            "00 00 <type> <ndim>, e.g. 00000803 for images); check that it is the MNIST-format "
            "file and not, e.g., an HTML error page")
    ndim = head[3]
    rest = f.read(4 * ndim)
    if ndim == 0 or len(rest) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(rest)} bytes for {ndim} "
                        "dimensions); download the file again")
    dims = tuple(int.from_bytes(rest[4 * i:4 * i + 4], "big") for i in range(ndim))
    return dims, np.dtype(_IDX_TYPES[head[2]]), 4 + 4 * ndim


def _open_idx(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _unreadable_idx(path: str, e: Exception) -> DataError:
    return DataError(f"cannot read IDX file {path}: {e or type(e).__name__}; the file is "
                     "damaged or not gzip data, download it again")


def _idx_data_bytes(path: str, dims: tuple[int, ...], dtype: np.dtype, header: int) -> int:
    """The data bytes a header declares, refused when the file cannot hold them.

    The product is a Python int, so huge dimensions cannot overflow. A raw file
    must hold exactly that many bytes after its header; a gzip file cannot hold
    more than :data:`_DEFLATE_MAX_RATIO` times its own size.
    """
    expected = math.prod(dims) * dtype.itemsize
    size = os.path.getsize(path)
    if path.endswith(".gz"):
        most = size * _DEFLATE_MAX_RATIO
        if expected > most:
            raise DataError(
                f"{path} is damaged or not what its header says: the header declares shape "
                f"{dims} ({expected:,} data bytes) but a gzip file of {size:,} bytes "
                f"decompresses to at most {most:,}; download it again")
    elif size - header != expected:
        _raise_idx_size(path, dims, expected, size - header)
    return expected


def _raise_idx_size(path: str, dims, expected: int, got: int, more: bool = False) -> None:
    what = "truncated" if got < expected else "longer than its header says"
    has = f"more than {expected:,} (read no further)" if more else f"{got:,}"
    raise DataError(
        f"{path} is {what}: the header declares shape {dims} ({expected:,} data bytes) "
        f"but the file has {has}; download it again")


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (raw or gzip-compressed) completely.

    Memory is bounded by what the header declares: the declared size is
    checked against the file's size (or, for ``.gz``, the most it can
    decompress to) and :data:`~jaxcnn.data._core.MEMORY_BUDGET_BYTES` before
    anything is allocated, and gzip data is decompressed in chunks, at most
    one byte past the declared size. A decompression bomb is refused after
    reading no more than its header promised.

    Args:
      path: the file.

    Returns:
      The array, in native byte order, with the shape the header declares.

    Raises:
      DataError: unreadable file, bad magic number, unknown type code, data
        shorter or longer than the header declares, or a declared size above
        the memory budget.

    Example:
      >>> import tempfile, os
      >>> p = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
      >>> write_idx(p, np.array([3, 1, 4], np.uint8))
      >>> read_idx(p)
      array([3, 1, 4], dtype=uint8)
    """
    try:
        with _open_idx(path) as f:
            dims, dtype, header = _idx_header(f, path)
            expected = _idx_data_bytes(path, dims, dtype, header)
            check_memory(expected, f"{path} (shape {dims}, {dtype.name})")
            buf = np.empty(expected + 1, np.uint8)
            view = memoryview(buf)
            got = 0
            while got <= expected:
                n = f.readinto(view[got:got + _READ_CHUNK])
                if not n:
                    break
                got += n
    except DataError:
        raise
    except _GZIP_ERRORS as e:
        raise _unreadable_idx(path, e) from None
    if got != expected:
        _raise_idx_size(path, dims, expected, got, more=got > expected)
    arr = buf[:expected].view(dtype)
    if not dtype.isnative:
        arr.byteswap(inplace=True)
    return arr.view(dtype.newbyteorder("=")).reshape(dims)


def idx_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an IDX file declares, read without reading its data.

    Args:
      path: the file (raw or ``.gz``).

    Returns:
      ``(shape, dtype)``, the dtype in native byte order.

    Raises:
      DataError: not an IDX file, or a file that cannot hold the declared data.

    Example:
      >>> import tempfile, os
      >>> p = os.path.join(tempfile.mkdtemp(), "x-idx3-ubyte.gz")
      >>> write_idx(p, np.zeros((2, 3, 3), np.int32))
      >>> idx_header(p)
      ((2, 3, 3), dtype('int32'))
    """
    try:
        with _open_idx(path) as f:
            dims, dtype, header = _idx_header(f, path)
        _idx_data_bytes(path, dims, dtype, header)
    except DataError:
        raise
    except _GZIP_ERRORS as e:
        raise _unreadable_idx(path, e) from None
    return dims, dtype.newbyteorder("=")


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
    if not path:
        raise DataError("no idx dataset directory given; give the directory holding the IDX "
                        "files, e.g. --dataset idx:~/data/mnist")
    if os.path.isdir(path):
        directory, want = path, None
    elif os.path.isfile(path):
        parent = os.path.dirname(path) or "."
        raise DataError(f"{path} is a file, not a directory; give the directory holding the "
                        f"IDX files: --dataset idx:{parent}")
    elif os.path.isdir(os.path.dirname(path) or "."):
        directory, want = os.path.dirname(path) or ".", os.path.basename(path)
    else:
        raise DataError(f"idx dataset directory {path} does not exist; give the directory "
                        "holding the IDX files, e.g. --dataset idx:~/data/mnist")
    try:
        listing = sorted(os.listdir(directory))
    except OSError as e:
        raise DataError(f"cannot list the idx dataset directory {directory}: "
                        f"{e.strerror or e}; check its permissions") from None
    found: dict[str, dict[tuple[str, str], str]] = {}
    for fname in listing:
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
            there = ', '.join(repr(p) for p in sorted(found)) or 'none'
            if not any(p.startswith(want) for p in found):
                # Most likely a directory name with a typo, not a file prefix: say so first.
                raise DataError(
                    f"idx dataset directory {path} does not exist (and there are no IDX files "
                    f"with prefix {want!r} in {directory}; prefixes there: {there}); give the "
                    "directory holding the IDX files, e.g. --dataset idx:~/data/mnist, or "
                    "DIR/PREFIX for one prefix of several")
            raise DataError(
                f"no IDX files with prefix {want!r} in {directory}; prefixes there: "
                f"{there}; expected {names}")
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


_MAPPING_MAX_BYTES = 4 * 1024**2  # EMNIST's largest mapping file is about 1 KB


def _emnist_class_names(directory: str, prefix: str) -> list[str] | None:
    """Class names from ``PREFIX-mapping.txt`` (``class_id unicode_code`` per line), if present.

    A file that does not parse is ignored (None); class ids outside
    ``[0, MAX_CLASSES)``, character codes outside Unicode, or a file of more
    than a few MB are refused.
    """
    path = os.path.join(directory, f"{prefix}-mapping.txt")
    if not os.path.isfile(path):
        return None
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    if size > _MAPPING_MAX_BYTES:
        raise DataError(f"{path} is {size:,} bytes; a class mapping (one 'class_id "
                        "character_code' line per class) is a few KB: remove or replace it")
    mapping = {}
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                parts = line.split()
                if len(parts) < 2:
                    continue
                k, code = int(parts[0]), int(parts[1])
                if not 0 <= k < MAX_CLASSES or not 0 <= code <= 0x10FFFF:
                    raise DataError(
                        f"{path}, line {number}: maps class {k} to character code {code}; class "
                        f"ids must lie in [0, {MAX_CLASSES:,}) and codes in [0, 0x10FFFF]: fix "
                        "or remove the mapping file")
                mapping[k] = chr(code)
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
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
      DataError: missing or malformed files, image and label counts that differ,
        empty splits, data above the memory budget, or labels out of range: above
        the mapping file's classes, or without one, a stray label (see
        :func:`~jaxcnn.data._core.infer_num_classes`); the file and index are named.

    Example:
      >>> load_idx("/no/such/dir")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      jaxcnn.errors.DataError: idx dataset directory /no/such/dir does not exist; ...
    """
    path = os.path.expanduser(path)
    prefix, files = find_idx_files(path)
    # Headers first: ranks, counts and memory are checked before any data is read.
    headers = {key: idx_header(f) for key, f in files.items()}
    needed = 0
    for (split, kind), f in files.items():
        dims, dtype = headers[split, kind]
        if kind == "images" and len(dims) != 3:
            raise DataError(f"{f}: image files hold (N, H, W) arrays; this one is {dims}")
        if kind == "labels" and len(dims) != 1:
            raise DataError(f"{f}: label files hold (N,) arrays; this one is {dims}")
        count = math.prod(dims)
        # Non-uint8 images become float32 copies; labels become int32.
        needed += count * dtype.itemsize + (4 * count if dtype != np.uint8 or kind == "labels"
                                            else 0)
    for split in ("train", "test"):
        n_img, n_lab = headers[split, "images"][0][0], headers[split, "labels"][0][0]
        if n_img != n_lab:
            raise DataError(
                f"{files[split, 'images']} holds {n_img:,} images but "
                f"{files[split, 'labels']} holds {n_lab:,} labels; the files do not belong "
                "together (mixed downloads?): use the four files of one dataset")
        if n_img == 0:
            raise DataError(f"{files[split, 'images']} holds no images (its header declares "
                            f"shape {headers[split, 'images'][0]}); every split needs at least "
                            "one image: use the dataset's complete files")
    check_memory(needed, f"the IDX dataset {path}")
    names = _emnist_class_names(os.path.dirname(files["train", "images"]), prefix)
    arrays = {}
    # Labels first: a bad label is reported before the images are read.
    for kind in ("labels", "images"):
        for split in ("train", "test"):
            f = files[split, kind]
            a = read_idx(f)
            if a.shape != headers[split, kind][0]:  # the file changed since its header was read
                raise DataError(f"{f} changed while it was being read; load it again")
            if kind == "labels":
                a = as_labels(a, len(a), len(names) if names else None, f)
            arrays[split, kind] = a
    if prefix.startswith("emnist"):
        # EMNIST's binaries store each image transposed relative to MNIST.
        for split in ("train", "test"):
            arrays[split, "images"] = np.ascontiguousarray(
                arrays[split, "images"].transpose(0, 2, 1))
    if names:
        num_classes = len(names)  # declared by the mapping; as_labels checked the labels
    else:
        num_classes = infer_num_classes(*((arrays[s, "labels"], files[s, "labels"])
                                          for s in ("train", "test")))
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


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip
_DTYPE_KINDS = {"U": "strings", "S": "byte strings", "c": "complex numbers",
                "V": "structured records", "M": "dates", "m": "time spans", "b": "booleans",
                "O": "Python objects"}
_NUMERIC = "uif"
_NUMERIC_ARRAYS = ("images and labels must be integer or floating-point arrays (uint8, "
                   "int8..int64, float16..float64)")
_NPZ_FIX = "store plain numeric arrays: np.savez(path, x_train=..., y_train=...)"


@dataclasses.dataclass(frozen=True)
class _NpyHeader:
    """What an ``.npy`` header declares, and where its data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def _npy_header(fp, where: str, fix: str) -> _NpyHeader:
    """Reads an ``.npy`` header (no data); refuses object (pickled) arrays."""
    try:
        version = np.lib.format.read_magic(fp)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)  # 3.0 differs only in its encoding
        shape, _, dtype = read(fp)
        offset = fp.tell()
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises many types; all mean damage
        raise DataError(f"{where} is not a readable .npy array ({e or type(e).__name__}); "
                        "the file is damaged, save it again") from None
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (pickled arrays, dtype {dtype}); jaxcnn "
                        f"never unpickles data: {fix}")
    if any(d < 0 for d in shape):
        raise DataError(f"{where} declares a negative dimension {tuple(shape)}; the file is "
                        "damaged, save it again")
    return _NpyHeader(tuple(int(d) for d in shape), dtype, offset)


def _check_kind(h: _NpyHeader, where: str, kinds: str, accepted: str) -> None:
    if h.dtype.kind not in kinds:
        what = _DTYPE_KINDS.get(h.dtype.kind, "values of an unsupported type")
        raise DataError(f"{where} has dtype {h.dtype} ({what}); {accepted}")


def _check_holds(h: _NpyHeader, where: str, available: int) -> None:
    if h.nbytes > available:
        raise DataError(
            f"{where} is truncated or damaged: its header declares shape {h.shape} of "
            f"{h.dtype} ({h.nbytes:,} data bytes) but the file holds {max(available, 0):,}; "
            "save or download it again")


def read_npy(path: str) -> np.ndarray:
    """Reads one numeric ``.npy`` array, checking its header before reading its data.

    Refused with :class:`~jaxcnn.errors.DataError`, before anything is
    allocated: an ``.npz`` archive (named by what it is), object arrays (no
    pickle is ever loaded), strings, complex numbers and other non-numeric
    dtypes (the dtype is named), a header declaring more data than the file
    holds, and data above
    :data:`~jaxcnn.data._core.MEMORY_BUDGET_BYTES`.

    Args:
      path: the file.

    Returns:
      The array (integer or floating point).

    Example:
      >>> import tempfile, os
      >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
      >>> np.save(p, np.array(["a", "b"]))
      >>> try:
      ...     read_npy(p)
      ... except DataError as e:
      ...     print(str(e).split("; ")[0].split(" has ")[1])
      dtype <U1 (strings)
      >>> np.save(p, np.arange(3, dtype=np.uint8))
      >>> read_npy(p)
      array([0, 1, 2], dtype=uint8)
    """
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path!r}; give the path of a .npy file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if f.read(4) in _ZIP_MAGICS:
                raise DataError(
                    f"{path} is an .npz archive (several named arrays), not a .npy array; "
                    "save one array with np.save(path, array), or use the archive as a "
                    f"dataset: --dataset npz:{path}")
            f.seek(0)
            h = _npy_header(f, path, "save a numeric array with np.save(path, array)")
            _check_kind(h, path, _NUMERIC, "arrays must hold integers or floating-point "
                        "numbers (uint8, int8..int64, float16..float64)")
            _check_holds(h, path, size - h.offset)
            check_memory(h.nbytes, path)
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path} as a .npy array: {e}; the file is damaged, save "
                        "it again") from None


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

    Every array's header is read first: dtypes (numeric only; object arrays,
    which would need unpickling, strings and complex numbers are refused),
    shapes, counts, and the declared size against the archive member and
    :data:`~jaxcnn.data._core.MEMORY_BUDGET_BYTES`, before any data is read.

    Raises:
      DataError: unreadable or damaged file, a ``.npy`` file or a directory
        given instead, missing keys (the accepted ones are listed), object or
        non-numeric arrays (the dtype is named), empty splits, images and
        labels that do not pair up, data above the memory budget, or labels
        out of range (file, array and index named; see
        :func:`~jaxcnn.data._core.infer_num_classes` when the file has no
        ``class_names``).

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
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory; give the path of a .npz file, e.g. "
                        "--dataset npz:~/.keras/datasets/mnist.npz (a directory of IDX files "
                        f"is --dataset idx:{path})")
    if not os.path.isfile(path):
        raise DataError(f"npz file {path} does not exist; give the path of a .npz file, e.g. "
                        "--dataset npz:~/.keras/datasets/mnist.npz")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check its permissions") from None
    if magic == _NPY_MAGIC:
        raise DataError(f"{path} is a single .npy array, not an .npz archive of named arrays; "
                        "save the dataset with np.savez(path, x_train=..., y_train=..., "
                        "x_test=..., y_test=...)")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable .npz archive (no zip directory: the file "
                        "is damaged, truncated or not .npz); download it again, or save it "
                        "with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        with zipfile.ZipFile(path) as zf:
            return _load_npz_archive(zf, path, validation_fraction, seed, name)
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"{path} holds Python objects (pickled arrays); {_NPZ_FIX}") from None
        raise DataError(f"cannot read {path}: {e}; the file is damaged, save it again") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, RuntimeError) as e:
        # RuntimeError: encrypted members; NotImplementedError (a RuntimeError): unknown
        # compression.
        raise DataError(f"cannot read {path} as an .npz archive ({e}); the file is damaged "
                        "or not an .npz file, save or download it again") from None


def _load_npz_archive(zf: zipfile.ZipFile, path: str, validation_fraction: float, seed: int,
                      name: str | None) -> Dataset:
    archive_size = os.path.getsize(path)
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.filename.endswith(".npy"):
            members.setdefault(info.filename[:-4], info)
    keys = set(members)

    def pair(split):
        for kx, ky in _NPZ_KEYS[split]:
            if kx in keys and ky in keys:
                return kx, ky
        return None

    train, test, val, whole = (pair(s) for s in ("train", "test", "validation", "all"))
    if train is None and whole is None:
        accepted = "; ".join(f"{kx}/{ky}" for s in ("train", "all") for kx, ky in _NPZ_KEYS[s])
        raise DataError(f"{path} has no training arrays (keys: {', '.join(sorted(keys))}); "
                        f"accepted key pairs: {accepted} (with x_test/y_test for a test split)")
    if train is None:
        train = whole

    def header(key: str, kinds: str, accepted: str) -> _NpyHeader:
        info, where = members[key], f"{path} ({key})"
        if info.compress_size > archive_size or (
                info.compress_type == zipfile.ZIP_STORED and info.file_size > info.compress_size
        ) or (info.compress_type == zipfile.ZIP_DEFLATED
              and info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024):
            raise DataError(f"{where}: the zip directory claims {info.file_size:,} bytes from "
                            f"{info.compress_size:,} stored, which the file cannot hold; it is "
                            "damaged, save or download it again")
        with zf.open(info) as fp:
            h = _npy_header(fp, where, _NPZ_FIX)
        _check_kind(h, where, kinds, accepted)
        _check_holds(h, where, info.file_size - h.offset)
        return h

    # Headers first: dtypes, shapes, counts and memory are checked before any data is read.
    splits = [(s, k) for s, k in (("train", train), ("test", test), ("validation", val)) if k]
    needed, counts = 0, {}
    for what, (kx, ky) in splits:
        hx, hy = header(kx, _NUMERIC, _NUMERIC_ARRAYS), header(ky, _NUMERIC, _NUMERIC_ARRAYS)
        if len(hx.shape) not in (3, 4):
            raise DataError(f"{path} ({kx}) must be shaped (N, H, W, C) or (N, H, W); got "
                            f"shape {hx.shape}")
        n_x, n_y = (h.shape[0] if h.shape else 0 for h in (hx, hy))
        if n_x != n_y:
            raise DataError(f"{path}: the {what} split has {n_x:,} images but {n_y:,} labels; "
                            "each image needs exactly one label, save matching arrays")
        counts[ky] = n_x
        if n_x == 0:
            raise DataError(f"{path} ({kx}) holds no images (shape {hx.shape}); every split "
                            "needs at least one image: save the complete arrays")
        # Non-uint8 images become float32 copies (and a finiteness mask); labels, int32.
        needed += hx.nbytes + (0 if hx.dtype == np.uint8 else 5 * hx.count)
        needed += hy.nbytes + 12 * hy.count
    if "class_names" in keys:
        hc = header("class_names", _NUMERIC + "US",
                    "class_names must be a 1-D array of strings (or numbers)")
        if len(hc.shape) != 1 or hc.count > MAX_CLASSES:
            raise DataError(f"{path} (class_names) has shape {hc.shape}; class names are one "
                            f"string per class, at most {MAX_CLASSES:,}")
        needed += hc.nbytes + 64 * hc.count
    check_memory(needed, f"the arrays of {path}")

    def read(key: str) -> np.ndarray:
        with zf.open(members[key]) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)

    names = None
    if "class_names" in keys:
        names = [str(c) for c in read("class_names").tolist()]
    declared = len(names) if names is not None else None
    # Labels first: a bad label is reported before the images are read.
    labels = {}
    for _, (_, ky) in splits:
        labels[ky] = as_labels(read(ky), counts[ky], declared, f"{path} ({ky})")
    num_classes = declared
    if num_classes is None:
        labelled = [(labels[train[1]], f"{path} ({train[1]})")]
        if test is not None:
            labelled.append((labels[test[1]], f"{path} ({test[1]})"))
        num_classes = infer_num_classes(*labelled)
    x_test, y_test = (read(test[0]), labels[test[1]]) if test is not None else (None, None)
    ds = from_arrays(read(train[0]), labels[train[1]], x_test, y_test, num_classes=num_classes,
                     class_names=names,
                     validation_fraction=0.0 if val is not None else validation_fraction,
                     seed=seed, name=name or f"npz:{path}")
    if val is not None:
        xv = as_images(read(val[0]), f"{path} ({val[0]})")
        if xv.shape[1:] != ds.image_shape:
            raise DataError(f"{path}: validation images are {xv.shape[1:]} but training images "
                            f"are {ds.image_shape}")
        ds = dataclasses.replace(ds, validation=Split(
            xv.astype(ds.train.images.dtype),
            as_labels(labels[val[1]], len(xv), ds.num_classes, f"{path} ({val[1]})")))
    return ds
