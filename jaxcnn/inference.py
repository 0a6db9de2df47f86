"""Prediction on files with a trained run: what ``jaxcnn predict`` does.

:func:`read_inputs` turns PNG/JPEG images or ``.npy`` arrays into a batch
shaped and typed like the run's training images; :func:`predict_files`
restores a checkpoint (as host NumPy arrays, so any machine can serve it),
applies the stored preprocessing and returns the top-k classes.

Example:
  >>> import numpy as np
  >>> top_k(np.array([[0.1, 0.7, 0.2]]), 2, ["a", "b", "c"])
  [[('b', 1, 0.7), ('c', 2, 0.2)]]
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jaxcnn.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_inputs(paths: Sequence[str], image_shape: Sequence[int],
                stored_as_uint8: bool) -> tuple[np.ndarray, list[str]]:
    """Reads images or arrays into one ``(N, H, W, C)`` batch for a model.

    Images (PNG/JPEG) are converted to the model's channel count (grayscale
    or RGB) and resized to its input size when they differ; they are kept as
    uint8 when the training images were uint8, and scaled to [0, 1] floats
    otherwise, so the stored preprocessing applies unchanged. ``.npy`` files
    hold one image ``(H, W)``/``(H, W, C)`` or a batch ``(N, H, W[, C])``
    whose shape must match; uint8 arrays are taken as [0, 255] and float
    arrays as [0, 1] (or [0, 255] when their maximum is above 1).

    Args:
      paths: files to read.
      image_shape: ``(H, W, C)`` of the training images.
      stored_as_uint8: whether the training images were uint8 in [0, 255].

    Returns:
      ``(batch, names)``: the images and one name per image (the file name,
      with ``[i]`` for rows of a batch file).

    Raises:
      DataError: a missing or unreadable file, an unknown suffix, or an
        array whose shape does not fit.

    Example:
      >>> import tempfile
      >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
      >>> np.save(p, np.zeros((8, 8), np.float32))
      >>> batch, names = read_inputs([p], (8, 8, 1), stored_as_uint8=False)
      >>> batch.shape, names
      ((1, 8, 8, 1), ['x.npy'])
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
            try:
                x = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read {path!r} as a .npy array: {e}") from None
            if x.ndim in (2, 3) and x.shape[:2] == (h, w):
                x = x[None]
            if x.ndim == 3 and c == 1:
                x = x[..., None]
            if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
                raise DataError(f"{path!r} holds an array of shape {x.shape}; the model takes "
                                f"images shaped ({h}, {w}, {c}) or batches (N, {h}, {w}, {c})")
            images.extend(_to_stored_range(x, stored_as_uint8))
            names.extend([base] if len(x) == 1 else [f"{base}[{i}]" for i in range(len(x))])
        else:
            raise DataError(f"cannot read {path!r}: use a .png, .jpg, .jpeg or .npy file")
    if not images:
        raise DataError("no input files given; pass PNG/JPEG images or .npy arrays")
    dtype = np.uint8 if stored_as_uint8 else np.float32
    return np.stack([np.asarray(x).astype(dtype, copy=False) for x in images]), names


def _to_stored_range(x: np.ndarray, as_uint8: bool) -> np.ndarray:
    """uint8 arrays for a model trained on [0, 1] floats and the reverse, so the stored
    preprocessing applies unchanged; other arrays are taken as they are."""
    if not as_uint8 and x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if as_uint8 and np.issubdtype(x.dtype, np.floating):
        scale = 255.0 if x.size and float(np.nanmax(x)) <= 1.0 else 1.0
        return np.clip(np.round(x * scale), 0, 255).astype(np.uint8)
    return x


def _read_image(path: str, h: int, w: int, c: int, as_uint8: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            x = np.asarray(img, np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read the image {path!r}: {e}") from None
    if c not in (1, 3):
        raise DataError(f"the model takes {c}-channel images; image files give 1 or 3 "
                        "channels: pass a .npy array instead")
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
    "IMAGE_SUFFIXES", "predict_files", "read_inputs", "top_k",
]
