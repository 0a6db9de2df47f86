"""Exceptions that jaxcnn raises for bad input.

Every error a user can cause (a bad layer spec, a shape that does not fit, an
unknown dataset, a non-finite loss, ...) is a :class:`JaxcnnError`. Its message
names the problem and the fix; the command line prints it as one line and exits
with status 2 instead of showing a traceback.
"""

from __future__ import annotations


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


__all__ = [
    "ConfigError", "DataError", "JaxcnnError", "NonFiniteLossError", "ShapeError", "SpecError",
]
