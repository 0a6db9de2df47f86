"""Synthetic data: random images and labels of any shape, for benchmarks and tests."""

from __future__ import annotations

import numpy as np

from jaxcnn.data._core import MAX_CLASSES, Dataset, check_memory, from_arrays
from jaxcnn.errors import DataError


def load_synthetic(spec: str, validation_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """Random uint8 images and labels: ``synthetic:HxWxC:K[:N]``.

    ``N`` training examples (default 2,048) and N/4 test examples. The labels
    carry no signal; use it to measure speed, not accuracy. Sizes beyond
    :data:`~jaxcnn.data._core.MEMORY_BUDGET_BYTES`, or more than
    :data:`~jaxcnn.data._core.MAX_CLASSES` classes, are refused before
    anything is allocated.

    Example:
      >>> ds = load_synthetic("synthetic:28x28x1:10:256")
      >>> ds.image_shape, ds.num_classes, len(ds.train)
      ((28, 28, 1), 10, 256)
    """
    parts = spec.split(":")
    try:
        if parts[0] != "synthetic" or len(parts) not in (3, 4):
            raise ValueError
        h, w, c = (int(v) for v in parts[1].lower().split("x"))
        k = int(parts[2])
        n = int(parts[3]) if len(parts) == 4 else 2048
        if min(h, w, c, n) < 1 or k < 2:
            raise ValueError
    except ValueError:
        raise DataError(
            f"bad synthetic dataset {spec!r}; write synthetic:HxWxC:K or synthetic:HxWxC:K:N, "
            "e.g. synthetic:32x32x3:10"
        ) from None
    if k > MAX_CLASSES:
        raise DataError(f"synthetic dataset {spec!r} asks for {k:,} classes; at most "
                        f"{MAX_CLASSES:,} are accepted")
    n_test = max(n // 4, 1)
    # uint8 pixels, plus the labels (drawn as int64, kept as int32), checked before drawing.
    check_memory((n + n_test) * (h * w * c + 12),
                 f"synthetic dataset {spec!r} ({n + n_test:,} images of {h}x{w}x{c})")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n + n_test, h, w, c), dtype=np.uint8)
    y = rng.integers(0, k, n + n_test).astype(np.int32)
    return from_arrays(x[:n], y[:n], x[n:], y[n:], num_classes=k,
                       validation_fraction=validation_fraction, seed=seed, name=spec)
