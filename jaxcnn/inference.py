"""Prediction on files with a trained run: what ``jaxcnn predict`` does.

:func:`load_inputs` turns PNG/JPEG images or ``.npy`` arrays into a batch
shaped and typed like the run's training images, and reports what it did to
each input (:class:`InputReport`: resize, rescale, channel conversion,
inversion) and what it found (:func:`input_warnings`: an input that looks
inverted, nearly constant, much darker or brighter than the training images).
:func:`predict_files` restores a checkpoint (as host NumPy arrays, so any
machine can serve it), applies the stored preprocessing and returns the top-k
classes with those reports; :func:`report_lines` is what the command prints
about them on stderr.

What predict knows of the training images (:class:`TrainingImages`) comes
from the run's metadata: the stored preprocessing (uint8 or float images;
the mean and standard deviation of the training images) and, for runs that
store it, ``train_images`` (their value range, mean intensity and contrast).

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

import dataclasses
import math
import os
import warnings
from typing import Mapping, Sequence

import numpy as np

from jaxcnn._fs import printable
from jaxcnn.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# The only image formats decoded, whatever the file's suffix: Pillow knows many
# more (EPS among them, which runs Ghostscript), none of which predict needs.
IMAGE_FORMATS = ("PNG", "JPEG")

# Images with more pixels than this are refused before they are decoded (Pillow's
# own decompression-bomb warning threshold, also applied when Pillow's is off).
MAX_IMAGE_PIXELS = 89_478_485

# The thresholds of input_warnings, on a [0, 1] intensity scale (0 black, 1 white):
#: training images whose mean intensity is at least this far from 0.5 have a
#: polarity (light on dark, like digits and MNIST, or dark on light); an input
#: can only look inverted against such images.
POLARITY_MIN_SKEW = 0.15
#: an input whose mean intensity differs from the training mean by more than
#: this is much darker or brighter than the training images ...
FAR_MEAN = 0.25
#: ... as is one whose mean (or 1 - mean) is under this fraction of the
#: training mean (or 1 - training mean): 0.02 against 0.31, say.
FAR_RATIO = 0.25
#: an input whose pixels' standard deviation is under this fraction of a
#: typical training image's is nearly constant.
CONSTANT_STD_RATIO = 0.1

# Pillow modes, as the reports name them.
_MODE_NAMES = {"1": "1-bit", "L": "grey", "LA": "grey+alpha", "La": "grey+alpha",
               "P": "palette", "PA": "palette+alpha", "RGB": "RGB", "RGBA": "RGBA",
               "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "CMYK", "YCbCr": "YCbCr",
               "I": "32-bit grey", "I;16": "16-bit grey", "I;16B": "16-bit grey",
               "I;16L": "16-bit grey", "I;16N": "16-bit grey", "F": "float grey"}
# Modes wider than 8 bits: read through NumPy (Pillow's conversion to 8 bits clips them).
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")

_NPY_MAGIC = b"\x93NUMPY"


def _num(v: float):
    """A value for a report: whole numbers as int, others rounded to 4 decimals."""
    v = float(v)
    return int(v) if v.is_integer() and abs(v) < 2**53 else round(v, 4)


def _span(low, high) -> str:
    return f"[{_num(low):g}, {_num(high):g}]"


@dataclasses.dataclass(frozen=True)
class TrainingImages:
    """What predict knows of a run's training images: how inputs are scaled to
    match them, and what :func:`input_warnings` compares inputs with.

    Attributes:
      dtype: ``"uint8"`` or ``"float32"``, as the training images were stored.
      low, high: their value range as the model saw it before standardisation
        (uint8 images times 1/255: ``[0, 1]``); None when not known.
      full_scale: full intensity (white) in that range: 1 for images in
        ``[0, 1]``, 255 for float images in ``[0, 255]``; None for any other
        range (standardised data, say), where predict cannot scale inputs or
        compare them.
      mean: mean intensity on a ``[0, 1]`` scale (channels averaged), or None.
      image_std: typical (median) standard deviation of one image's pixels on
        that scale, or None.
      source: where ``mean`` and ``image_std`` came from.

    Example:
      >>> TrainingImages.from_meta({}, scale=1.0, mean=[0.3], std=[0.4])
      TrainingImages(dtype='float32', low=0.0, high=1.0, full_scale=1.0, mean=0.3,
                     image_std=0.4, source='preprocess')
      >>> TrainingImages.assumed(stored_as_uint8=True).describe()
      'uint8 [0, 255]'
    """

    dtype: str = "float32"
    low: float | None = 0.0
    high: float | None = 1.0
    full_scale: float | None = 1.0
    mean: float | None = None
    image_std: float | None = None
    source: str = "none"

    @property
    def uint8(self) -> bool:
        """Whether the training images were uint8 pixels."""
        return self.dtype == "uint8"

    @staticmethod
    def assumed(stored_as_uint8: bool) -> "TrainingImages":
        """uint8 images, or float images in ``[0, 1]`` (what ``from_arrays``
        documents), with no statistics.

        Example:
          >>> TrainingImages.assumed(False).describe()
          'float32 [0, 1]'
        """
        return TrainingImages("uint8" if stored_as_uint8 else "float32")

    @staticmethod
    def from_meta(meta: Mapping, scale: float, mean: Sequence[float],
                  std: Sequence[float]) -> "TrainingImages":
        """From a run's metadata: ``train_images`` (value range, mean intensity and
        contrast of the training images) where the run stores it, else the stored
        preprocessing (``scale``, ``mean``, ``std``: computed on the training
        images, unless ``data.normalize`` was off, which stores 0 and 1).

        A ``train_images`` entry that is not sane (an edited file) is ignored.

        Example:
          >>> t = TrainingImages.from_meta(
          ...     {"train_images": {"min": 0.0, "max": 255.0, "mean": [76.5],
          ...                       "image_std": 51.0}}, scale=1.0, mean=[0.0], std=[1.0])
          >>> t.describe(), t.full_scale, t.mean, t.image_std
          ('float32 [0, 255]', 255.0, 0.3, 0.2)
        """
        uint8 = abs(float(scale) - 1.0 / 255.0) < 1e-12
        stats = _checked_stats(meta.get("train_images") if isinstance(meta, Mapping) else None)
        normalized = not (all(float(m) == 0.0 for m in mean) and all(float(s) == 1.0 for s in std))
        if uint8:
            low, high, full = 0.0, 1.0, 1.0
        elif stats is not None:
            low, high = stats["min"], stats["max"]
            full = (1.0 if low >= 0 and high <= 1.0 else
                    255.0 if low >= 0 and 127.5 < high <= 255.0 else None)
        elif not normalized or 0.0 <= float(np.mean(mean)) <= 1.0:
            low, high, full = 0.0, 1.0, 1.0  # from_arrays' contract for float images
        else:
            low, high, full = None, None, None
        if full is None:
            return TrainingImages("float32", low, high, None, source="none")
        if stats is not None:
            return TrainingImages("uint8" if uint8 else "float32", low, high, full,
                                  float(np.mean(stats["mean"])) / full,
                                  stats["image_std"] / full, "train_images")
        if normalized:
            return TrainingImages("uint8" if uint8 else "float32", low, high, full,
                                  float(np.mean(mean)) / full, float(np.mean(std)) / full,
                                  "preprocess")
        return TrainingImages("uint8" if uint8 else "float32", low, high, full)

    def describe(self) -> str:
        """``'uint8 [0, 255]'``, ``'float32 [0, 1]'``, ... (see the class example)."""
        if self.uint8:
            return "uint8 [0, 255]"
        if self.low is None:
            return "float32 (range unknown)"
        return f"float32 {_span(self.low, self.high)}"

    def to_dict(self) -> dict:
        """JSON-ready form (what ``predict --json`` shows as ``training_images``), with
        ``range`` and ``full_scale`` in the units the images were stored in (uint8:
        ``[0, 255]`` and 255)."""
        return {"dtype": self.dtype, "range": [0, 255] if self.uint8 else
             (None if self.low is None else [_num(self.low), _num(self.high)]),
             "full_scale": None if self.full_scale is None else (
                 255 if self.uint8 else _num(self.full_scale)),
             "mean": None if self.mean is None else round(self.mean, 4),
             "image_std": None if self.image_std is None else round(self.image_std, 4),
             "statistics_from": self.source}


def _checked_stats(stats) -> dict | None:
    """``train_images`` from a run's metadata if it is sane, else None."""
    if not isinstance(stats, Mapping):
        return None

    def number(v):
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and abs(v) <= 1e6)

    means = stats.get("mean")
    if not (number(stats.get("min")) and number(stats.get("max"))
            and number(stats.get("image_std")) and stats["image_std"] >= 0
            and stats["min"] <= stats["max"] and isinstance(means, list) and means
            and all(number(v) for v in means)):
        return None
    return {"min": float(stats["min"]), "max": float(stats["max"]),
            "mean": [float(v) for v in means], "image_std": float(stats["image_std"])}


@dataclasses.dataclass
class InputReport:
    """What predict did to one input, and what it found.

    Attributes:
      name: the input's name (the file name, with ``[i]`` for rows of a batch file).
      original: the input as read: ``file``, ``format`` (``PNG``, ``JPEG`` or
        ``npy``), ``shape`` (an image's ``[H, W, bands]``; a ``.npy`` file's
        whole array, with ``index`` for a row of a batch), ``dtype``, ``range``
        (its smallest and largest value; for images, after the channel
        conversion), ``taken_as`` (the range its values were read as:
        ``[0, 1]``, ``[0, 255]``, ``[0, 65535]`` for 16-bit images; None: as
        they are) and, for images, ``mode`` (Pillow's).
      resize: ``{"from": [H, W], "to": [H, W], "method": "bilinear", "text"}``,
        or None.
      rescale: ``{"dtype", "from": [lo, hi], "to": [lo, hi], "factor", "text"}``:
        how its values were mapped to the training images' range; None when
        they were kept (cast to the model's dtype at most).
      channels: ``"RGB -> grey"``, ``"grey -> RGB"``, ``"RGBA -> RGB (alpha
        dropped)"``, ..., or None.
      inverted: the flip ``--invert`` applied (``"1 - x"``, or ``"255 - x"``
        for uint8 or [0, 255] training images), or None.
      mean, std: its intensity after all that (before the stored
        standardisation) on a ``[0, 1]`` scale, channels together; None when
        the training range is unknown.
      warnings: what :func:`input_warnings` found.

    Example:
      >>> r = InputReport("a.png", {"file": "a.png"},
      ...                 resize={"text": "resized 16x16 -> 8x8 (bilinear)"},
      ...                 rescale={"text": "uint8 [0, 255] -> [0, 1]"}, channels="RGB -> grey")
      >>> r.describe()
      'resized 16x16 -> 8x8 (bilinear), rescaled uint8 [0, 255] -> [0, 1], RGB -> grey'
    """

    name: str
    original: dict
    resize: dict | None = None
    rescale: dict | None = None
    channels: str | None = None
    inverted: str | None = None
    mean: float | None = None
    std: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        """The conversions as one phrase (``""`` when there were none)."""
        parts = []
        if self.resize:
            parts.append(self.resize["text"])
        if self.rescale:
            parts.append("rescaled " + self.rescale["text"])
        if self.channels:
            parts.append(self.channels)
        if self.inverted:
            parts.append(f"inverted ({self.inverted})")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready: ``original``, ``conversions`` (``resize``, ``rescale``,
        ``channels``, ``invert``, ``text``), ``stats`` and ``warnings``."""
        return {
            "original": self.original,
            "conversions": {"resize": self.resize, "rescale": self.rescale,
                            "channels": self.channels, "invert": self.inverted,
                            "text": self.describe()},
            "stats": {"mean": None if self.mean is None else round(self.mean, 4),
                      "std": None if self.std is None else round(self.std, 4)},
            "warnings": list(self.warnings),
        }


def input_warnings(name: str, mean: float, std: float, train_mean: float | None,
                   train_std: float | None, *, inverted: bool = False,
                   values_max: float | None = None) -> list[str]:
    """Warnings for an input whose statistics are far from the training images'.

    All values are intensities on a ``[0, 1]`` scale (0 black, 1 white), of the
    input after predict's conversions and before the stored standardisation;
    ``mean`` and ``std`` are its pixels' mean and standard deviation,
    ``train_mean`` the training images' mean and ``train_std`` the standard
    deviation of a typical training image's pixels. The rule, first match only:

    1. **Nearly constant**: ``std < CONSTANT_STD_RATIO * train_std`` (0.1):
       a blank or saturated image, or one scaled wrongly.
    2. **Inverted**: the training images have a polarity (their mean is at
       least ``POLARITY_MIN_SKEW`` = 0.15 from 0.5: light on dark, like digits
       and MNIST, or dark on light), the input's mean lies on the other side of
       0.5, and ``1 - mean`` is closer to the training mean than ``mean`` is,
       by at least half (``|1 - mean - train_mean| < |mean - train_mean| / 2``).
       The fix is ``--invert`` (``invert=True``), or dropping it when it was given.
    3. **Much darker or brighter**: ``|mean - train_mean| > FAR_MEAN`` (0.25),
       or ``mean < FAR_RATIO * train_mean`` (a quarter), or the same of
       ``1 - mean`` against ``1 - train_mean``.

    When a darker or nearly constant input's values were taken as ``[0, 255]``
    but reach only ``values_max`` (below 128), the warning also says to divide
    by its full scale first (scikit-learn's raw digits run 0..16).

    Without ``train_mean`` nothing is checked; without ``train_std``, rule 1 is
    skipped.

    Args:
      name: the input's name, for the messages.
      mean, std: the input's statistics.
      train_mean, train_std: the training images' (see :class:`TrainingImages`).
      inverted: whether the input was already flipped by ``--invert``.
      values_max: the input's largest value, when it was taken as ``[0, 255]``.

    Returns:
      The warnings, each a sentence naming the input, the likely cause and the fix.

    Example:
      >>> input_warnings("digit.png", 0.85, 0.3, 0.13, 0.3)  # doctest: +NORMALIZE_WHITESPACE
      ['digit.png looks inverted (dark on light; the training images are light on dark):
        its mean 0.85 vs training mean 0.13; pass --invert to flip it']
      >>> input_warnings("digit.png", 0.15, 0.3, 0.13, 0.3)
      []
      >>> input_warnings("blank.png", 0.0, 0.0, 0.13, 0.3)[0].split(":")[0]
      'blank.png is nearly constant (pixel std 0.000 vs 0.300 in a typical training image)'
    """
    if train_mean is None:
        return []
    m, tm = float(mean), float(train_mean)
    scale_hint = ""
    if values_max is not None and values_max < 128 and m < tm:
        scale_hint = (f"; its values, taken as [0, 255], reach only {_num(values_max):g}: if "
                      "that is its full scale (scikit-learn's raw digits run 0..16), divide it "
                      f"by {_num(values_max):g} (to [0, 1]) first")
    if train_std is not None and float(std) < CONSTANT_STD_RATIO * float(train_std):
        level = ("nearly black" if m < 0.05 else "nearly white" if m > 0.95
                 else f"about {m:.2f}")
        return [f"{name} is nearly constant (pixel std {float(std):.3f} vs {float(train_std):.3f} "
                f"in a typical training image): all its pixels are {level}; it is blank, "
                f"saturated or scaled wrongly: check the file{scale_hint}"]
    d, d_flipped = abs(m - tm), abs((1.0 - m) - tm)
    if (abs(tm - 0.5) >= POLARITY_MIN_SKEW and (m - 0.5) * (tm - 0.5) < 0
            and d_flipped < d / 2):
        theirs = "light on dark" if tm < 0.5 else "dark on light"
        its = "dark on light" if tm < 0.5 else "light on dark"
        fix = ("it was flipped by --invert: drop --invert" if inverted
               else "pass --invert to flip it")
        return [f"{name} looks inverted ({its}; the training images are {theirs}): its mean "
                f"{m:.2f} vs training mean {tm:.2f}; {fix}"]
    if m < tm and (d > FAR_MEAN or m < FAR_RATIO * tm):
        return [f"{name} is much darker than the training images (mean {m:.2f} vs {tm:.2f}): "
                "an underexposed image, another kind of image, or values on another "
                f"scale{scale_hint}"]
    if m > tm and (d > FAR_MEAN or 1.0 - m < FAR_RATIO * (1.0 - tm)):
        return [f"{name} is much brighter than the training images (mean {m:.2f} vs {tm:.2f}): "
                "an overexposed image, another kind of image, or values on another scale"]
    return []


def read_inputs(paths: Sequence[str], image_shape: Sequence[int],
                stored_as_uint8: bool) -> tuple[np.ndarray, list[str]]:
    """Reads images or arrays into one ``(N, H, W, C)`` batch for a model:
    :func:`load_inputs` for a model trained on uint8 images or on float images
    in ``[0, 1]``, without the reports.

    Args:
      paths: files to read.
      image_shape: ``(H, W, C)`` of the training images.
      stored_as_uint8: whether the training images were uint8 in [0, 255]
        (else float in [0, 1]).

    Returns:
      ``(batch, names)``: the images and one name per image (the file name,
      with ``[i]`` for rows of a batch file).

    Raises:
      DataError: see :func:`load_inputs`.

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
      jaxcnn.errors.DataError: ...x.npy' holds -7 at index (0, 0) ...within 0..255; ...
    """
    batch, reports = load_inputs(paths, image_shape, TrainingImages.assumed(stored_as_uint8))
    return batch, [r.name for r in reports]


def load_inputs(paths: Sequence[str], image_shape: Sequence[int],
                training: TrainingImages | None = None, *,
                invert: bool = False) -> tuple[np.ndarray, list[InputReport]]:
    """Reads images or arrays into one ``(N, H, W, C)`` batch shaped, typed and
    scaled like the training images, with a report of what was done to each.

    Images are decoded as PNG or JPEG only, whatever their suffix (a file in
    any other format is refused, not handed to another decoder), and images
    of more than :data:`MAX_IMAGE_PIXELS` pixels are refused before they are
    decoded. They are converted to the model's channel count (grayscale or
    RGB; an alpha channel is dropped) and resized to its input size
    (bilinear) when they differ; 16-bit images are scaled from [0, 65535].

    ``.npy`` files hold one image ``(H, W)``/``(H, W, C)`` or a batch
    ``(N, H, W[, C])`` whose shape must match (they are never resized); the
    header is checked (shape, dtype, size against the file's) before any data
    is read, and pickled arrays are refused. Values are read by one rule,
    applied to the whole file:

    * bool, integer and float dtypes only; complex, text, object, structured
      and date arrays are refused. Float arrays must be finite.
    * bool arrays: False is black, True white (``[0, 1]``).
    * integer arrays are pixel values and must lie within 0..255 (``[0, 255]``).
    * float arrays whose largest value is at most 1 are taken as ``[0, 1]``;
      those whose largest value is above 1 and at most 255 as ``[0, 255]``
      (scaled by 1/255 for a model trained on ``[0, 1]`` images). Negative
      values, or values above 255, are refused (a standardised image, say:
      pass it before standardisation, since predict applies the run's stored
      mean and std itself). For a model trained on uint8 images the values
      are rounded to the nearest pixel value, which must lie within 0..255.

    The values are then mapped to the training images' range (``training``):
    uint8 [0, 255], float [0, 1] or float [0, 255]. When that range is none
    of these (``training.full_scale`` is None), arrays are taken as they are
    and images scaled to [0, 1]. A value outside these rules is refused with
    its index, never wrapped or clipped.

    With ``invert``, every input is flipped (``x -> 1 - x`` on a [0, 1] scale)
    after the conversion: for dark-on-light images when the training images
    are light on dark. Each report then gets :func:`input_warnings`.

    Args:
      paths: files to read.
      image_shape: ``(H, W, C)`` of the training images.
      training: what the training images were like (default: float in [0, 1],
        no statistics).
      invert: flip every input's intensities.

    Returns:
      ``(batch, reports)``: the images and one :class:`InputReport` per image.

    Raises:
      DataError: a missing or unreadable file, an unknown suffix, an image
        that is not PNG or JPEG or is too large, an array whose shape, dtype
        or values do not fit, or ``invert`` when the training range is
        unknown; the message names the file.

    Example:
      >>> import tempfile
      >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
      >>> np.save(p, np.full((8, 8), 200.0))
      >>> batch, reports = load_inputs([p], (8, 8, 1))
      >>> round(float(batch.max()), 4), reports[0].describe()
      (0.7843, 'rescaled float64 [0, 255] -> [0, 1] (max 200 > 1)')
      >>> reports[0].original  # doctest: +NORMALIZE_WHITESPACE
      {'file': 'x.npy', 'format': 'npy', 'shape': [8, 8], 'dtype': 'float64',
       'range': [200, 200], 'taken_as': [0, 255]}
    """
    training = training or TrainingImages()
    if invert and training.full_scale is None:
        span = training.describe().split(" ", 1)[1]
        raise DataError(f"cannot invert the inputs: the run's training images lie in {span}, "
                        "neither [0, 1] nor [0, 255], so predict does not know what white is; "
                        "invert the arrays yourself and drop --invert")
    h, w, c = (int(v) for v in image_shape)
    images, reports = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"no such file: {path!r}; pass PNG/JPEG images or .npy arrays")
        suffix = os.path.splitext(path)[1].lower()
        base = os.path.basename(path)
        if suffix in IMAGE_SUFFIXES:
            x, report = _read_image(path, h, w, c, training)
            images.append(x)
            reports.append(report)
        elif suffix == ".npy":
            raw = _read_npy(path, h, w, c)
            x, rescale, taken_as = _to_training_range(raw, training, path)
            batch = _npy_batch_shape(raw.shape, h, w, c)
            x, rows = x.reshape(batch), raw.reshape(batch)
            for i in range(len(x)):
                original = {"file": base, "format": "npy", "shape": list(raw.shape),
                            "dtype": raw.dtype.name, "range": _range(rows[i]),
                            "taken_as": taken_as}
                if len(x) > 1:
                    original["index"] = i
                images.append(x[i])
                reports.append(InputReport(base if len(x) == 1 else f"{base}[{i}]", original,
                                           rescale=rescale))
        else:
            raise DataError(f"cannot read {path!r}: use a .png, .jpg, .jpeg or .npy file")
    if not images:
        raise DataError("no input files given; pass PNG/JPEG images or .npy arrays")
    dtype = np.uint8 if training.uint8 else np.float32
    batch = np.stack([np.asarray(x).astype(dtype, copy=False) for x in images])
    if invert:
        white = 255 if training.uint8 else training.full_scale
        batch = (white - batch).astype(dtype)
        for r in reports:
            r.inverted = f"{_num(white):g} - x"
    for x, r in zip(batch, reports):
        _check_statistics(x, r, training)
    return batch, reports


def _range(x: np.ndarray) -> list:
    if x.size == 0:
        return []
    if x.dtype.kind in "biu":
        return [int(x.min()), int(x.max())]
    return [_num(x.min()), _num(x.max())]


def _check_statistics(x: np.ndarray, report: InputReport, training: TrainingImages) -> None:
    """Fills ``report.mean``, ``std`` and ``warnings`` from the converted input ``x``."""
    if training.full_scale is None:
        return
    white = 255.0 if training.uint8 else float(training.full_scale)
    y = x.astype(np.float64) / white
    report.mean, report.std = float(y.mean()), float(y.std())
    original = report.original
    values_max = (original["range"][1] if original.get("format") == "npy"
                  and original.get("taken_as") == [0, 255] and original.get("range") else None)
    report.warnings = input_warnings(report.name, report.mean, report.std, training.mean,
                                     training.image_std, inverted=bool(report.inverted),
                                     values_max=values_max)


def _rescale(dtype: str, source: Sequence[float], training: TrainingImages, note: str = ""):
    """The rescale record for values of ``dtype`` in ``source`` mapped to the training
    range, or None when the values are kept."""
    if training.uint8:
        target, text = [0, 255], "uint8 [0, 255]"
    elif training.full_scale is None:
        target, text = [0, 1], "[0, 1]"
    else:
        target = [0, _num(training.full_scale)]
        text = _span(*target)
    factor = target[1] / source[1]
    if factor == 1:
        return None
    return {"dtype": dtype, "from": [_num(v) for v in source], "to": target,
            "factor": factor, "text": f"{dtype} {_span(*source)} -> {text}{note}"}


def _to_training_range(x: np.ndarray, training: TrainingImages,
                       path: str = "the array") -> tuple[np.ndarray, dict | None, list | None]:
    """``x`` in the range and type of the training images by the rules of
    :func:`load_inputs`, its rescale record, and the range its values were taken
    as (``[0, 1]``, ``[0, 255]``; None: as they are); values outside the rules
    raise :class:`DataError`."""
    dtype = x.dtype.name
    if training.full_scale is None:  # unknown training range: as they are
        if x.dtype == np.uint8:  # pixels, as for a model trained on [0, 1] images
            return (x.astype(np.float32) / np.float32(255.0),
                    _rescale(dtype, [0, 255], training), [0, 255])
        if x.dtype.kind in "biu":
            return x.astype(np.float32), None, None
        return _finite_float32(x, path), None, None
    white = 255 if training.uint8 else training.full_scale
    if x.dtype.kind == "b":
        y = x.astype(np.uint8) * np.uint8(255) if training.uint8 else (
            x.astype(np.float32) * np.float32(white))
        return y, _rescale("bool", [0, 1], training), [0, 1]
    if x.dtype.kind in "iu":
        if x.dtype != np.uint8:
            bad = (x < 0) | (x > 255)
            if bad.any():
                raise _first_bad(path, x, bad, "predict takes integer arrays as pixel values "
                                 "within 0..255; pass floats in [0, 1] for other scales")
        rescale = _rescale(dtype, [0, 255], training)
        if training.uint8:
            return x.astype(np.uint8), rescale, [0, 255]
        if white == 255:
            return x.astype(np.float32), rescale, [0, 255]
        return x.astype(np.float32) / np.float32(255.0), rescale, [0, 255]
    finite = np.isfinite(x)
    if not finite.all():
        raise _first_bad(path, x, ~finite, "predict takes finite values only (no NaN or Inf)")
    low, high = (float(np.min(x)), float(np.max(x))) if x.size else (0.0, 0.0)
    source = [0, 1] if high <= 1.0 else [0, 255]
    note = "" if high <= 1.0 else f" (max {_num(high):g} > 1)"
    rule = ("predict takes floats in [0, 1], or in [0, 255] (taken so when the largest value "
            f"is above 1); these lie in {_span(low, high)}: pass the image before "
            "standardisation (predict applies the run's stored mean and std), in one of "
            "those ranges")
    if training.uint8:
        scale = 255.0 if high <= 1.0 else 1.0
        r = np.round(x * scale)  # in x's own dtype, as always
        bad = ~((r >= 0) & (r <= 255))
        if bad.any():
            raise _first_bad(path, x, bad, rule + " (rounded to pixel values)")
        return r.astype(np.uint8), _rescale(dtype, source, training, note), source
    _finite_float32(x, path)  # a value too large for float32 is named as such first
    bad = (x < 0) | (x > 255)
    if bad.any():
        raise _first_bad(path, x, bad, rule)
    y = (x.astype(np.float32) if white == source[1]
         else (x.astype(np.float64) / source[1] * white).astype(np.float32))
    return y, _rescale(dtype, source, training, note), source


def _finite_float32(x: np.ndarray, path: str) -> np.ndarray:
    finite = np.isfinite(x)
    if not finite.all():
        raise _first_bad(path, x, ~finite, "predict takes finite values only (no NaN or Inf)")
    with np.errstate(over="ignore"):
        y = x.astype(np.float32)
    finite = np.isfinite(y)
    if not finite.all():
        raise _first_bad(path, x, ~finite, "the value is too large for float32")
    return y


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


def _read_image(path: str, h: int, w: int, c: int,
                training: TrainingImages) -> tuple[np.ndarray, InputReport]:
    """An image file as an ``(h, w, c)`` array in the training range, and its report."""
    from PIL import Image, UnidentifiedImageError

    if c not in (1, 3):
        raise DataError(f"the model takes {c}-channel images; image files give 1 or 3 "
                        "channels: pass a .npy array instead")
    base = os.path.basename(path)
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
                mode, bands = img.mode, img.getbands()
                original = {"file": base, "format": img.format, "mode": mode,
                            "shape": [height, width, len(bands)]}
                channels = _channel_change(mode, bands, "transparency" in img.info, c)
                if mode in _WIDE_MODES:
                    x = _wide_image(img, path, h, w, c, original)
                else:
                    img = img.convert("L" if c == 1 else "RGB")
                    extrema = img.getextrema()
                    if c == 3:
                        extrema = (min(e[0] for e in extrema), max(e[1] for e in extrema))
                    original.update(dtype="uint8", range=[int(v) for v in extrema],
                                    taken_as=[0, 255])
                    if img.size != (w, h):
                        img = img.resize((w, h), Image.Resampling.BILINEAR)
                    x = np.asarray(img, np.uint8)
    except DataError:
        raise
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
    resize = None
    if (width, height) != (w, h):
        stretched = abs(width * h - height * w) > 0.01 * width * h
        resize = {"from": [height, width], "to": [h, w], "method": "bilinear",
                  "aspect_kept": not stretched,
                  "text": f"resized {height}x{width} -> {h}x{w} (bilinear"
                          f"{', stretched' if stretched else ''})"}
    x = x.reshape(h, w, c)
    if original["dtype"] == "uint8":
        rescale = _rescale("uint8", [0, 255], training)
        if not training.uint8:
            x = x.astype(np.float32)
            if training.full_scale != 255:
                x = x / np.float32(255.0)
    else:  # 16 bits, in [0, 1]
        rescale = _rescale(original["dtype"], [0, 65535], training)
        white = 255.0 if training.uint8 else (training.full_scale or 1.0)
        x = x * white
        x = np.round(x).astype(np.uint8) if training.uint8 else x.astype(np.float32)
    return x, InputReport(base, original, resize=resize, rescale=rescale, channels=channels)


def _channel_change(mode: str, bands: Sequence[str], transparency: bool, c: int) -> str | None:
    """``"RGB -> grey"``, ``"RGBA -> RGB (alpha dropped)"``, ...; None when the image
    already has the model's channels."""
    target = "grey" if c == 1 else "RGB"
    if (mode == "L" and c == 1) or (mode == "RGB" and c == 3) or (
            mode in _WIDE_MODES and c == 1):
        return None
    text = f"{_MODE_NAMES.get(mode, mode)} -> {target}"
    if "A" in bands or "a" in bands:
        text += " (alpha dropped)"
    elif transparency:
        text += " (transparency dropped)"
    return text


def _wide_image(img, path: str, h: int, w: int, c: int, original: dict) -> np.ndarray:
    """A 16-bit greyscale image as floats in [0, 1], resized to ``h`` x ``w``, with ``c``
    channels; ``original`` gets its dtype, range and the range it is taken as."""
    from PIL import Image

    a = np.asarray(img)
    low, high = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if low < 0 or high > 65535:
        raise DataError(f"cannot read the image {path!r}: its pixel values run "
                        f"{low}..{high}, outside the 0..65535 of a 16-bit image; save it "
                        "as an 8- or 16-bit PNG")
    original.update(dtype="uint16", range=[low, high], taken_as=[0, 65535])
    f = a.astype(np.float32) / np.float32(65535.0)
    if (a.shape[1], a.shape[0]) != (w, h):
        f = np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    f = np.clip(f, 0.0, 1.0)  # bilinear interpolation stays within the pixels' range
    return np.repeat(f[..., None], c, axis=-1)


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


def predict_files(workdir: str, paths: Sequence[str], *, which="best", k: int = 5,
                  invert: bool = False) -> dict:
    """Top-k predictions of a trained run for image or ``.npy`` files, with what was
    done to each input to fit the model and any warning about it.

    The inputs are read by :func:`load_inputs`, scaled to the range of the
    run's training images (:class:`TrainingImages`, from the run's metadata)
    and checked against their statistics (:func:`input_warnings`).

    Args:
      workdir: the run directory.
      paths: PNG/JPEG or ``.npy`` files.
      which: the checkpoint: ``"best"``, ``"latest"`` or a step.
      k: how many classes per input.
      invert: flip every input (``x -> 1 - x`` on a [0, 1] scale) before
        predicting: for dark-on-light inputs to a model trained on light-on-dark
        images (or the reverse).

    Returns:
      ``{"step", "checkpoint", "training_images", "notes", "predictions":
      [{"input", "top_k": [{"class", "index", "probability"}], "original",
      "conversions", "stats", "warnings"}]}``: ``training_images`` is
      :meth:`TrainingImages.to_dict`, ``notes`` says what could not be checked,
      and each prediction carries :meth:`InputReport.to_dict`.
      :func:`report_lines` turns it into what the command prints on stderr.

    Raises:
      DataError: an input that cannot be read (see :func:`load_inputs`).
      CheckpointError: no checkpoint, or a damaged one.

    Example:
      >>> import tempfile
      >>> from jaxcnn.config import Config, override
      >>> from jaxcnn.data import load_dataset
      >>> from jaxcnn.run import train_and_evaluate
      >>> d = tempfile.mkdtemp()
      >>> cfg = override(Config(), {"train.epochs": 1, "train.num_devices": 1})
      >>> _ = train_and_evaluate(cfg, d, progress=False)
      >>> p = os.path.join(d, "x.npy")
      >>> np.save(p, load_dataset("digits").test.images[0] * 255)  # [0, 255], not [0, 1]
      >>> row = predict_files(d, [p], k=3)["predictions"][0]
      >>> len(row["top_k"]), row["conversions"]["text"], row["warnings"]
      (3, 'rescaled float32 [0, 255] -> [0, 1] (max 255 > 1)', [])
      >>> np.save(p, 1 - load_dataset("digits").test.images[0])  # dark on light
      >>> predict_files(d, [p])["predictions"][0]["warnings"]  # doctest: +ELLIPSIS
      ['x.npy looks inverted (dark on light; the training images are light on dark): ...']
    """
    from jaxcnn.checkpoint import load
    from jaxcnn.training import predict

    restored = load(workdir, which, sharding="numpy")
    pre = restored.preprocess
    training = TrainingImages.from_meta(restored.meta, pre.scale, pre.mean, pre.std)
    batch, reports = load_inputs(paths, restored.image_shape, training, invert=invert)
    probs = predict(restored.state, batch, pre)
    rows = top_k(probs, k, restored.class_names)
    notes = []
    if training.full_scale is None:
        span = training.describe().split(" ", 1)[1]
        notes.append(f"the run's training images lie in {span}, neither "
                     "[0, 1] nor [0, 255]: arrays were taken as they are, images scaled to "
                     "[0, 1], and no input was compared with the training images")
    elif training.mean is None:
        notes.append("the run stores no statistics of its training images (trained with "
                     "data.normalize off, before runs recorded them): no input was compared "
                     "with them")
    return {
        "step": restored.step,
        "checkpoint": restored.path,
        "training_images": training.to_dict(),
        "notes": notes,
        "predictions": [
            {"input": r.name,
             "top_k": [{"class": c, "index": i, "probability": p} for c, i, p in row],
             **r.to_dict()}
            for r, row in zip(reports, rows)
        ],
    }


def report_lines(result: Mapping, max_warnings: int = 20) -> list[str]:
    """What ``jaxcnn predict`` prints on stderr about a :func:`predict_files` result.

    One line per input that was converted (``name: resized ..., rescaled ...``),
    or one line for all the inputs that share the same conversions; then one
    ``warning:`` line per warning (at most ``max_warnings``, then a count),
    and one ``note:`` line per note. Inputs used as they are get no line.
    Control characters from file names are escaped.

    Example:
      >>> conv = {"text": "resized 64x64 -> 8x8 (bilinear), rescaled uint8 [0, 255] -> [0, 1]"}
      >>> rows = [{"input": f"{i}.png", "conversions": conv, "warnings": []} for i in range(5)]
      >>> rows.append({"input": "x.npy", "conversions": {"text": ""}, "warnings": [
      ...     "x.npy is much darker than the training images (mean 0.02 vs 0.31): ..."]})
      >>> for line in report_lines({"predictions": rows}):
      ...     print(line)
      0.png, 1.png and 3 more: resized 64x64 -> 8x8 (bilinear), rescaled uint8 [0, 255] -> [0, 1]
      warning: x.npy is much darker than the training images (mean 0.02 vs 0.31): ...
    """
    groups: dict[str, list[str]] = {}
    found = []
    for row in result["predictions"]:
        text = (row.get("conversions") or {}).get("text")
        if text:
            groups.setdefault(text, []).append(row["input"])
        found.extend(row.get("warnings") or ())
    lines = []
    for text, names in groups.items():
        who = (", ".join(names) if len(names) <= 2
               else f"{names[0]}, {names[1]} and {len(names) - 2} more")
        lines.append(f"{who}: {text}")
    lines += [f"warning: {w}" for w in found[:max_warnings]]
    if len(found) > max_warnings:
        lines.append(f"warning: {len(found) - max_warnings} more warnings (each input's are "
                     "in --json)")
    lines += [f"note: {n}" for n in result.get("notes") or ()]
    return [printable(line) for line in lines]


__all__ = [
    "CONSTANT_STD_RATIO", "FAR_MEAN", "FAR_RATIO", "IMAGE_FORMATS", "IMAGE_SUFFIXES",
    "InputReport", "MAX_IMAGE_PIXELS", "POLARITY_MIN_SKEW", "TrainingImages", "input_warnings",
    "load_inputs", "predict_files", "read_inputs", "report_lines", "top_k",
]
