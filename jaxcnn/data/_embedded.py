"""The embedded datasets (work offline): scikit-learn's 8x8 handwritten digits, and the
same digits upsampled to 28x28 (``digits28``)."""

from __future__ import annotations

import os

import numpy as np

from jaxcnn.data._core import Dataset, from_arrays


# The digits ship inside the package (47 KB): reading them takes milliseconds, where
# importing scikit-learn to load its copy took about 3 s of every `jaxcnn train`.
DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")


def load_digits(validation_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """The embedded default: the 1,797 8x8 handwritten digits of scikit-learn.

    They are the UCI "Optical Recognition of Handwritten Digits" test set as
    scikit-learn ships it (``sklearn.datasets.load_digits``), split as
    ``train_test_split(test_size=0.2, stratify=labels, random_state=0)``
    splits them: 1,437 train and 360 test images, stored in
    ``jaxcnn/data/digits.npz`` (raw pixels 0..16) so that no other package is
    needed; ``tests/test_data.py`` checks the file against scikit-learn's copy
    and split. Returned as float32 in [0, 1], shape 8x8x1.

    Args:
      validation_fraction: stratified fraction of train held out for validation.
      seed: seed of that validation split (the test split is always the same).

    Returns:
      A :class:`Dataset` named ``digits``.

    Example:
      >>> ds = load_digits()
      >>> ds.train.images.dtype, float(ds.train.images.max()), len(ds.train), len(ds.test)
      (dtype('float32'), 1.0, 1437, 360)
    """
    with np.load(DIGITS_FILE) as f:
        arrays = {k: f[k] for k in f.files}

    def images(name):
        return (arrays[name] / 16.0).astype(np.float32)[..., None]

    return from_arrays(images("train_images"), arrays["train_labels"].astype(np.int32),
                       images("test_images"), arrays["test_labels"].astype(np.int32),
                       num_classes=10, validation_fraction=validation_fraction, seed=seed,
                       name="digits")


DIGITS28_SIDE = 28


def upsample_bilinear(images: np.ndarray, side: int = DIGITS28_SIDE) -> np.ndarray:
    """Resizes float images in [0, 1] (N, H, W, 1) to ``side`` x ``side``, bilinear (Pillow).

    Each image is resized as a float32 ("F" mode) Pillow image with
    ``Image.BILINEAR``, then clipped to [0, 1].

    Example:
      >>> upsample_bilinear(np.ones((2, 8, 8, 1), np.float32)).shape
      (2, 28, 28, 1)
    """
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((side, side), Image.BILINEAR))
                     for im in images])[..., None].clip(0.0, 1.0).astype(np.float32)


def load_digits28(validation_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """The embedded digits upsampled from 8x8 to 28x28 (bilinear): a stand-in, NOT MNIST.

    :func:`load_digits` with every image resized to 28x28 by
    :func:`upsample_bilinear`: the same 1,437 train and 360 test images and
    labels, float32 in [0, 1], shape 28x28x1. It is the input size of the
    models written for MNIST (``keras_convnet`` needs at least 10x10), so they
    run offline; the images hold no more detail than the 8x8 originals, and
    there are 1,437 of them instead of MNIST's 60,000, so accuracies are not
    comparable with MNIST's.

    Args:
      validation_fraction: stratified fraction of train held out for validation.
      seed: seed of that validation split (the test split is always the same).

    Returns:
      A :class:`Dataset` named ``digits28``.

    Example:
      >>> ds = load_digits28()
      >>> ds.image_shape, ds.train.images.dtype, len(ds.train), len(ds.test)
      ((28, 28, 1), dtype('float32'), 1437, 360)
    """
    ds = load_digits()
    return from_arrays(upsample_bilinear(ds.train.images), ds.train.labels,
                       upsample_bilinear(ds.test.images), ds.test.labels, num_classes=10,
                       validation_fraction=validation_fraction, seed=seed, name="digits28")
