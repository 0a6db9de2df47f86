"""Exceptions that jaxcnn raises for bad input.

Every error a user can cause (a bad layer spec, a shape that does not fit, an
unknown dataset, a non-finite loss, ...) is a :class:`JaxcnnError`. Its message
names the problem and the fix; the command line prints it as one line and exits
with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping


class JaxcnnError(ValueError):
    """Base class of every user-facing jaxcnn error.

    Example:
        >>> try:
        ...     raise JaxcnnError("learning rate must be > 0; got -1. Pass --lr 1e-3.")
        ... except ValueError as e:
        ...     print(e)
        learning rate must be > 0; got -1. Pass --lr 1e-3.
    """


class SpecError(JaxcnnError):
    """A model spec that does not parse, or names an unknown layer or argument.

    Example:
        >>> from jaxcnn.models import parse_spec
        >>> try:
        ...     parse_spec("conv(32, 3) pool(2) bogus")
        ... except SpecError as e:
        ...     print(str(e).splitlines()[0])
        unknown layer 'bogus' at position 20 of the spec
    """


class ShapeError(JaxcnnError):
    """A layer whose window or kernel does not fit its input feature map.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxcnn.layers import MaxPooling2D
        >>> try:
        ...     MaxPooling2D(4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))
        ... except ShapeError as e:
        ...     print(str(e).split(":")[0])
        MaxPooling2D
    """


class ConfigError(JaxcnnError):
    """A configuration value or key that is not valid.

    Example:
        >>> from jaxcnn.config import OptimizerConfig
        >>> try:
        ...     OptimizerConfig(learning_rate=0.0)
        ... except ConfigError as e:
        ...     print(str(e).split(";")[0])
        optimizer.learning_rate must be > 0
    """


class DataError(JaxcnnError):
    """A dataset that cannot be found, loaded or that does not fit the model.

    Example:
        >>> from jaxcnn.data import load_dataset
        >>> try:
        ...     load_dataset("no_such_dataset_xyz")
        ... except DataError as e:
        ...     print("unknown dataset" in str(e))
        True
    """


class NonFiniteLossError(JaxcnnError):
    """Training produced a NaN or Inf loss; the last good state was kept.

    Attributes:
        step: the 1-based training step whose loss was not finite.
        state: the train state from just before that step (last good state).

    Example:
        >>> err = NonFiniteLossError("loss was nan at step 3", step=3, state=None)
        >>> err.step
        3
    """

    def __init__(self, message: str, *, step: int, state=None):
        super().__init__(message)
        self.step = step
        self.state = state


# Names longer than this get no suggestion (matching cost grows with the length).
_MAX_SUGGEST_LEN = 200


def did_you_mean(name: str, candidates: "Iterable[str] | Mapping[str, str]", *,
                 cutoff: float = 0.6) -> str:
    """The closest known name to an unknown ``name``, as a sentence to end an error with.

    Every "unknown X" message of jaxcnn ends with this (after the list of valid
    choices), so a typo gets one suggestion. Matching is case-insensitive and
    uses :func:`difflib.get_close_matches` (similarity >= ``cutoff``).

    Args:
      name: the name that is not known.
      candidates: the known names; or a mapping from names to match against to
        the name to suggest for each (aliases, or hand-written hints such as
        ``{"optimizer.lr": "optimizer.learning_rate"}``).
      cutoff: the least similarity (0 to 1) for a suggestion.

    Returns:
      ``" Did you mean 'x'?"`` (with a leading space), or ``""`` when nothing is close.

    Example:
      >>> did_you_mean("digts", ["digits", "mnist", "cifar10"])
      " Did you mean 'digits'?"
      >>> did_you_mean("conv2", {"conv": "conv", "conv2d": "conv", "dense": "dense"})
      " Did you mean 'conv'?"
      >>> did_you_mean("resnet", ["digits", "mnist"])
      ''
    """
    if isinstance(candidates, Mapping):
        choices = {str(k).lower(): str(v) for k, v in candidates.items()}
    else:
        choices = {str(c).lower(): str(c) for c in candidates}
    key = str(name).strip().lower()
    if not key or len(key) > _MAX_SUGGEST_LEN:
        return ""
    match = difflib.get_close_matches(key, list(choices), n=1, cutoff=cutoff)
    return f" Did you mean {choices[match[0]]!r}?" if match else ""


__all__ = [
    "ConfigError", "DataError", "JaxcnnError", "NonFiniteLossError", "ShapeError", "SpecError",
    "did_you_mean",
]
