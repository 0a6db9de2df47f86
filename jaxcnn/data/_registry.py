"""The registry: dataset names, the source that loads each, and :func:`load_dataset`.

Each :class:`_Source` says which names it claims (exact names, or a
``PREFIX:`` followed by a spec) and loads them. A bare name that no source
claims is tried as a tensorflow-datasets name; tfds raising
:class:`UnknownDatasetError` means no source knows it, and the error lists the
known names.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import Callable

from jaxcnn.data._core import Dataset, UnknownDatasetError
from jaxcnn.data._embedded import load_digits, load_digits28
from jaxcnn.data._files import load_idx, load_npz
from jaxcnn.data._synthetic import load_synthetic
from jaxcnn.data._tfds import load_tfds
from jaxcnn.errors import DataError, did_you_mean

DEFAULT_DATASET = "digits"

# Image-classification datasets known to work by their bare tfds name; any
# other tfds dataset with one image and one class-label feature loads too.
TFDS_NAMES = ("mnist", "fashion_mnist", "kmnist", "emnist", "cifar10", "cifar100",
              "svhn_cropped")
# Bare names that no source claims are tried as tfds names when they look like one.
_TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[\w.-]+)?(:[\d.*]+)?")

# load(name, validation_fraction=..., seed=..., data_dir=..., splits=...) -> Dataset
Loader = Callable[..., Dataset]


def _check_default_splits(name: str, splits: dict | None) -> None:
    """Refuses split names for datasets whose splits are fixed (all but tfds ones).

    Example:
      >>> _check_default_splits("digits", {"train": "train", "test": None})
    """
    defaults = {"train": "train", "validation": None, "test": "test"}
    custom = {k: v for k, v in (splits or {}).items() if v is not None and v != defaults.get(k)}
    if custom:
        raise DataError(
            f"dataset {name!r} has fixed splits; split selection "
            f"({', '.join(f'data.{k}_split={v}' for k, v in custom.items())}) applies to "
            "tensorflow-datasets names only; remove it, or use data.validation_fraction")


@dataclasses.dataclass(frozen=True)
class _Source:
    """One kind of dataset name and the loader of its datasets.

    Attributes:
      load: ``load(name, validation_fraction=, seed=, data_dir=, splits=)``.
      names: the exact names it claims.
      prefix: it also claims every ``PREFIX:SPEC`` name.
    """

    load: Loader
    names: tuple[str, ...] = ()
    prefix: str | None = None

    def claims(self, name: str) -> bool:
        """Whether ``name`` is one of this source's datasets.

        Example:
          >>> _Source(load_synthetic, prefix="synthetic").claims("synthetic:8x8x1:2")
          True
        """
        return name in self.names or (self.prefix is not None
                                      and name.startswith(self.prefix + ":"))


def _spec(name: str) -> str:
    return name.split(":", 1)[1]


def _tfds(name, *, validation_fraction, seed, data_dir, splits):
    return load_tfds(name, validation_fraction=validation_fraction, seed=seed,
                     data_dir=data_dir, splits=splits)


def _digits(name, *, validation_fraction, seed, data_dir, splits):
    _check_default_splits(name, splits)
    return load_digits(validation_fraction, seed)


def _digits28(name, *, validation_fraction, seed, data_dir, splits):
    _check_default_splits(name, splits)
    return load_digits28(validation_fraction, seed)


def _synthetic(name, *, validation_fraction, seed, data_dir, splits):
    _check_default_splits(name, splits)
    return load_synthetic(name, validation_fraction, seed)


def _idx(name, *, validation_fraction, seed, data_dir, splits):
    _check_default_splits(name, splits)
    return load_idx(_spec(name), validation_fraction=validation_fraction, seed=seed, name=name)


def _npz(name, *, validation_fraction, seed, data_dir, splits):
    _check_default_splits(name, splits)
    return load_npz(_spec(name), validation_fraction=validation_fraction, seed=seed, name=name)


def _tfds_prefixed(name, **kwargs):
    return _tfds(_spec(name), **kwargs)


SOURCES: tuple[_Source, ...] = (
    _Source(_digits, names=("digits",)),
    _Source(_digits28, names=("digits28",)),
    _Source(_tfds, names=TFDS_NAMES),
    _Source(_synthetic, prefix="synthetic"),
    _Source(_tfds_prefixed, prefix="tfds"),
    _Source(_idx, prefix="idx"),
    _Source(_npz, prefix="npz"),
)


def _has_tfds() -> bool:
    return importlib.util.find_spec("tensorflow_datasets") is not None


def load_dataset(
    name: str = DEFAULT_DATASET,
    *,
    validation_fraction: float = 0.0,
    seed: int = 0,
    data_dir: str | None = None,
    splits: dict[str, str | None] | None = None,
) -> Dataset:
    """Loads a dataset by name (see :mod:`jaxcnn.data` for the names).

    Args:
      name: ``digits``, ``digits28``, ``synthetic:HxWxC:K``, a tfds name, ``idx:DIR``,
        ``npz:FILE``, or another registered name.
      validation_fraction: stratified fraction of train held out for validation
        (when the dataset has no validation split of its own).
      seed: seed for held-out splits and synthetic data.
      data_dir: directory of prepared datasets, where the loader uses one.
      splits: ``{"train", "validation", "test"}`` split names in tfds syntax
        (``train[:90%]``); tfds datasets only.

    Returns:
      A :class:`Dataset`.

    Raises:
      DataError: unknown name (:class:`UnknownDatasetError`; the known ones are
        listed, and the closest one suggested), or data that cannot be loaded.

    Example:
      >>> load_dataset("digits", validation_fraction=0.1).metadata()["splits"]
      {'train': 1295, 'validation': 142, 'test': 360}
    """
    kwargs = dict(validation_fraction=validation_fraction, seed=seed, data_dir=data_dir,
                  splits=splits)
    for source in SOURCES:
        if source.claims(name):
            return source.load(name, **kwargs)
    if _TFDS_NAME.fullmatch(name) and _has_tfds():
        try:
            return _tfds(name, **kwargs)
        except UnknownDatasetError:
            pass  # not a tfds name either: list the known ones below
    known = (sorted(n for s in SOURCES for n in s.names)
             + sorted(f"{s.prefix}:..." for s in SOURCES if s.prefix))
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; known datasets: {', '.join(known)}, or any "
        "tensorflow-datasets image-classification name." + _suggest(name))


def _suggest(name: str) -> str:
    """The hint for a misspelt dataset name: the closest known name, or known prefix.

    tfds names are open-ended, so only the registered names (and the tfds names
    known to work) are suggested; ``PREFIX:SPEC`` names are matched by their prefix.

    Example:
      >>> _suggest("minst"), _suggest("synthetc:8x8x1:2"), _suggest("zzz")
      (" Did you mean 'mnist'?", " Did you mean 'synthetic:8x8x1:2'?", '')
    """
    head, sep, tail = name.partition(":")
    if sep:
        prefixes = {s.prefix: f"{s.prefix}:{tail}" for s in SOURCES if s.prefix}
        return did_you_mean(head, prefixes)
    return did_you_mean(name, [n for s in SOURCES for n in s.names])
