"""The containers: :class:`Sequential` (a model) and :class:`Residual` (a block with a
skip connection), both built from layer specs, and the names of their layers."""

from __future__ import annotations

import re
from typing import Iterable

import flax.linen as nn
import jax

from jaxcnn.errors import ShapeError
from jaxcnn.models._spec import _BATCH_NORMS, LAYER_TYPES, TAKES_TRAIN, LayerSpec

# ---------------------------------------------------------------------------
# The Sequential model


class Sequential(nn.Module):
    """A stack of layers applied in order; returns class logits.

    Attributes:
      layers: the layer specs (see :class:`LayerSpec`, :func:`parse_spec`,
        :func:`build_model`).
      dtype: computation dtype for every layer (``"bfloat16"`` for mixed
        precision); parameters stay float32 and logits are float32.
      impl: convolution and pooling implementation (:mod:`jaxcnn.ops`).

    Call it as ``model.apply(variables, images, train=False)``; with
    ``train=True`` pass ``rngs={"dropout": key}`` (and, for a model with
    batch normalisation, ``mutable=["batch_stats"]``).

    Example:
      >>> from jaxcnn.models import build_model
      >>> import jax, jax.numpy as jnp
      >>> model = build_model("conv(8,3) maxpool(2) flatten softmax", num_classes=10)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
      >>> model.apply(variables, jnp.zeros((5, 8, 8, 1))).shape
      (5, 10)
    """

    layers: tuple[LayerSpec, ...]
    dtype: str | None = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim == 3:  # a batch of grayscale images without a channel axis
            x = x[..., None]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        return _run_layers(self.layers, x, train, self.dtype, self.impl)


def _run_layers(specs: Iterable[LayerSpec], x: jax.Array, train: bool, dtype, impl: str,
                prefix: str = "") -> jax.Array:
    """Builds each spec's layer (inside the calling compact module) and applies it."""
    for name, spec in layer_names(specs):
        layer = spec.build(name=prefix + name, dtype=dtype, impl=impl)
        x = layer(x, train=train) if spec.kind in TAKES_TRAIN else layer(x)
    return x


class Residual(nn.Module):
    """A block with a skip connection: ``body(x) + shortcut(x)``.

    The shortcut is the identity unless ``shortcut`` gives layers (a
    projection, typically a strided 1x1 convolution and batch norm, when the
    body changes the shape). The sum's activation, if any, is the next layer
    (``relu`` in a ResNet). Spec text::

        residual(conv(64, 3, padding=same, activation=none, use_bias=false) bn(relu)
                 conv(64, 3, padding=same, activation=none, use_bias=false) bn) relu
        residual(conv(128, 3, 2, padding=1, ...) bn(relu) ..., shortcut=conv(128, 1, 2, none) bn)

    Attributes:
      body: the block's layers (:class:`LayerSpec` or layer modules).
      shortcut: the projection's layers; None: the identity.
      dtype, impl: as :class:`Sequential` (set by it for the whole model).

    Example:
      >>> from jaxcnn import layers as L
      >>> import jax, jax.numpy as jnp
      >>> block = residual([L.Conv2D(4, 3, padding="same")], [L.Conv2D(4, 1, use_bias=False)])
      >>> y, v = block.init_with_output(jax.random.key(0), jnp.ones((2, 8, 8, 3)))
      >>> y.shape, sorted(v["params"])
      ((2, 8, 8, 4), ['conv2d_1', 'shortcut_conv2d_1'])
    """

    body: tuple[LayerSpec, ...]
    shortcut: tuple[LayerSpec, ...] | None = None
    dtype: str | None = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = _run_layers(self.body, x, train, self.dtype, self.impl)
        s = (_run_layers(self.shortcut, x, train, self.dtype, self.impl, "shortcut_")
             if self.shortcut else x)
        if y.shape != s.shape:
            where = f"Residual '{self.name}'" if self.name else "Residual"
            fix = (f"conv({y.shape[-1]}, 1, {max(1, s.shape[1] // max(y.shape[1], 1))}, none, "
                   "bias=false) bn" if y.ndim == 4 and s.ndim == 4 else "dense(...)")
            raise ShapeError(
                f"{where}: the block's output {tuple(y.shape[1:])} and its "
                f"{'shortcut' if self.shortcut else 'input (the identity shortcut)'} "
                f"{tuple(s.shape[1:])} differ, so they cannot be added. Give the block a "
                f"projection that matches, e.g. shortcut={fix}, or keep the body's shape.")
        return y + s.astype(y.dtype)


LAYER_TYPES["Residual"] = Residual


def residual(body: Iterable["nn.Module | LayerSpec"],
             shortcut: Iterable["nn.Module | LayerSpec"] | None = None) -> Residual:
    """A :class:`Residual` block from layer modules or specs (the Python form of
    ``residual(...)`` in spec text).

    Example:
      >>> from jaxcnn import layers as L
      >>> block = residual([L.Conv2D(8, 3, padding="same"), L.BatchNorm()])
      >>> LayerSpec.of(block).text()
      'residual(conv(8, 3, padding=same) bn)'
    """
    body = tuple(LayerSpec.of(m) for m in body)
    short = tuple(LayerSpec.of(m) for m in shortcut) if shortcut else None
    return Residual(body, short)


def has_batch_norm(model: "Sequential | Iterable[nn.Module | LayerSpec]") -> bool:
    """Whether any layer of ``model`` (inside residual blocks too) is a batch norm.

    Example:
      >>> from jaxcnn.models import build_model
      >>> has_batch_norm(build_model("resnet18_cifar", 10)), has_batch_norm(build_model("seed_cnn", 10))
      (True, False)
    """
    layers = model.layers if isinstance(model, Sequential) else model
    for spec in (LayerSpec.of(layer) for layer in layers):
        if spec.kind in _BATCH_NORMS:
            return True
        if spec.kind == "Residual":
            kw = spec.kwargs()
            if has_batch_norm(kw["body"]) or has_batch_norm(kw.get("shortcut") or ()):
                return True
    return False


def layer_names(specs: Iterable[LayerSpec]) -> list[tuple[str, LayerSpec]]:
    """Pairs each spec with its Keras-style name (``conv2d_1``, ..., ``output``).

    Example:
      >>> from jaxcnn.models import model_spec
      >>> [n for n, _ in layer_names(model_spec("keras_convnet"))][:3]
      ['conv2d_1', 'max_pooling2d_1', 'conv2d_2']
    """
    counts: dict[str, int] = {}
    out = []
    for spec in specs:
        spec = LayerSpec.of(spec)
        base = _snake(spec.kind)
        counts[base] = counts.get(base, 0) + 1
        out.append(("output" if spec.kind == "SoftmaxOutput" else f"{base}_{counts[base]}", spec))
    return out


def _snake(name: str) -> str:
    return {"Conv2D": "conv2d", "MaxPooling2D": "max_pooling2d", "AvgPooling2D": "avg_pooling2d",
            "GlobalAvgPooling2D": "global_avg_pooling2d", "BatchNorm2D": "batch_norm2d",
            "BatchNorm1D": "batch_norm1d"}.get(name) or re.sub(
                r"(?<!^)(?=[A-Z])", "_", name).lower()
