"""The layers of a convolutional image classifier, as Flax linen modules.

Every layer takes NHWC inputs and a keyword-only ``train`` flag where
behaviour differs between training and evaluation (:class:`Dropout` and
:class:`BatchNorm`).
Evaluation is the default: ``layer(x)`` never drops units.

Names and arguments follow Keras, so a Keras model reads across directly:

>>> import jax, jax.numpy as jnp
>>> from jaxcnn.layers import Conv2D
>>> conv = Conv2D(32, 3, padding="same")
>>> variables = conv.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
>>> conv.apply(variables, jnp.zeros((4, 28, 28, 1))).shape
(4, 28, 28, 32)
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import ops
from jaxcnn.errors import ShapeError

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array] | None] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "elu": nn.elu,
    "selu": nn.selu,
    "silu": nn.silu,
    "swish": nn.swish,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "leaky_relu": nn.leaky_relu,
    "linear": None,
    "none": None,
}
PADDINGS = ("valid", "same")


def _pair(value: int | tuple[int, int] | list[int], what: str, layer: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    else:
        pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ShapeError(
            f"{layer}: {what} must be a positive int or a pair of them; got {value!r}"
        )
    return pair  # type: ignore[return-value]


def _activation(name: str | None, layer: str) -> Callable[[Array], Array] | None:
    if name is None:
        return None
    if callable(name):
        return name
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ShapeError(
            f"{layer}: unknown activation {name!r}; use one of {sorted(ACTIVATIONS)} or None"
        )
    return ACTIVATIONS[key]


def _padding(padding, layer: str):
    """``"SAME"``, ``"VALID"`` or explicit ``((top, bottom), (left, right))`` zero padding.

    An int ``p`` pads ``p`` rows and columns on every side (PyTorch's ``padding=p``); a pair
    ``(ph, pw)`` pads ``ph`` rows above and below and ``pw`` columns left and right.
    """
    if isinstance(padding, str):
        if padding.lower() not in PADDINGS:
            raise ShapeError(f"{layer}: padding must be 'valid', 'same' or an int; got "
                             f"{padding!r}")
        return padding.upper()
    if isinstance(padding, int) and not isinstance(padding, bool):
        pads = (padding, padding)
    else:
        try:
            pads = tuple(padding)
        except TypeError:
            pads = ()
    if len(pads) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                 for v in pads):
        raise ShapeError(f"{layer}: padding must be 'valid', 'same', an int >= 0 or a pair of "
                         f"them; got {padding!r}")
    return ((pads[0], pads[0]), (pads[1], pads[1]))


def _check_nhwc(x: Array, layer: str) -> None:
    if x.ndim != 4:
        raise ShapeError(
            f"{layer}: expects a batch of images shaped (N, H, W, C); got shape "
            f"{tuple(x.shape)}. Add a channel axis (x[..., None]) for grayscale images."
        )


def _window_output(size: int, window: int, stride: int, padding, axis: int = 0) -> int:
    if padding == "SAME":
        return -(-size // stride)
    if padding != "VALID":
        size += sum(padding[axis])
    return (size - window) // stride + 1


def _check_window(x: Array, window, strides, padding: str, layer: str, what: str) -> None:
    """Raises ShapeError when a window does not fit the feature map."""
    _check_nhwc(x, layer)
    h, w = x.shape[1], x.shape[2]
    if padding != "SAME":
        ph, pw = (0, 0) if padding == "VALID" else (sum(padding[0]), sum(padding[1]))
        if window[0] > h + ph or window[1] > w + pw:
            shown = "'valid'" if padding == "VALID" else f"{padding[0][0]}x{padding[1][0]}"
            raise ShapeError(
                f"{layer}: {what} {window[0]}x{window[1]} is larger than its input feature map "
                f"{h}x{w} (input shape {tuple(x.shape)}, padding {shown}). Use padding='same', "
                f"a smaller {what}, fewer downsampling layers before it, or larger input images."
            )
    out = (_window_output(h, window[0], strides[0], padding, 0),
           _window_output(w, window[1], strides[1], padding, 1))
    if min(out) < 1:
        raise ShapeError(f"{layer}: output would be empty ({out}) for input shape {tuple(x.shape)}")


def _layer_name(module: nn.Module) -> str:
    return f"{type(module).__name__} '{module.name}'" if module.name else type(module).__name__


class Conv2D(nn.Module):
    """2-D convolution over NHWC images, with optional bias and activation.

    Computes ``act(conv(x, kernel) + bias)`` where ``kernel`` has shape
    ``(kh, kw, C_in, filters)``; parameters = ``kh*kw*C_in*filters + filters``.

    Attributes:
      filters: number of output channels.
      kernel_size: ``k`` or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)``.
      padding: ``"valid"`` (no padding; output shrinks by ``k-1``), ``"same"``
        (zero padding so that output size = ``ceil(input / stride)``), or an int
        ``p`` (a pair ``(ph, pw)``): ``p`` zero rows and columns on every side, as
        PyTorch's ``padding=p``.
      activation: name of an activation (``"relu"``, ...) or None for linear.
      use_bias: add a learned bias per filter.
      kernel_init, bias_init: initialisers (Glorot uniform and zeros, as Keras).
      dtype: computation dtype (None: from inputs and params); params stay in
        ``param_dtype``.
      impl: ``"auto"``, ``"xla"`` or ``"fast"``: see :mod:`jaxcnn.ops`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y, v = Conv2D(8, 3).init_with_output(jax.random.key(0), jnp.ones((2, 6, 6, 3)))
      >>> y.shape, v["params"]["kernel"].shape
      ((2, 4, 4, 8), (3, 3, 3, 8))
    """

    filters: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str | int | tuple[int, int] = "valid"
    activation: str | None = "relu"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.glorot_uniform()
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        name = _layer_name(self)
        if not isinstance(self.filters, int) or self.filters < 1:
            raise ShapeError(f"{name}: filters must be a positive int; got {self.filters!r}")
        kernel_size = _pair(self.kernel_size, "kernel_size", name)
        strides = _pair(self.strides, "strides", name)
        padding = _padding(self.padding, name)
        act = _activation(self.activation, name)
        _check_window(x, kernel_size, strides, padding, name, "kernel")
        kernel = self.param(
            "kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.filters), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.filters,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = ops.conv2d(x, kernel, strides=strides, padding=padding, impl=self.impl)
        if bias is not None:
            y = y + bias
        return act(y) if act is not None else y


class _Pool2D(nn.Module):
    pool_size: int | tuple[int, int] = 2
    strides: int | tuple[int, int] | None = None
    padding: str | int | tuple[int, int] = "valid"

    def _geometry(self, x: Array):
        name = _layer_name(self)
        window = _pair(self.pool_size, "pool_size", name)
        strides = window if self.strides is None else _pair(self.strides, "strides", name)
        padding = _padding(self.padding, name)
        _check_window(x, window, strides, padding, name, "pool window")
        return window, strides, padding


class MaxPooling2D(_Pool2D):
    """Max pooling: the largest value in each ``pool_size`` window, per channel.

    No parameters. ``strides`` default to ``pool_size`` (non-overlapping
    windows), so a 2x2 pool halves height and width.

    Attributes:
      pool_size: ``p`` or ``(ph, pw)``.
      strides: ``s`` or ``(sh, sw)``; None means ``pool_size``.
      padding: ``"valid"``, ``"same"`` or an int (pair): rows and columns of ``-inf``
        on every side.
      impl: ``"auto"``, ``"xla"`` or ``"fast"``: see :mod:`jaxcnn.ops`.

    Example:
      >>> import jax.numpy as jnp
      >>> MaxPooling2D(2).apply({}, jnp.ones((1, 28, 28, 32))).shape
      (1, 14, 14, 32)
    """

    impl: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        window, strides, padding = self._geometry(x)
        return ops.max_pool(x, window, strides, padding, impl=self.impl)


class AvgPooling2D(_Pool2D):
    """Average pooling: the mean of each ``pool_size`` window, per channel.

    Used by Flax's MNIST example CNN (the ``flax_cnn`` model of :data:`jaxcnn.models.ZOO`).

    Attributes:
      pool_size: ``p`` or ``(ph, pw)``.
      strides: ``s`` or ``(sh, sw)``; None means ``pool_size``.
      padding: ``"valid"`` or ``"same"``.
      impl: ``"auto"``, ``"xla"`` or ``"fast"``: see :mod:`jaxcnn.ops`.

    Example:
      >>> import jax.numpy as jnp
      >>> AvgPooling2D(2).apply({}, jnp.ones((1, 8, 8, 4))).shape
      (1, 4, 4, 4)
    """

    impl: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        window, strides, padding = self._geometry(x)
        return ops.avg_pool(x, window, strides, padding, impl=self.impl)


class GlobalAvgPooling2D(nn.Module):
    """Mean over height and width: ``(N, H, W, C) -> (N, C)``.

    An alternative to :class:`Flatten` before the dense layers, with no
    dependence of the parameter count on the image size.

    Example:
      >>> import jax.numpy as jnp
      >>> GlobalAvgPooling2D().apply({}, jnp.ones((2, 7, 7, 64))).shape
      (2, 64)
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _check_nhwc(x, _layer_name(self))
        return jnp.mean(x, axis=(1, 2))


class Dropout(nn.Module):
    """Inverted dropout.

    While training, each unit is zeroed with probability ``rate`` and the kept
    units are scaled by ``1 / (1 - rate)``, so the expected activation is
    unchanged and nothing needs scaling at test time. In evaluation
    (``train=False``, the default) the layer is the identity.

    The mask comes from the ``"dropout"`` PRNG collection:
    ``model.apply(v, x, train=True, rngs={"dropout": key})``. Training without
    that key is an error, never a silent no-op.

    Attributes:
      rate: probability of dropping a unit, in ``[0, 1)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> d = Dropout(0.5)
      >>> x = jnp.ones((1, 8))
      >>> bool((d.apply({}, x) == x).all())  # evaluation: identity
      True
      >>> y = d.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
      >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [2.0], [0.0])
      True
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        name = _layer_name(self)
        if not (isinstance(self.rate, (int, float)) and 0.0 <= self.rate < 1.0):
            raise ShapeError(
                f"{name}: rate must be in [0, 1); got {self.rate!r}. A rate of 1 would drop "
                "every unit; use e.g. 0.5."
            )
        if not train or self.rate == 0.0:
            return x
        if not self.has_rng("dropout"):
            raise ShapeError(
                f"{name}: training with dropout needs a PRNG key: call "
                "apply(..., train=True, rngs={'dropout': key}), or train=False to evaluate."
            )
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last (Ioffe and Szegedy, 2015).

    Training (``train=True``) normalises each channel by the mean and variance
    of the batch, ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``, and
    updates the running statistics in the ``"batch_stats"`` collection::

        running = momentum * running + (1 - momentum) * batch_statistic

    Evaluation (the default) normalises by the running statistics instead, so
    a prediction does not depend on the rest of its batch. The default
    ``momentum=0.9`` is PyTorch's default update, which PyTorch writes as
    ``momentum=0.1`` (its momentum is ``1 -`` ours); Flax and Keras default
    to 0.99, a slower average. The running variance is the
    biased batch variance, as in Flax and Keras (PyTorch keeps the unbiased one,
    larger by ``n / (n - 1)``).

    Statistics, the normalisation, ``scale`` and ``bias`` are computed in
    float32 whatever the input dtype (the variance in two passes, which stays
    accurate for inputs with a large mean); the output returns to the compute
    dtype. Under ``jit`` with a batch sharded over several devices, the means
    are over the global batch: XLA adds the cross-device sums.

    Train with the collection mutable: ``y, updates = model.apply(variables, x,
    train=True, mutable=["batch_stats"])``; :func:`jaxcnn.training.train_step`
    does this and carries ``batch_stats`` in the train state.

    Attributes:
      momentum: weight of the old running value per update, in ``[0, 1)``.
      epsilon: added to the variance, ``> 0``.
      use_scale, use_bias: learn a per-channel scale (``gamma``, initialised to
        1) and bias (``beta``, initialised to 0).
      activation: applied after the normalisation (None: none).
      axis_name: a mapped axis to average the statistics over (``shard_map`` or
        ``pmap``; not needed under ``jit``).
      dtype, param_dtype: output and parameter dtypes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> bn = BatchNorm()
      >>> x = jnp.arange(8.0).reshape(4, 2)
      >>> v = bn.init(jax.random.key(0), x)
      >>> y, updates = bn.apply(v, x, train=True, mutable=["batch_stats"])
      >>> [round(float(a), 3) for a in y[:, 0]]
      [-1.342, -0.447, 0.447, 1.342]
      >>> [round(float(a), 2) for a in updates["batch_stats"]["mean"]]
      [0.3, 0.4]
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    activation: str | None = None
    axis_name: str | None = None
    scale_init: Callable = nn.initializers.ones_init()
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _check_rank(self, x: Array, name: str) -> None:
        if x.ndim < 2:
            raise ShapeError(f"{name}: expects (N, ..., C); got shape {tuple(x.shape)}")

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        name = _layer_name(self)
        if not (isinstance(self.momentum, (int, float)) and not isinstance(self.momentum, bool)
                and 0.0 <= self.momentum < 1.0):
            raise ShapeError(f"{name}: momentum must be in [0, 1), e.g. 0.9 (PyTorch's 0.1); "
                             f"got {self.momentum!r}")
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0):
            raise ShapeError(f"{name}: epsilon must be > 0, e.g. 1e-5; got {self.epsilon!r}")
        self._check_rank(x, name)
        act = _activation(self.activation, name)
        features = x.shape[-1]
        mean_v = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        var_v = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x32 = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
            if not self.is_initializing():
                if not self.is_mutable_collection("batch_stats"):
                    raise ShapeError(
                        f"{name}: training updates the running statistics; call apply(..., "
                        "train=True, mutable=['batch_stats']), or train=False to evaluate.")
                m = jnp.float32(self.momentum)
                mean_v.value = m * mean_v.value + (1 - m) * mean
                var_v.value = m * var_v.value + (1 - m) * var
        else:
            mean, var = mean_v.value, var_v.value
        mul = jax.lax.rsqrt(var + jnp.float32(self.epsilon))
        if self.use_scale:
            mul = mul * self.param("scale", self.scale_init, (features,),
                                   self.param_dtype).astype(jnp.float32)
        y = (x32 - mean) * mul
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (features,),
                               self.param_dtype).astype(jnp.float32)
        y = act(y) if act is not None else y
        return y.astype(self.dtype or x.dtype)


class BatchNorm2D(BatchNorm):
    """:class:`BatchNorm` over ``(N, H, W, C)`` feature maps (Keras/PyTorch's 2-D form).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> BatchNorm2D().init(jax.random.key(0), jnp.ones((2, 4, 4, 8)))["batch_stats"]["var"].shape
      (8,)
    """

    def _check_rank(self, x: Array, name: str) -> None:
        if x.ndim != 4:
            raise ShapeError(f"{name}: expects feature maps (N, H, W, C); got shape "
                             f"{tuple(x.shape)}. Use BatchNorm1D after Flatten or Dense.")


class BatchNorm1D(BatchNorm):
    """:class:`BatchNorm` over ``(N, features)``, e.g. after a dense layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> BatchNorm1D().init(jax.random.key(0), jnp.ones((2, 16)))["params"]["scale"].shape
      (16,)
    """

    def _check_rank(self, x: Array, name: str) -> None:
        if x.ndim != 2:
            raise ShapeError(f"{name}: expects (N, features); got shape {tuple(x.shape)}. Use "
                             "BatchNorm2D on feature maps.")


class Activation(nn.Module):
    """An activation function as a layer (Keras's ``Activation``), e.g. after a residual add.

    Attributes:
      activation: its name (``"relu"``, ``"gelu"``, ...: :data:`ACTIVATIONS`).

    Example:
      >>> import jax.numpy as jnp
      >>> Activation("relu").apply({}, jnp.array([-1.0, 2.0])).tolist()
      [0.0, 2.0]
    """

    activation: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = _activation(self.activation, _layer_name(self))
        return act(x) if act is not None else x


class Flatten(nn.Module):
    """Flattens every axis but the batch axis: ``(N, H, W, C) -> (N, H*W*C)``.

    Example:
      >>> import jax.numpy as jnp
      >>> Flatten().apply({}, jnp.ones((2, 5, 5, 64))).shape
      (2, 1600)
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return x.reshape((x.shape[0], -1))


def _affine(module: nn.Module, x: Array, units: int, use_bias: bool) -> Array:
    """``x @ kernel + bias`` with the module's initialisers and dtypes."""
    kernel = module.param("kernel", module.kernel_init, (x.shape[-1], units), module.param_dtype)
    bias = module.param("bias", module.bias_init, (units,), module.param_dtype) if use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)
    y = jnp.dot(x, kernel)
    return y + bias if bias is not None else y


class Dense(nn.Module):
    """Fully connected layer: ``act(x @ kernel + bias)`` over the last axis.

    Attributes:
      units: output features.
      activation: activation name or None (linear).
      use_bias: add a learned bias.
      kernel_init, bias_init: Glorot uniform and zeros, as Keras.
      dtype, param_dtype: computation and parameter dtypes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y, v = Dense(10).init_with_output(jax.random.key(0), jnp.ones((2, 1600)))
      >>> y.shape, v["params"]["kernel"].shape
      ((2, 10), (1600, 10))
    """

    units: int
    activation: str | None = None
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.glorot_uniform()
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        name = _layer_name(self)
        if not isinstance(self.units, int) or self.units < 1:
            raise ShapeError(f"{name}: units must be a positive int; got {self.units!r}")
        act = _activation(self.activation, name)
        if x.ndim != 2:
            raise ShapeError(
                f"{name}: expects (N, features); got shape {tuple(x.shape)}. Put a Flatten "
                "or GlobalAvgPooling2D layer before it."
            )
        y = _affine(self, x, self.units, self.use_bias)
        return act(y) if act is not None else y


class SoftmaxOutput(nn.Module):
    """The classifier head: a dense layer with one unit per class.

    It returns *logits* ``z``; the class probabilities are ``softmax(z)``.
    Training feeds the logits to softmax cross-entropy
    (``log_softmax`` computed stably, never ``log(softmax(z))``), and
    :func:`jaxcnn.training.predict` applies the softmax. Keras's
    ``Dense(n, activation="softmax")`` is the same layer with the softmax folded in.

    Attributes:
      num_classes: number of classes.
      use_bias: add a learned bias per class.
      scale: multiply the logits by this constant (airbench's output ``Mul(1/9)``:
        a temperature fixed before training; 1: none).
      dtype, param_dtype: computation and parameter dtypes. Logits are always
        returned in float32, so the loss is computed in full precision.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> head = SoftmaxOutput(10)
      >>> logits, v = head.init_with_output(jax.random.key(0), jnp.ones((2, 64)))
      >>> jnp.allclose(jax.nn.softmax(logits).sum(-1), 1.0).item()
      True
    """

    num_classes: int
    use_bias: bool = True
    scale: float = 1.0
    kernel_init: Callable = nn.initializers.glorot_uniform()
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        name = _layer_name(self)
        if not (isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
                and self.scale > 0):
            raise ShapeError(f"{name}: scale must be a number > 0; got {self.scale!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ShapeError(f"{name}: num_classes must be an int >= 2; got {self.num_classes!r}")
        if x.ndim != 2:
            raise ShapeError(
                f"{name}: expects (N, features); got shape {tuple(x.shape)}. Put a Flatten "
                "or GlobalAvgPooling2D layer before the output layer."
            )
        logits = _affine(self, x, self.num_classes, self.use_bias).astype(jnp.float32)
        return logits if self.scale == 1 else logits * jnp.float32(self.scale)


__all__ = [
    "ACTIVATIONS", "Activation", "AvgPooling2D", "BatchNorm", "BatchNorm1D", "BatchNorm2D",
    "Conv2D", "Dense", "Dropout", "Flatten", "GlobalAvgPooling2D",
    "MaxPooling2D", "PADDINGS", "SoftmaxOutput",
]
