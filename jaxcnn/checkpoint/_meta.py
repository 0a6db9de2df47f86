"""Checks on the metadata stored with a checkpoint, before anything is built from it.

The metadata is JSON beside the arrays: an edited or damaged file could ask
for an image shape of terabytes, a zero standard deviation (NaN predictions)
or class names that are not text. :func:`check_meta` refuses such values with
a :class:`~jaxcnn.checkpoint.CheckpointError` naming the field.
"""

from __future__ import annotations

import math
from typing import Mapping

from jaxcnn.checkpoint._store import Checkpoints, damaged_error
from jaxcnn.checkpoint._workdir import MAX_STEP

# Sane bounds for what a checkpoint may describe.
MAX_SIDE = 65_536                # pixels along one image side, or channels
MAX_IMAGE_ELEMENTS = 2**28       # H * W * C of one image (1 GiB as float32)
MAX_CLASSES = 2**20
MAX_NAME_CHARS = 1_000           # a class or dataset name
MIN_STD, MAX_ABS_STAT = 1e-6, 1e6  # Preprocess.fit never stores a std below 1e-6


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def meta_problem(meta: Mapping) -> str | None:
    """The first field of a checkpoint's metadata that is out of bounds, as a sentence;
    None when all present fields are sane (missing ones are not checked here).

    Example:
      >>> meta_problem({"dataset": {"image_shape": [8, 8, 1], "num_classes": 10}})
      >>> meta_problem({"preprocess": {"scale": 1.0, "mean": [0.0], "std": [0.0]}})
      'preprocess.std[0] = 0.0 (must be a finite number from 1e-06 to 1000000.0)'
      >>> meta_problem({"dataset": {"image_shape": [100000, 100000, 3]}})
      'dataset.image_shape = [100000, 100000, 3] (must be 3 whole numbers from 1 to 65536)'
    """
    dataset = meta.get("dataset")
    channels = None
    if dataset is not None:
        if not isinstance(dataset, Mapping):
            return "dataset is not a JSON object"
        shape = dataset.get("image_shape")
        if shape is not None:
            if (not isinstance(shape, list) or len(shape) != 3
                    or not all(_is_int(v) and 1 <= v <= MAX_SIDE for v in shape)):
                return (f"dataset.image_shape = {_short(shape)} (must be 3 whole numbers from 1 "
                        f"to {MAX_SIDE})")
            if math.prod(shape) > MAX_IMAGE_ELEMENTS:
                return (f"dataset.image_shape = {shape} ({math.prod(shape):,} values per image; "
                        f"at most {MAX_IMAGE_ELEMENTS:,})")
            channels = shape[2]
        k = dataset.get("num_classes")
        if k is not None and not (_is_int(k) and 1 <= k <= MAX_CLASSES):
            return f"dataset.num_classes = {_short(k)} (must be a whole number from 1 to {MAX_CLASSES})"
        names = dataset.get("class_names")
        if names is not None:
            if not isinstance(names, list):
                return f"dataset.class_names is a {type(names).__name__}, not a list of names"
            if names and _is_int(k) and len(names) != k:
                return f"dataset.class_names has {len(names)} names for {k} classes"
            for i, name in enumerate(names):
                if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
                    return (f"dataset.class_names[{i}] is not a name (text of at most "
                            f"{MAX_NAME_CHARS} characters)")
        name = dataset.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
            return f"dataset.name is not a name (text of at most {MAX_NAME_CHARS} characters)"
    pre = meta.get("preprocess")
    if pre is not None:
        if not isinstance(pre, Mapping):
            return "preprocess is not a JSON object"
        scale = pre.get("scale")
        if not (_is_number(scale) and 0 < scale <= MAX_ABS_STAT):
            return f"preprocess.scale = {_short(scale)} (must be a finite number above 0)"
        for field, low in (("mean", -MAX_ABS_STAT), ("std", MIN_STD)):
            values = pre.get(field)
            if not isinstance(values, list) or not values:
                return f"preprocess.{field} = {_short(values)} (must be a list of numbers)"
            if channels is not None and len(values) not in (1, channels):
                return (f"preprocess.{field} has {len(values)} values for {channels} "
                        "channel(s)")
            for i, v in enumerate(values):
                if not (_is_number(v) and low <= v <= MAX_ABS_STAT):
                    return (f"preprocess.{field}[{i}] = {_short(v)} (must be a finite number "
                            f"from {low} to {MAX_ABS_STAT})")
    spe = meta.get("steps_per_epoch")
    if spe is not None and not (_is_int(spe) and 1 <= spe <= MAX_STEP):
        return f"steps_per_epoch = {_short(spe)} (must be a whole number from 1 to {MAX_STEP})"
    return None


def check_meta(checkpoints: Checkpoints, step: int, meta: Mapping) -> None:
    """Raises :class:`~jaxcnn.checkpoint.CheckpointError` naming the first field of
    ``meta`` that is out of bounds (see :func:`meta_problem`), the step and what to do.

    Example:
      >>> import tempfile
      >>> with Checkpoints(tempfile.mkdtemp()) as c:
      ...     check_meta(c, 1, {"dataset": {"num_classes": 10}})
    """
    problem = meta_problem(meta)
    if problem:
        raise damaged_error(checkpoints, step, f"its stored metadata has {problem}")


def _short(value) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too large to show"
    return text if len(text) <= 80 else text[:77] + "..."
