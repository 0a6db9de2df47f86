"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (works offline)."""

from __future__ import annotations

import numpy as np

from jaxcnn.data._core import Dataset, from_arrays


def load_digits(validation_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """The embedded default: scikit-learn's 1,797 8x8 handwritten digits.

    A fixed stratified 80/20 split (``random_state=0``): 1,437 train and 360
    test images, float32 in [0, 1] (the raw pixels are 0..16), shape 8x8x1.

    Args:
      validation_fraction: stratified fraction of train held out for validation.
      seed: seed of that validation split (the test split is always the same).

    Returns:
      A :class:`Dataset` named ``digits``.

    Example:
      >>> ds = load_digits()
      >>> ds.train.images.dtype, float(ds.train.images.max())
      (dtype('float32'), 1.0)
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )
    return from_arrays(x_train, y_train, x_test, y_test, num_classes=10,
                       validation_fraction=validation_fraction, seed=seed, name="digits")
