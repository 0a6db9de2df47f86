"""Convolution and pooling primitives used by the layers.

Layers in :mod:`jaxcnn.layers` call these functions rather than ``lax``
directly, so that the implementation can be chosen per backend in one place.

``impl`` selects the implementation:

* ``"xla"``: the plain ``lax`` operation, differentiated by JAX autodiff.
* ``"fast"``: a formulation with a custom backward pass that XLA's CPU
  backend runs faster (see ``docs/benchmarks.md``). Cases it does not cover
  fall back to ``"xla"`` automatically.
* ``"auto"``: ``"fast"`` where it has been measured to win (the CPU backend),
  ``"xla"`` elsewhere.

All arrays are NHWC; convolution kernels are HWIO.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "xla", "fast")

Padding = str | Sequence[tuple[int, int]]


def resolve_impl(impl: str = "auto", backend: str | None = None) -> str:
    """Returns the concrete implementation (``"xla"`` or ``"fast"``) for ``impl``.

    Args:
      impl: ``"auto"``, ``"xla"`` or ``"fast"``.
      backend: a JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
      ``"xla"`` or ``"fast"``.

    Example:
      >>> resolve_impl("xla")
      'xla'
      >>> resolve_impl("auto", backend="gpu")
      'xla'
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    return "fast" if backend == "cpu" and _FAST_AVAILABLE else "xla"


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: tuple[int, int] = (1, 1),
    padding: Padding = "VALID",
    impl: str = "auto",
) -> jax.Array:
    """2-D convolution (cross-correlation, as in every deep-learning library).

    Args:
      x: input, shape ``(N, H, W, C_in)``.
      kernel: weights, shape ``(KH, KW, C_in, C_out)``.
      strides: ``(sh, sw)``.
      padding: ``"VALID"``, ``"SAME"`` or explicit ``((top, bottom), (left, right))``.
      impl: ``"auto"``, ``"xla"`` or ``"fast"`` (see the module docstring).

    Returns:
      The output, shape ``(N, H_out, W_out, C_out)``.

    Example:
      >>> import jax.numpy as jnp
      >>> conv2d(jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2))).shape
      (1, 3, 3, 2)
    """
    if resolve_impl(impl) == "fast" and _FAST_AVAILABLE:
        return _fast_conv2d(x, kernel, strides=tuple(strides), padding=padding)
    return _xla_conv2d(x, kernel, strides=tuple(strides), padding=padding)


def max_pool(
    x: jax.Array,
    window: tuple[int, int] = (2, 2),
    strides: tuple[int, int] | None = None,
    padding: Padding = "VALID",
    *,
    impl: str = "auto",
) -> jax.Array:
    """Max pooling over spatial windows of an NHWC array.

    Args:
      x: input, shape ``(N, H, W, C)``.
      window: ``(wh, ww)``.
      strides: ``(sh, sw)``; defaults to ``window`` (non-overlapping).
      padding: ``"VALID"`` or ``"SAME"``.
      impl: ``"auto"``, ``"xla"`` or ``"fast"``.

    Returns:
      The pooled array.

    Example:
      >>> import jax.numpy as jnp
      >>> max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """
    window = tuple(window)
    strides = tuple(strides) if strides is not None else window
    if resolve_impl(impl) == "fast" and _FAST_AVAILABLE:
        return _fast_max_pool(x, window, strides, padding)
    return _xla_max_pool(x, window, strides, padding)


def avg_pool(
    x: jax.Array,
    window: tuple[int, int] = (2, 2),
    strides: tuple[int, int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
    """Average pooling over spatial windows of an NHWC array.

    With ``"SAME"`` padding, padded positions are not counted in the mean.

    Args:
      x: input, shape ``(N, H, W, C)``.
      window: ``(wh, ww)``.
      strides: ``(sh, sw)``; defaults to ``window``.
      padding: ``"VALID"`` or ``"SAME"``.

    Returns:
      The pooled array.

    Example:
      >>> import jax.numpy as jnp
      >>> avg_pool(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0]
      Array([[ 2.5,  4.5],
             [10.5, 12.5]], dtype=float32)
    """
    window = tuple(window)
    strides = tuple(strides) if strides is not None else window
    dims, strd = (1, *window, 1), (1, *strides, 1)
    pad = _pool_padding(padding)
    summed = lax.reduce_window(x, 0.0, lax.add, dims, strd, pad)
    if pad == "VALID":
        return summed / (window[0] * window[1])
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    counts = lax.reduce_window(ones, 0.0, lax.add, dims, strd, pad)
    return summed / counts


def _pool_padding(padding: Padding):
    if isinstance(padding, str):
        return padding.upper()
    return ((0, 0), *tuple(tuple(p) for p in padding), (0, 0))


def _xla_conv2d(x, kernel, *, strides, padding):
    if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _xla_max_pool(x, window, strides, padding):
    # A Python scalar init lets JAX recognise reduce_window_max, which has a gradient.
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), _pool_padding(padding)
    )


# The CPU fast path lives below. Until it is filled in, "fast" resolves to "xla".
_FAST_AVAILABLE = False


def _fast_conv2d(x, kernel, *, strides, padding):  # pragma: no cover - placeholder
    return _xla_conv2d(x, kernel, strides=strides, padding=padding)


def _fast_max_pool(x, window, strides, padding):  # pragma: no cover - placeholder
    return _xla_max_pool(x, window, strides, padding)
