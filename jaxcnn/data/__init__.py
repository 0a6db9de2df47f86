"""Datasets and the input pipeline: core types, sources, the registry, feeding the device.

A :class:`Dataset` holds NumPy arrays (images NHWC, integer labels) and the
metadata that the model needs (image shape, number of classes, class names).
Images are ``uint8`` in [0, 255] or floating point in [0, 1]; the
:class:`Preprocess` computed from the training split turns them into the
standardised float32 the model sees, identically at train, eval and predict
time.

Names understood by :func:`load_dataset`:

* ``digits``: the 1,797 8x8 handwritten digits that scikit-learn ships (works
  offline). Split: stratified 80/20 with ``random_state=0`` (1,437 train,
  360 test), pixels scaled from [0, 16] to [0, 1].
* ``digits28``: the same digits upsampled from 8x8 to 28x28 (bilinear), the
  input size of models written for MNIST, offline. A stand-in, not MNIST
  (see :func:`load_digits28`).
* ``synthetic:HxWxC:K`` (optionally ``:N`` train examples): random images and
  labels, for benchmarks and tests.
* ``mnist``, ``fashion_mnist``, ``kmnist``, ``emnist``, ``cifar10``,
  ``cifar100``, ``svhn_cropped``, and any other tensorflow-datasets
  image-classification name (also as ``tfds:NAME``): prepared tfds data read
  without TensorFlow (see :func:`load_tfds`); ``data_dir`` or
  ``TFDS_DATA_DIR`` says where it is. tfds is imported on first use only.
* ``idx:DIR`` (MNIST-format IDX files) and ``npz:FILE`` (NumPy archives): local
  files, no tfds needed (see :func:`load_idx` and :func:`load_npz`).

Your own arrays become a dataset with :func:`from_arrays`.

Limits: every source checks what a file header or a name declares before
allocating: a dataset may take at most :data:`MEMORY_BUDGET_BYTES` of host
memory (half the physical memory, at most 256 GiB;
``JAXCNN_DATA_MEMORY_BUDGET=BYTES`` overrides it) and have at most
:data:`MAX_CLASSES` classes. Labels are checked against the class count the
data declares, or, without one, against the rule of :func:`infer_num_classes`.
Bad data raises :class:`~jaxcnn.errors.DataError` naming the file and the
offending value.

The input pipeline (:func:`choose_pipeline`, :class:`Prefetcher`,
:func:`augment_batch`) feeds a training split to the device: all of it on the
device at once, or streamed batch by batch from the host, with keyed
augmentation inside the compiled step.

Example:
  >>> ds = load_dataset("digits")
  >>> ds.image_shape, ds.num_classes, len(ds.train), len(ds.test)
  ((8, 8, 1), 10, 1437, 360)
"""

from jaxcnn.data._core import (MAX_CLASSES, MEMORY_BUDGET_BYTES, Dataset, Preprocess, Split,
                               UnknownDatasetError, as_images, check_memory, from_arrays,
                               infer_num_classes)
from jaxcnn.data._embedded import load_digits, load_digits28
from jaxcnn.data._files import (find_idx_files, idx_header, load_idx, load_npz, read_idx,
                                read_npy, write_idx)
from jaxcnn.data._pipeline import (Augment, Prefetcher, augment_batch, augment_key,
                                   choose_pipeline, default_augment, device_memory_budget,
                                   fit_options, resolve_augment, shape_augment)
from jaxcnn.data._registry import DEFAULT_DATASET, load_dataset
from jaxcnn.data._synthetic import load_synthetic
from jaxcnn.data._tfds import (SourceImages, default_data_dir, list_prepared, load_tfds,
                               prepare_tfds)

__all__ = [
    # core types and your own arrays
    "Dataset", "Preprocess", "Split", "UnknownDatasetError", "as_images", "from_arrays",
    # limits on what data may declare
    "MAX_CLASSES", "MEMORY_BUDGET_BYTES", "check_memory", "infer_num_classes",
    # the registry and its sources
    "DEFAULT_DATASET", "load_dataset", "load_digits", "load_digits28", "load_synthetic",
    "find_idx_files", "idx_header", "load_idx", "load_npz", "read_idx", "read_npy", "write_idx",
    "SourceImages", "default_data_dir", "list_prepared", "load_tfds", "prepare_tfds",
    # the input pipeline
    "Augment", "Prefetcher", "augment_batch", "augment_key", "choose_pipeline",
    "default_augment", "device_memory_budget", "fit_options", "resolve_augment",
    "shape_augment",
]
