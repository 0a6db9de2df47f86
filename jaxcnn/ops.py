"""Convolution and pooling primitives used by the layers.

Layers in :mod:`jaxcnn.layers` call these functions rather than ``lax``
directly, so that the implementation can be chosen per backend in one place.

``impl`` selects the implementation:

* ``"xla"``: the plain ``lax`` operation, differentiated by JAX autodiff,
  compiled with XLA's default options.
* ``"fast"``: formulations that XLA's CPU backend runs faster: max pooling
  over non-overlapping windows (reshape + max, a one-pass gradient), average
  pooling over non-overlapping windows (a sum of strided views),
  and convolutions with at most 4 input channels (fused multiply-adds
  forward, an im2col matmul weight gradient); and XLA compiler options that
  keep XLA's own convolution kernels (:func:`compiler_options`). Same results within float
  rounding. Cases it does not cover run ``"xla"`` automatically;
  :func:`conv2d_path`, :func:`max_pool_path`, :func:`avg_pool_path` and
  :func:`paths` tell which one runs. Measurements: ``docs/benchmarks.md``,
  section "The CPU fast path".
* ``"auto"``: ``"fast"`` on the CPU backend, where it was measured to win;
  ``"xla"`` on GPU and TPU, which keep XLA's own kernels.

All arrays are NHWC; convolution kernels are HWIO.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.errors import ConfigError

IMPLS = ("auto", "xla", "fast")

Padding = str | Sequence[tuple[int, int]]


def resolve_impl(impl: str = "auto", backend: str | None = None) -> str:
    """Returns the concrete implementation (``"xla"`` or ``"fast"``) for ``impl``.

    Args:
      impl: ``"auto"``, ``"xla"`` or ``"fast"``.
      backend: a JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
      ``"xla"`` or ``"fast"``: the path a model built with ``impl`` takes.
      Individual layers the fast path does not cover still run ``"xla"``;
      :func:`paths` lists the choice per call.

    Raises:
      ConfigError: for an unknown ``impl``.

    Example:
      >>> resolve_impl("xla")
      'xla'
      >>> resolve_impl("auto", backend="gpu")
      'xla'
    """
    if impl not in IMPLS:
        raise ConfigError(f"impl must be one of {IMPLS}; got {impl!r}. Use 'auto' (the fast "
                          "CPU path where it wins), 'xla' or 'fast'.")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    return "fast" if backend == "cpu" else "xla"


# XLA's CPU backend hands some operations to YNNPACK library kernels. Its
# convolution kernel ran 1.5-3x slower than XLA's own (Eigen) convolution for
# the layers of the zoo models on 2 cores (the weight gradient of a 32->64
# channel layer: 14.8 ms against 8.8 ms), while its reductions (pooling) and
# dots are faster than XLA's loops. The fast path compiles with library
# fusions for reductions and dots only; docs/benchmarks.md has the numbers.
_CPU_COMPILER_OPTIONS = (
    ("xla_cpu_experimental_ynn_fusion_type",
     "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),
)


@functools.lru_cache(maxsize=None)
def _cpu_options_supported(options: tuple) -> bool:
    """Whether this jaxlib's CPU compiler accepts ``options`` (they are experimental)."""
    try:
        jax.jit(lambda v: v + 1, backend="cpu", compiler_options=dict(options)).lower(
            jnp.zeros((1,), jnp.float32)).compile()
    except Exception:  # noqa: BLE001 - an unknown option or value: compile without them
        return False
    return True


def compiler_options(impl: str = "auto", backend: str | None = None) -> dict[str, str]:
    """XLA compiler options that go with ``impl`` on ``backend``.

    The CPU fast path is partly a choice of XLA's own kernels: on CPU it
    keeps XLA's convolution instead of the YNNPACK library kernel that XLA
    picks by default, which was measured slower for these models. jaxcnn's
    own compiled steps (:func:`jaxcnn.training.fit`, evaluation, prediction,
    ``jaxcnn bench``) pass these options to :func:`jax.jit`; pass them too
    when jitting :func:`jaxcnn.training.train_step` in a loop of your own.
    Empty on GPU/TPU, with ``impl="xla"``, or where this jaxlib does not know
    the options.

    Args:
      impl: ``"auto"``, ``"xla"`` or ``"fast"``.
      backend: a JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
      A dict for ``jax.jit(..., compiler_options=...)``; may be empty.

    Example:
      >>> compiler_options("xla")
      {}
      >>> compiler_options("auto", backend="gpu")
      {}
    """
    backend = backend or jax.default_backend()
    if resolve_impl(impl, backend) != "fast" or backend != "cpu":
        return {}
    if not _cpu_options_supported(_CPU_COMPILER_OPTIONS):
        return {}
    return dict(_CPU_COMPILER_OPTIONS)


_RECORDS: list[list[dict]] = []


@contextlib.contextmanager
def record_paths():
    """Records the implementation that every conv and pool call takes.

    Recorded ops: ``conv2d``, ``max_pool`` and ``avg_pool``.

    Calls are recorded as they are traced or run eagerly: a call that JAX
    does not trace again records nothing, such as a jit-compiled function
    called with arguments it has already been traced for (JAX reuses the
    cached trace). Use :func:`paths`, which traces afresh every time.

    Yields:
      A list that fills with one ``{"op", "path", "input_shape"}`` dict per call.

    Example:
      >>> import jax.numpy as jnp
      >>> with record_paths() as log:
      ...     _ = max_pool(jnp.ones((1, 4, 4, 1)), impl="xla")
      >>> [(r["op"], r["path"]) for r in log]
      [('max_pool', 'xla')]
    """
    log: list[dict] = []
    _RECORDS.append(log)
    try:
        yield log
    finally:
        _RECORDS.remove(log)


_FRESH_TRACES = itertools.count(1)


@functools.lru_cache(maxsize=None)
def _trace_context_state():
    """A JAX config state that is part of every tracing cache's key and does not
    affect tracing, or None if this JAX has none (see :func:`_fresh_trace`)."""
    try:
        from jax._src import config as jax_config

        # Used only when compiling with profile-guided latency estimation on.
        state = jax_config.pgle_profiling_runs
        before = jax_config.trace_context()
        with state(state.value + 1):
            in_key = jax_config.trace_context() != before
    except Exception:  # noqa: BLE001 - a JAX without it: fall back to the wrapper alone
        return None
    return state if in_key else None


def _fresh_trace():
    """A context under which no trace that JAX has cached is reused.

    JAX caches the trace of each jit-compiled (or scanned, remat'd...)
    function per argument shapes and config; a cache hit does not run the
    Python function, so :func:`record_paths` would record nothing for it.
    Setting a config value that is part of those caches' keys to a value never
    used before makes every lookup miss. The value chosen (the number of
    profiling runs of profile-guided latency estimation) affects only
    compilation with that estimation on, and nothing is compiled here.
    """
    state = _trace_context_state()
    if state is None:
        return contextlib.nullcontext()
    return state(1_000_000 + next(_FRESH_TRACES))


def paths(fn, *args, **kwargs) -> list[tuple[str, str]]:
    """``(op, implementation)`` of every conv and pool call that ``fn(*args)`` makes.

    ``fn`` is traced abstractly (:func:`jax.eval_shape`): nothing is computed.
    It is traced afresh on every call, also when it (or a function it calls)
    was jit-compiled or traced before: JAX's trace caches are bypassed, so the
    answer is the same each time.

    Args:
      fn: a function calling :func:`conv2d`, :func:`max_pool` or :func:`avg_pool`,
        e.g. a model's apply, or a jit-compiled one.
      *args, **kwargs: its arguments (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      One ``(op, "xla" | "fast")`` pair per call, in call order.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda x, w: max_pool(conv2d(x, w, impl="fast"), impl="fast")
      >>> x, w = jnp.ones((2, 8, 8, 1)), jnp.ones((3, 3, 1, 4))
      >>> paths(f, x, w)
      [('conv2d', 'fast'), ('max_pool', 'fast')]
      >>> g = jax.jit(f); _ = g(x, w)
      >>> paths(g, x, w) == paths(g, x, w) == paths(f, x, w)
      True
    """
    def fresh(*a, **k):  # a new function each call: never in a cache
        return fn(*a, **k)

    # A jit-compiled fn is traced as itself (its static arguments stay static) when
    # the caches can be bypassed; otherwise through the fresh wrapper.
    jitted = hasattr(fn, "trace") and hasattr(fn, "lower")
    target = fn if jitted and _trace_context_state() is not None else fresh
    with record_paths() as log, _fresh_trace():
        jax.eval_shape(target, *args, **kwargs)
    if not log and _trace_context_state() is None:
        warnings.warn("ops.paths: this JAX's trace caches cannot be bypassed, so a function "
                      "that fn calls and that was jit-compiled before reports no paths; the "
                      "empty answer may be wrong", RuntimeWarning, stacklevel=2)
    return [(r["op"], r["path"]) for r in log]


def _record(op: str, path: str, shape) -> None:
    for log in _RECORDS:
        log.append({"op": op, "path": path, "input_shape": tuple(shape)})


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: tuple[int, int] = (1, 1),
    padding: Padding = "VALID",
    dilation: tuple[int, int] = (1, 1),
    impl: str = "auto",
) -> jax.Array:
    """2-D convolution (cross-correlation, as in every deep-learning library).

    Args:
      x: input, shape ``(N, H, W, C_in)``.
      kernel: weights, shape ``(KH, KW, C_in, C_out)``.
      strides: ``(sh, sw)``.
      padding: ``"VALID"``, ``"SAME"`` or explicit ``((top, bottom), (left, right))``.
      dilation: kernel dilation ``(dh, dw)`` (atrous convolution; runs ``"xla"``).
      impl: ``"auto"``, ``"xla"`` or ``"fast"`` (see the module docstring);
        :func:`conv2d_path` tells which one runs.

    Returns:
      The output, shape ``(N, H_out, W_out, C_out)``.

    Example:
      >>> import jax.numpy as jnp
      >>> conv2d(jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2))).shape
      (1, 3, 3, 2)
    """
    strides, dilation = tuple(strides), tuple(dilation)
    path = conv2d_path(x.shape, kernel.shape, strides=strides, padding=padding,
                       dilation=dilation, dtype=jnp.result_type(x, kernel), impl=impl)
    _record("conv2d", path, x.shape)
    if path == "fast":
        return _fast_conv2d(x, kernel, strides=strides, padding=padding)
    return _xla_conv2d(x, kernel, strides=strides, padding=padding, dilation=dilation)


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
      padding: ``"VALID"``, ``"SAME"`` (pads with ``-inf``) or explicit
        ``((top, bottom), (left, right))``.
      impl: ``"auto"``, ``"xla"`` or ``"fast"``; :func:`max_pool_path` tells
        which one runs.

    Returns:
      The pooled array. Its gradient goes to one element per window, the
      first maximum in row-major window order, on both paths.

    Example:
      >>> import jax.numpy as jnp
      >>> max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """
    window = tuple(window)
    strides = tuple(strides) if strides is not None else window
    path = max_pool_path(x.shape, window, strides, padding, dtype=x.dtype, impl=impl)
    _record("max_pool", path, x.shape)
    if path == "fast":
        return _fast_max_pool(x, window, strides, padding)
    return _xla_max_pool(x, window, strides, padding)


def avg_pool(
    x: jax.Array,
    window: tuple[int, int] = (2, 2),
    strides: tuple[int, int] | None = None,
    padding: Padding = "VALID",
    *,
    impl: str = "auto",
) -> jax.Array:
    """Average pooling over spatial windows of an NHWC array.

    With ``"SAME"`` or explicit padding, padded positions are not counted in the mean.

    Args:
      x: input, shape ``(N, H, W, C)``.
      window: ``(wh, ww)``.
      strides: ``(sh, sw)``; defaults to ``window``.
      padding: ``"VALID"``, ``"SAME"`` or explicit ``((top, bottom), (left, right))``.
      impl: ``"auto"``, ``"xla"`` or ``"fast"``; :func:`avg_pool_path` tells
        which one runs.

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
    path = avg_pool_path(x.shape, window, strides, padding, dtype=x.dtype, impl=impl)
    _record("avg_pool", path, x.shape)
    if path == "fast":
        return _fast_avg_pool(x, window, padding)
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


def _xla_conv2d(x, kernel, *, strides, padding, dilation=(1, 1)):
    if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _xla_max_pool(x, window, strides, padding):
    # A Python scalar init lets JAX recognise reduce_window_max, which has a gradient.
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), _pool_padding(padding)
    )


# ---------------------------------------------------------------------------
# The CPU fast path.
#
# On XLA's CPU backend, reduce_window's max gradient (select-and-scatter) and
# the convolutions of layers with few input channels (forward and weight
# gradient) run many times slower than the arithmetic needs. The fast path
# replaces them:
#
# * max pooling with non-overlapping windows: a reshape + max, whose gradient
#   is one fused elementwise pass that routes each window's cotangent to its
#   first maximum (the element select-and-scatter picks);
# * convolutions with at most _FAST_MAX_CIN input channels (the image layer):
#   the forward pass is a sum of KH*KW*C_in broadcast multiplies, which XLA
#   fuses with the bias and activation; the weight gradient is one matmul of
#   the stacked kernel-offset shifts of the input (im2col, small because there
#   are few channels) with the output gradient; the input gradient stays
#   XLA's transposed convolution.
#
# Wider convolutions keep XLA's forward and input gradient; shifted-matmul and
# im2col weight gradients measured slower there (docs/benchmarks.md, "The CPU
# fast path"). But XLA's CPU weight-gradient convolution slows down sharply as
# the batch grows: a 3x3 64->64 layer on 32x32 maps ran at about 1 GFLOP/s for
# 128 images and 6-10x that for 4-8 images at a time (a ResNet's first stage).
# The fast path then computes the weight gradient as a sum over batch chunks of
# at most _DW_CHUNK_ELEMENTS input elements each (about 1 MiB in float32, where
# the chunks measured fastest from 64 to 512 channels): the same sum over the
# batch, in another order.

# The stacked shifts hold KH*KW*C_in columns per output pixel; up to 4 input
# channels that beat XLA's weight-gradient convolution 2x (1 and 3 channels,
# 28x28 and 32x32 images); at 8 and more it lost 2-3x.
_FAST_MAX_CIN = 4
_DW_CHUNK_ELEMENTS = 2**18


def dw_chunk_images(x_shape) -> int:
    """Images per chunk of the fast path's weight gradient for inputs of ``x_shape``
    (the whole batch when it is small enough: then nothing is chunked).

    Example:
      >>> dw_chunk_images((128, 32, 32, 64)), dw_chunk_images((32, 13, 13, 32))
      (4, 32)
    """
    per_image = max(1, int(np.prod(x_shape[1:])))
    return int(min(x_shape[0], max(1, _DW_CHUNK_ELEMENTS // per_image)))


def _conv_pads(x_hw, k_hw, strides, padding):
    """Explicit ((top, bottom), (left, right)) padding, or None if not covered."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            return None
        return tuple(lax.padtype_to_pads(x_hw, k_hw, strides, padding.upper()))
    pads = tuple(tuple(int(v) for v in p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 or min(p) < 0 for p in pads):
        return None
    return pads


def conv2d_path(x_shape, kernel_shape, *, strides=(1, 1), padding="VALID", dilation=(1, 1),
                dtype=jnp.float32, impl="auto", backend=None) -> str:
    """The implementation :func:`conv2d` runs for these arguments.

    ``"fast"`` where the fast path covers the case and has been measured to
    win: a floating dtype, no dilation, any stride, ``"SAME"``, ``"VALID"``
    or non-negative explicit padding, and at most 4 input channels (the
    image layer, whose weight gradient XLA's CPU backend computes slowly).
    Everything else runs ``"xla"``, also when ``impl`` asked for ``"fast"``.

    Args:
      x_shape: input shape ``(N, H, W, C_in)``.
      kernel_shape: kernel shape ``(KH, KW, C_in, C_out)``.
      strides, padding, dilation: as for :func:`conv2d`.
      dtype: the computation dtype.
      impl: ``"auto"``, ``"xla"`` or ``"fast"``.
      backend: a JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
      ``"xla"`` or ``"fast"``.

    Example:
      >>> conv2d_path((8, 28, 28, 1), (3, 3, 1, 32), impl="fast")
      'fast'
      >>> conv2d_path((8, 28, 28, 1), (3, 3, 1, 32), dilation=(2, 2), impl="fast")
      'xla'
      >>> conv2d_path((8, 13, 13, 32), (3, 3, 32, 64), impl="fast")  # XLA is faster here
      'xla'
    """
    if resolve_impl(impl, backend) != "fast":
        return "xla"
    if len(x_shape) != 4 or len(kernel_shape) != 4 or x_shape[3] != kernel_shape[2]:
        return "xla"
    if tuple(dilation) != (1, 1) or min(strides) < 1:
        return "xla"
    if not jnp.issubdtype(dtype, jnp.floating):
        return "xla"
    pads = _conv_pads(tuple(x_shape[1:3]), tuple(kernel_shape[:2]), tuple(strides), padding)
    if pads is None:
        return "xla"
    for size, k, (lo, hi) in zip(x_shape[1:3], kernel_shape[:2], pads):
        if size + lo + hi < k:
            return "xla"
    if x_shape[3] > _FAST_MAX_CIN and dw_chunk_images(x_shape) >= x_shape[0]:
        return "xla"  # a wide layer on a batch small enough for XLA's weight gradient
    return "fast"


def max_pool_path(x_shape, window=(2, 2), strides=None, padding="VALID", *,
                  dtype=jnp.float32, impl="auto", backend=None) -> str:
    """The implementation :func:`max_pool` runs for these arguments.

    The fast path covers non-overlapping windows (``strides == window``) of
    any size with ``"VALID"`` (a trailing partial window is dropped),
    ``"SAME"`` (the input is padded with ``-inf``) or explicit non-negative
    padding, in a floating dtype; anything else runs ``"xla"``.

    Args:
      x_shape: input shape ``(N, H, W, C)``.
      window, strides, padding: as for :func:`max_pool`.
      dtype: the computation dtype.
      impl: ``"auto"``, ``"xla"`` or ``"fast"``.
      backend: a JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
      ``"xla"`` or ``"fast"``.

    Example:
      >>> max_pool_path((8, 26, 26, 32), (2, 2), impl="fast")
      'fast'
      >>> max_pool_path((8, 26, 26, 32), (3, 3), (2, 2), impl="fast")  # overlapping
      'xla'
    """
    window = tuple(window)
    strides = tuple(strides) if strides is not None else window
    if resolve_impl(impl, backend) != "fast":
        return "xla"
    if len(x_shape) != 4 or strides != window:
        return "xla"
    if not jnp.issubdtype(dtype, jnp.floating):
        return "xla"
    if _pool_pads(tuple(x_shape[1:3]), window, padding) is None:
        return "xla"
    return "fast"


def avg_pool_path(x_shape, window=(2, 2), strides=None, padding="VALID", *,
                  dtype=jnp.float32, impl="auto", backend=None) -> str:
    """The implementation :func:`avg_pool` runs for these arguments.

    The same cases as :func:`max_pool_path`: non-overlapping windows with
    ``"VALID"``, ``"SAME"`` or explicit non-negative padding, in a floating
    dtype; anything else runs ``"xla"``.

    Example:
      >>> avg_pool_path((8, 28, 28, 32), (2, 2), impl="fast")
      'fast'
      >>> avg_pool_path((8, 28, 28, 32), (2, 2), impl="xla")
      'xla'
    """
    return max_pool_path(x_shape, window, strides, padding, dtype=dtype, impl=impl,
                         backend=backend)


def _pool_pads(x_hw, window, padding):
    """Per spatial axis (low, high, out): pads that make the axis ``out * window`` long.

    ``high`` is negative where 'valid' drops the trailing partial window.
    """
    pads = _conv_pads(x_hw, window, window, padding)
    if pads is None:
        return None
    result = []
    for size, w, (lo, hi) in zip(x_hw, window, pads):
        out = (size + lo + hi - w) // w + 1
        if out < 1:
            return None
        result.append((lo, out * w - size - lo, out))
    return tuple(result)


# --- convolution ------------------------------------------------------------


def _shifts(xp, k_hw, out_hw, strides):
    """The ``KH*KW`` strided views ``xp[:, i::sh, j::sw][:, :Ho, :Wo]`` of the padded input."""
    n, _, _, c = xp.shape
    (kh, kw), (ho, wo), (sh, sw) = k_hw, out_hw, strides
    return [
        lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]


def _im2col(x, k_hw, out_hw, strides, pads):
    """(N*Ho*Wo, KH*KW*C_in): the stacked kernel-offset shifts of the padded input."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    views = _shifts(xp, k_hw, out_hw, strides)
    cols = jnp.concatenate(views, axis=-1) if len(views) > 1 else views[0]
    return cols.reshape(-1, cols.shape[-1])


def _conv_dw(cols, dy, k_shape):
    """Weight gradient: ``cols^T @ dy``."""
    dw = lax.dot_general(cols, dy.reshape(-1, k_shape[3]), (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)
    return dw.reshape(k_shape)


def _conv_dx(x_shape, kernel, dy, strides, pads):
    """Input gradient: the transposed convolution that autodiff of the forward uses."""
    _, vjp = jax.vjp(lambda z: _xla_conv2d(z, kernel, strides=strides, padding=pads),
                     jnp.zeros(x_shape, dy.dtype))
    return vjp(dy)[0]


def _out_hw(x_shape, k_shape, strides, pads):
    return tuple((x_shape[1 + d] + sum(pads[d]) - k_shape[d]) // strides[d] + 1 for d in (0, 1))


def _taps_conv(x, kernel, strides, pads):
    """The convolution as a sum of ``KH*KW*C_in`` broadcast multiplies.

    For few input channels XLA's CPU convolution is slow (the 1->32 channel
    layer of keras_convnet ran at a few GFLOP/s); this form is elementwise, so
    XLA fuses it with the bias and the activation into one pass that writes
    the output once. Accumulates in float32, as the convolution does.
    """
    out_hw = _out_hw(x.shape, kernel.shape, strides, pads)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))).astype(acc)
    views = _shifts(xp, kernel.shape[:2], out_hw, strides)
    kernel32 = kernel.astype(acc)
    kw = kernel.shape[1]
    total = None
    for k, v in enumerate(views):
        for c in range(x.shape[3]):
            term = v[..., c:c + 1] * kernel32[k // kw, k % kw, c]
            total = term if total is None else total + term
    return total.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _fast_conv(x, kernel, strides, pads):
    # Called without differentiation (inference, evaluation), XLA's own
    # convolution is the faster forward inside a whole model: the fused taps
    # form made keras_convnet's inference about 2x slower. Training takes the
    # forward rule below.
    return _xla_conv2d(x, kernel, strides=strides, padding=pads)


def _fast_conv_fwd(x, kernel, strides, pads):
    return _taps_conv(x, kernel, strides, pads), (x, kernel)


def _fast_conv_bwd(strides, pads, res, dy):
    x, kernel = res
    # Unused input gradients (the image layer's) are removed by XLA under jit.
    dx = _conv_dx(x.shape, kernel, dy, strides, pads)
    cols = _im2col(x, kernel.shape[:2], _out_hw(x.shape, kernel.shape, strides, pads),
                   strides, pads)
    dw = _conv_dw(cols, dy, kernel.shape)
    return dx.astype(x.dtype), dw.astype(kernel.dtype)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _chunked_dw_conv(x, kernel, strides, pads, chunk):
    return _xla_conv2d(x, kernel, strides=strides, padding=pads)


def _chunked_dw_conv_fwd(x, kernel, strides, pads, chunk):
    return _xla_conv2d(x, kernel, strides=strides, padding=pads), (x, kernel)


def _chunked_dw_conv_bwd(strides, pads, chunk, res, dy):
    x, kernel = res
    dx = _conv_dx(x.shape, kernel, dy, strides, pads)
    dw = None
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        _, vjp = jax.vjp(lambda k: _xla_conv2d(x[start:stop], k, strides=strides, padding=pads),
                         kernel)
        part = vjp(dy[start:stop])[0].astype(jnp.float32)
        dw = part if dw is None else dw + part
    return dx.astype(x.dtype), dw.astype(kernel.dtype)


_chunked_dw_conv.defvjp(_chunked_dw_conv_fwd, _chunked_dw_conv_bwd)


def _fast_conv2d(x, kernel, *, strides, padding):
    pads = _conv_pads(tuple(x.shape[1:3]), tuple(kernel.shape[:2]), strides, padding)
    if x.shape[3] > _FAST_MAX_CIN:
        return _chunked_dw_conv(x, kernel, tuple(strides), pads, dw_chunk_images(x.shape))
    return _fast_conv(x, kernel, tuple(strides), pads)


# --- pooling ------------------------------------------------------------------


def _blocks(x, window, geometry, fill):
    """Pads or crops ``x`` to whole windows and splits them: (N, Ho, wh, Wo, ww, C)."""
    (lo_h, hi_h, ho), (lo_w, hi_w, wo) = geometry
    xp = lax.pad(x, jnp.asarray(fill, x.dtype),
                 ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
    n, c = x.shape[0], x.shape[3]
    return xp.reshape(n, ho, window[0], wo, window[1], c)


def _unblock(g, geometry):
    """The inverse of :func:`_blocks` for gradients: merge windows, undo pad/crop (with 0)."""
    (lo_h, hi_h, ho), (lo_w, hi_w, wo) = geometry
    n, _, wh, _, ww, c = g.shape
    g = g.reshape(n, ho * wh, wo * ww, c)
    return lax.pad(g, jnp.zeros((), g.dtype),
                   ((0, 0, 0), (-lo_h, -hi_h, 0), (-lo_w, -hi_w, 0), (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _fast_max(x, window, geometry, save_input):
    # Without differentiation XLA's reduce_window is the faster forward inside
    # a whole model (the reshape form fused badly with the layers around it in
    # inference); training takes the forward rule below.
    (lo_h, hi_h, _), (lo_w, hi_w, _) = geometry
    pads = ((0, 0), (lo_h, max(hi_h, 0)), (lo_w, max(hi_w, 0)), (0, 0))
    dims = (1, *window, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, dims, pads)


def _first_max_position(xb, window):
    """Each window's first maximum in row-major order: its position, an int8 (or int32).

    A running comparison of the window's elements with each other, never with
    a maximum computed elsewhere: XLA fuses the layer before the pool (such
    as the image conv's multiply-adds) into each consumer separately, and two
    evaluations can round differently, so an element may not equal a max
    computed in another fusion. Strictly greater replaces the running winner,
    so ties go to the first element, as XLA's select-and-scatter does.
    """
    wh, ww = window
    best = xb[:, :, 0, :, 0, :]
    winner = jnp.zeros(best.shape, jnp.int8 if wh * ww <= 127 else jnp.int32)
    for pos in range(1, wh * ww):
        a, b = divmod(pos, ww)
        v = xb[:, :, a, :, b, :]
        take = v > best
        best = jnp.where(take, v, best)
        winner = jnp.where(take, jnp.asarray(pos, winner.dtype), winner)
    return winner


def _fast_max_fwd(x, window, geometry, save_input):
    # A max over strided slices (fusible with the producer) measured slower
    # than this reduce in the training step.
    xb = _blocks(x, window, geometry, -jnp.inf)
    y = xb.max(axis=(2, 4))
    if save_input:
        # The measured alternative (save_input=True, for side-by-side
        # benchmarks): the backward pass gets the pool's input and output.
        return y, (x, y)
    # The position of each window's first maximum, as a small integer: the
    # backward pass needs only this. Given the input instead, XLA recomputed
    # the layer before the pool (a fused image conv) for every window
    # position inside the backward loop: seed_cnn on 32x32x3 images trained
    # 1.8x faster with the positions, 28x28x1 models the same.
    return y, (_first_max_position(xb, window), None)


def _fast_max_bwd(window, geometry, save_input, res, dy):
    winner = res[0]
    if save_input:
        # From the pool's input: the winners are found here instead.
        winner = _first_max_position(_blocks(res[0], window, geometry, -jnp.inf), window)
    # One winner per window: ties neither split nor duplicate the gradient.
    # Each window's cotangent goes to it, in one fused elementwise pass.
    zero = jnp.zeros((), dy.dtype)
    rows = [jnp.stack([jnp.where(winner == a * window[1] + b, dy, zero)
                       for b in range(window[1])], axis=3) for a in range(window[0])]
    return (_unblock(jnp.stack(rows, axis=2), geometry),)


_fast_max.defvjp(_fast_max_fwd, _fast_max_bwd)


def _fast_max_pool(x, window, strides, padding, *, save_input=False):
    """``save_input=True``: the backward pass finds the winners from the saved
    input instead of getting their positions (slower; for benchmarks)."""
    return _fast_max(x, tuple(window), _pool_pads(tuple(x.shape[1:3]), window, padding),
                     save_input)


def _fast_avg_pool(x, window, padding):
    """Non-overlapping average pooling as a sum of the ``wh*ww`` strided views.

    XLA's CPU backend hands ``reduce_window`` to a library kernel that needs
    its operands materialised (the ReLU before the pool wrote a full array of
    zeros); a sum of strided slices is one elementwise loop fused with the
    layer before it, and its gradient is a fused pad of the output gradient.
    """
    geometry = _pool_pads(tuple(x.shape[1:3]), window, padding)
    (lo_h, hi_h, ho), (lo_w, hi_w, wo) = geometry
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
    # The window offsets' strided views, as a convolution's kernel offsets.
    total = functools.reduce(lax.add, _shifts(xp, window, (ho, wo), window))
    if max(lo_h, hi_h, lo_w, hi_w) <= 0:
        return total / (window[0] * window[1])
    # Padded positions do not count: divide each window by its real elements.
    counts = []
    for size, w, (lo, _, out) in zip(x.shape[1:3], window, geometry):
        start = np.arange(out) * w - lo
        counts.append(np.minimum(start + w, size) - np.maximum(start, 0))
    per_window = np.outer(counts[0], counts[1]).astype(np.float32)[None, :, :, None]
    return total / jnp.asarray(per_window, x.dtype)


__all__ = [
    "IMPLS", "avg_pool", "avg_pool_path", "compiler_options", "conv2d", "conv2d_path", "max_pool",
    "max_pool_path", "paths", "record_paths", "resolve_impl",
]
