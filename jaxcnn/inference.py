"""Prediction on files with a trained run: what ``jaxcnn predict`` does.

:func:`read_inputs` turns PNG/JPEG images or ``.npy`` arrays into a batch
shaped and typed like the run's training images; :func:`predict_files`
restores a checkpoint (as host NumPy arrays, so any machine can serve it),
applies the stored preprocessing and returns the top-k classes.

Input files are untrusted: images are decoded only as PNG or JPEG, whatever
their suffix, and within a pixel limit; ``.npy`` files are checked (header,
size, dtype, values) before their data is used. Anything else is refused
with a :class:`~jaxcnn.errors.DataError` naming the file.

Example:
  >>> import numpy as np
  >>> top_k(np.array([[0.1, 0.7, 0.2]]), 2, ["a", "b", "c"])
  [[('b', 1, 0.7), ('c', 2, 0.2)]]
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from jaxcnn.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# The only image formats decoded, whatever the file's suffix: Pillow knows many
# more (EPS among them, which runs Ghostscript), none of which predict needs.
IMAGE_FORMATS = ("PNG", "JPEG")

# Images with more pixels than this are refused before they are decoded (Pillow's
# own decompression-bomb warning threshold, also applied when Pillow's is off).
MAX_IMAGE_PIXELS = 89_478_485

_NPY_MAGIC = b"\x93NUMPY"


def read_inputs(paths: Sequence[str], image_shape: Sequence[int],
                stored_as_uint8: bool) -> tuple[np.ndarray, list[str]]:
    """Reads images or arrays into one ``(N, H, W, C)`` batch for a model.

    Images are decoded as PNG or JPEG only, whatever their suffix (a file in
    any other format is refused, not handed to another decoder), and images
    of more than :data:`MAX_IMAGE_PIXELS` pixels are refused before they are
    decoded. They are converted to the model's channel count (grayscale or
    RGB) and resized to its input size when they differ; they are kept as
    uint8 when the training images were uint8, and scaled to [0, 1] floats
    otherwise, so the stored preprocessing applies unchanged.

    ``.npy`` files hold one image ``(H, W)``/``(H, W, C)`` or a batch
    ``(N, H, W[, C])`` whose shape must match; the header is checked (shape,
    dtype, size against the file's) before any data is read, and pickled
    arrays are refused. The values must be real numbers, converted by these
    rules:

    * bool, integer and float dtypes only; complex, text, object, structured
      and date arrays are refused. Bool arrays count as integers 0 and 1.
    * Float arrays must be finite (no NaN or Inf).
    * For a model trained on uint8 images: integer arrays are pixel values
      and must lie within 0..255; float arrays are taken as [0, 1] (scaled
      by 255) when their maximum is at most 1, else as [0, 255], rounded to
      the nearest integer, which must lie within 0..255.
    * For a model trained on float images: uint8 arrays are scaled to
      [0, 1]; other arrays are taken as they are, and must stay finite as
      float32.

    A value outside these rules is refused with its index, never wrapped or
    clipped.

    Args:
      paths: files to read.
      image_shape: ``(H, W, C)`` of the training images.
      stored_as_uint8: whether the training images were uint8 in [0, 255].

    Returns:
      ``(batch, names)``: the images and one name per image (the file name,
      with ``[i]`` for rows of a batch file).

    Raises:
      DataError: a missing or unreadable file, an unknown suffix, an image
        that is not PNG or JPEG or is too large, or an array whose shape,
        dtype or values do not fit; the message names the file.

    Example:
      >>> import tempfile
      >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
      >>> np.save(p, np.zeros((8, 8), np.float32))
      >>> batch, names = read_inputs([p], (8, 8, 1), stored_as_uint8=False)
      >>> batch.shape, names
      ((1, 8, 8, 1), ['x.npy'])
      >>> np.save(p, np.full((8, 8), -7))
      >>> read_inputs([p], (8, 8, 1), stored_as_uint8=True)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxcnn.errors.DataError: ...x.npy' holds -7 at index (0, 0) ...within 0..255
    """
    h, w, c = (int(v) for v in image_shape)
    images, names = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"no such file: {path!r}; pass PNG/JPEG images or .npy arrays")
        suffix = os.path.splitext(path)[1].lower()
        base = os.path.basename(path)
        if suffix in IMAGE_SUFFIXES:
            images.append(_read_image(path, h, w, c, stored_as_uint8))
            names.append(base)
        elif suffix == ".npy":
            x = _read_npy(path, h, w, c)
            x = _to_stored_range(x, stored_as_uint8, path)
            if x.ndim in (2, 3) and x.shape[:2] == (h, w):
                x = x[None]
            if x.ndim == 3 and c == 1:
                x = x[..., None]
            images.extend(x)
            names.extend([base] if len(x) == 1 else [f"{base}[{i}]" for i in range(len(x))])
        else:
            raise DataError(f"cannot read {path!r}: use a .png, .jpg, .jpeg or .npy file")
    if not images:
        raise DataError("no input files given; pass PNG/JPEG images or .npy arrays")
    dtype = np.uint8 if stored_as_uint8 else np.float32
    return np.stack([np.asarray(x).astype(dtype, copy=False) for x in images]), names


def _npy_batch_shape(shape: tuple[int, ...], h: int, w: int, c: int) -> tuple[int, ...] | None:
    """The ``(N, H, W, C)`` an array of ``shape`` becomes, or None if it does not fit."""
    if len(shape) in (2, 3) and shape[:2] == (h, w):
        shape = (1, *shape)
    if len(shape) == 3 and c == 1:
        shape = (*shape, 1)
    return shape if len(shape) == 4 and shape[1:] == (h, w, c) else None


def _read_npy(path: str, h: int, w: int, c: int) -> np.ndarray:
    """A ``.npy`` array, its header checked before any data is read."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                f.seek(0)
                kind = ("an .npz archive or other zip file" if f.read(4) == b"PK\x03\x04"
                        else "not a .npy file")
                raise DataError(f"cannot read {path!r} as a .npy array: it is {kind}; "
                                "pass an array saved with numpy.save")
            f.seek(0)
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise DataError(f"cannot read {path!r} as a .npy array: format version "
                                f"{version[0]}.{version[1]} holds no plain numeric array; "
                                "pass an array saved with numpy.save")
            offset = f.tell()
            shape = tuple(int(v) for v in shape)
            _check_npy_dtype(path, dtype)
            if any(v < 0 for v in shape) or _npy_batch_shape(shape, h, w, c) is None:
                raise DataError(f"{path!r} holds an array of shape {shape}; the model takes "
                                f"images shaped ({h}, {w}, {c}) or batches (N, {h}, {w}, {c})")
            count = 1
            for v in shape:
                count *= v
            if count == 0:
                raise DataError(f"{path!r} holds no images (shape {shape}); pass at least one")
            size = os.fstat(f.fileno()).st_size
            if offset + count * dtype.itemsize > size:
                raise DataError(f"{path!r} is truncated: its header declares shape {shape} of "
                                f"{dtype} ({count * dtype.itemsize:,} bytes of data) but the "
                                f"file holds {max(size - offset, 0):,}; save it again")
            f.seek(0)
            return fmt.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, OverflowError) as e:
        raise DataError(f"cannot read {path!r} as a .npy array: {e}") from None


def _check_npy_dtype(path: str, dtype: np.dtype) -> None:
    if dtype.kind in "biuf" and dtype.fields is None and not dtype.subdtype:
        return
    if dtype.kind == "c":
        what = "complex values"
    elif dtype.kind in "USa":
        what = "text"
    elif dtype.kind == "O":
        what = "Python objects (pickled)"
    elif dtype.kind in "mM":
        what = "dates or times"
    else:
        what = "structured records"
    raise DataError(f"{path!r} holds {what} (dtype {dtype.str}); predict takes real-valued "
                    "images: integer pixel values 0..255 or floats")


def _first_bad(path: str, x: np.ndarray, bad: np.ndarray, rule: str) -> DataError:
    """A DataError naming the first value where ``bad`` is true, its index and ``rule``."""
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    value = x[index].item()
    count = int(np.count_nonzero(bad))
    more = f" (and {count - 1:,} more)" if count > 1 else ""
    return DataError(f"{path!r} holds {value!r} at index {index}{more}: {rule}")


def _to_stored_range(x: np.ndarray, as_uint8: bool, path: str = "the array") -> np.ndarray:
    """``x`` in the range and type the model's training images had, by the rules of
    :func:`read_inputs`; values outside them raise :class:`DataError`."""
    if x.dtype.kind == "b":
        x = x.astype(np.int8)  # 0 and 1, as integers (not uint8 pixels: no scaling)
    if x.dtype.kind in "iu":
        if as_uint8:
            if x.dtype != np.uint8:
                bad = (x < 0) | (x > 255)
                if bad.any():
                    raise _first_bad(path, x, bad, "a model trained on uint8 images takes "
                                     "integer pixel values within 0..255")
                x = x.astype(np.uint8)
            return x
        if x.dtype == np.uint8:
            return x.astype(np.float32) / 255.0
        return x.astype(np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        raise _first_bad(path, x, ~finite, "predict takes finite values only (no NaN or Inf)")
    if as_uint8:
        scale = 255.0 if x.size and float(np.max(x)) <= 1.0 else 1.0
        r = np.round(x * scale)
        bad = ~((r >= 0) & (r <= 255))
        if bad.any():
            raise _first_bad(path, x, bad, "a model trained on uint8 images takes floats "
                             "within [0, 1] or [0, 255] (rounded)")
        return r.astype(np.uint8)
    with np.errstate(over="ignore"):
        y = x.astype(np.float32)
    finite = np.isfinite(y)
    if not finite.all():
        raise _first_bad(path, x, ~finite, "the value is too large for float32")
    return y


def _read_image(path: str, h: int, w: int, c: int, as_uint8: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if c not in (1, 3):
        raise DataError(f"the model takes {c}-channel images; image files give 1 or 3 "
                        "channels: pass a .npy array instead")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and goes on decoding) above its pixel limit: refuse instead.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=list(IMAGE_FORMATS)) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:  # also when Pillow's limit is off
                    raise Image.DecompressionBombError(
                        f"Image size ({width * height} pixels) exceeds limit of "
                        f"{MAX_IMAGE_PIXELS} pixels")
                img = img.convert("L" if c == 1 else "RGB")
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                x = np.asarray(img, np.uint8)
    except UnidentifiedImageError:
        raise DataError(f"cannot read the image {path!r}: it is not a PNG or JPEG image "
                        "(or it is damaged); predict decodes PNG and JPEG only, whatever the "
                        "suffix (or pass a .npy array)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"refusing the image {path!r}: it is too large to decode safely "
                        f"({e}); resize it to the model's {w} x {h} first") from None
    # Pillow's decoders raise a variety of errors on damaged files (OSError for a
    # truncated one, ValueError, SyntaxError, struct.error, zlib.error, ...): all mean
    # the same thing here.
    except Exception as e:  # noqa: BLE001
        reason = str(e) or type(e).__name__
        raise DataError(f"cannot read the image {path!r}: {reason}; pass an intact PNG or "
                        "JPEG image") from None
    x = x.reshape(h, w, c)
    return x if as_uint8 else x.astype(np.float32) / 255.0


def top_k(probabilities: np.ndarray, k: int, class_names: Sequence[str]):
    """The ``k`` most probable classes of each row: ``[(name, index, probability), ...]``.

    Example:
      >>> top_k(np.array([[0.2, 0.8]]), 1, ["cat", "dog"])
      [[('dog', 1, 0.8)]]
    """
    k = max(1, min(int(k), probabilities.shape[-1]))
    out = []
    for row in np.asarray(probabilities):
        order = np.argsort(-row, kind="stable")[:k]
        out.append([(str(class_names[i]) if i < len(class_names) else str(i), int(i),
                     float(row[i])) for i in order])
    return out


def predict_files(workdir: str, paths: Sequence[str], *, which="best", k: int = 5) -> dict:
    """Top-k predictions of a trained run for image or ``.npy`` files.

    Args:
      workdir: the run directory.
      paths: PNG/JPEG or ``.npy`` files.
      which: the checkpoint: ``"best"``, ``"latest"`` or a step.
      k: how many classes per input.

    Returns:
      ``{"step", "checkpoint", "predictions": [{"input", "top_k": [{"class",
      "index", "probability"}]}]}``.

    Example:
      >>> import tempfile
      >>> from jaxcnn.config import Config, override
      >>> from jaxcnn.run import train_and_evaluate
      >>> d = tempfile.mkdtemp()
      >>> cfg = override(Config(), {"train.epochs": 1, "train.num_devices": 1})
      >>> _ = train_and_evaluate(cfg, d, progress=False)
      >>> p = os.path.join(d, "x.npy"); np.save(p, np.zeros((8, 8), np.float32))
      >>> len(predict_files(d, [p], k=3)["predictions"][0]["top_k"])
      3
    """
    from jaxcnn.checkpoint import load
    from jaxcnn.training import predict

    restored = load(workdir, which, sharding="numpy")
    uint8 = abs(restored.preprocess.scale - 1.0 / 255.0) < 1e-12
    batch, names = read_inputs(paths, restored.image_shape, uint8)
    probs = predict(restored.state, batch, restored.preprocess)
    rows = top_k(probs, k, restored.class_names)
    return {
        "step": restored.step,
        "checkpoint": restored.path,
        "predictions": [
            {"input": name, "top_k": [{"class": c, "index": i, "probability": p} for c, i, p in row]}
            for name, row in zip(names, rows)
        ],
    }


__all__ = [
    "IMAGE_FORMATS", "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "predict_files", "read_inputs", "top_k",
]
