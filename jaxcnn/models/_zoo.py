"""The model zoo: named specs (the Keras and Flax MNIST CNNs, ResNets, airbench94's
network), the functions that write ResNet and airbench specs, and :func:`build_model`."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import flax.linen as nn

from jaxcnn.errors import SpecError, did_you_mean
from jaxcnn.models._sequential import Sequential
from jaxcnn.models._spec import _ALIASES, LayerSpec, _check_layer_spec, parse_spec

# ---------------------------------------------------------------------------
# The zoo

ZOO: dict[str, tuple[str, str]] = {
    "seed_cnn": (
        "conv(32, 3, padding=same) maxpool(2) dropout(0.25) "
        "conv(64, 3, padding=same) maxpool(2) dropout(0.25) "
        "flatten dense(128, relu) dropout(0.5) softmax",
        "Two Conv+ReLU / MaxPool / Dropout 0.25 blocks (32, 64 filters, 'same' padding), "
        "Dense 128, Dropout 0.5, softmax. Fits 8x8 digits as well as 28x28 and 32x32 images.",
    ),
    "keras_convnet": (
        "conv(32, 3) maxpool(2) conv(64, 3) maxpool(2) flatten dropout(0.5) softmax",
        "The Keras 'simple MNIST convnet' example: 34,826 parameters on 28x28x1, 10 classes.",
    ),
    "flax_cnn": (
        "conv(32, 3, padding=same) avgpool(2) conv(64, 3, padding=same) avgpool(2) "
        "flatten dense(256, relu) softmax",
        "The CNN of Flax's linen MNIST example: 824,458 parameters on 28x28x1, 10 classes.",
    ),
}


def _conv_bn(filters: int, kernel: int, strides: int = 1, act: str | None = "relu",
             padding: int | None = None) -> str:
    """A bias-free convolution and batch norm (and activation): the unit of a ResNet."""
    pad = kernel // 2 if padding is None else padding
    stride = f", {strides}" if strides != 1 else ""
    bn = f"bn({act})" if act else "bn"
    return f"conv({filters}, {kernel}{stride}, none, padding={pad}, bias=false) {bn}"


def resnet_spec(blocks: Sequence[int], *, bottleneck: bool, stem: str = "imagenet",
                widths: Sequence[int] = (64, 128, 256, 512)) -> str:
    """Spec text of a ResNet v1.5 (torchvision's layout: the stride on the 3x3 convolution).

    Args:
      blocks: residual blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18,
        ``(3, 4, 6, 3)`` for ResNet-50.
      bottleneck: 1x1-3x3-1x1 bottleneck blocks (4x wider output) instead of
        two 3x3 convolutions.
      stem: ``"imagenet"`` (7x7/2 convolution and 3x3/2 max-pool) or
        ``"cifar"`` (one 3x3 convolution, no pool: for 32x32 images).
      widths: the stages' widths (a bottleneck block outputs 4x its width).

    Returns:
      Spec text ending in ``gap softmax`` (the class count comes from the data).

    Example:
      >>> from jaxcnn.models import summary
      >>> spec = resnet_spec((1, 1), bottleneck=False, stem="cifar", widths=(16, 32))
      >>> summary(build_model(spec, 10), (32, 32, 3)).params
      19994
    """
    if stem == "imagenet":
        parts = [_conv_bn(widths[0], 7, 2, padding=3), "maxpool(3, 2, padding=1)"]
    elif stem == "cifar":
        parts = [_conv_bn(widths[0], 3)]
    else:
        raise SpecError(f"stem must be 'imagenet' or 'cifar'; got {stem!r}")
    channels = widths[0]
    for stage, (count, width) in enumerate(zip(blocks, widths)):
        out = width * 4 if bottleneck else width
        for b in range(count):
            stride = 2 if stage > 0 and b == 0 else 1
            if bottleneck:
                body = [_conv_bn(width, 1), _conv_bn(width, 3, stride), _conv_bn(out, 1, act=None)]
            else:
                body = [_conv_bn(width, 3, stride), _conv_bn(width, 3, act=None)]
            text = " ".join(body)
            if stride != 1 or channels != out:
                text += ", shortcut=" + _conv_bn(out, 1, stride, act=None)
            parts.append(f"residual({text}) relu")
            channels = out
    parts.append("gap softmax")
    return " ".join(parts)


def cifar_speed_spec(widths: Sequence[int] = (64, 256, 256)) -> str:
    """Spec text of airbench94's network (Jordan, 2024), without its whitening initialisation.

    A 2x2 convolution of 24 filters with bias and GELU (airbench initialises it
    from the data's patch covariance and freezes its weights; here it is an
    ordinary trained layer), then three groups of conv 3x3 - max-pool 2 -
    batch norm - GELU - conv 3x3 - batch norm - GELU (no conv biases; batch
    norms without a learned scale, momentum 0.6 in our convention, epsilon
    1e-12), a 3x3 max-pool, and a bias-free linear head whose logits are
    scaled by 1/9. 1,971,640 parameters on 32x32x3 with 10 classes (airbench's
    PyTorch model counts 1,152 more: its batch norms hold a frozen weight of ones,
    which PyTorch counts as parameters; ``jaxcnn.compare`` builds the bias-only form).

    Example:
      >>> from jaxcnn.models import summary
      >>> summary(build_model(cifar_speed_spec(), 10), (32, 32, 3)).params
      1971640
    """
    bn = "bn(gelu, 0.6, 1e-12, use_scale=false)"
    parts = ["conv(24, 2, none) gelu"]
    for width in widths:
        parts.append(f"conv({width}, 3, none, padding=same, bias=false) maxpool(2) {bn} "
                     f"conv({width}, 3, none, padding=same, bias=false) {bn}")
    parts.append(f"maxpool(3) flatten softmax(bias=false, scale={1 / 9!r})")
    return " ".join(parts)


ZOO.update({
    "resnet18": (
        resnet_spec((2, 2, 2, 2), bottleneck=False),
        "ResNet-18 (He et al., 2016; torchvision's layout): 11,689,512 parameters on "
        "224x224x3 with 1,000 classes.",
    ),
    "resnet50": (
        resnet_spec((3, 4, 6, 3), bottleneck=True),
        "ResNet-50 v1.5 (torchvision's layout, stride on the 3x3 convolution): 25,557,032 "
        "parameters on 224x224x3 with 1,000 classes.",
    ),
    "resnet18_cifar": (
        resnet_spec((2, 2, 2, 2), bottleneck=False, stem="cifar"),
        "ResNet-18 with a 3x3 stem and no stem pool, for 32x32 images: 11,173,962 "
        "parameters with 10 classes.",
    ),
    "cifar_speed": (
        cifar_speed_spec(),
        "airbench94's CIFAR-10 network without whitening init (see cifar_speed_spec): "
        "conv-BatchNorm-GELU groups of 64/256/256.",
    ),
})
DEFAULT_MODEL = "seed_cnn"


def model_spec(name_or_spec: str) -> list[LayerSpec]:
    """Returns the layer specs of a zoo model name, or parses spec text.

    Example:
      >>> len(model_spec("keras_convnet"))
      7
    """
    key = name_or_spec.strip()
    if key in ZOO:
        return parse_spec(ZOO[key][0])
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) and key.lower() not in _ALIASES:
        raise SpecError(f"unknown model {key!r}; known models: {', '.join(sorted(ZOO))}, or "
                        "give spec text such as 'conv(32,3) maxpool(2) flatten softmax'."
                        + did_you_mean(key, list(ZOO)))
    return parse_spec(key)


def build_model(
    model: "str | Sequence[nn.Module | LayerSpec]",
    num_classes: int | None = None,
    *,
    dtype: str | None = None,
    impl: str = "auto",
) -> Sequential:
    """Builds a :class:`Sequential` model from a zoo name, spec text or layers.

    The output layer's class count is filled from ``num_classes`` when the
    spec leaves it out; a softmax output is appended when the spec has none.

    Args:
      model: a zoo name (``"seed_cnn"``, ``"keras_convnet"``, ``"flax_cnn"``),
        spec text, or a list of layer modules / :class:`LayerSpec`.
      num_classes: the number of classes of the data.
      dtype: computation dtype (None for float32 everywhere, or ``"bfloat16"``).
      impl: ``"auto"``, ``"xla"`` or ``"fast"`` (:mod:`jaxcnn.ops`).

    Returns:
      An unbound :class:`Sequential`.

    Example:
      >>> from jaxcnn.models import to_spec
      >>> from jaxcnn.layers import Conv2D, MaxPooling2D, Flatten, Dense
      >>> m = build_model([Conv2D(16, 3), MaxPooling2D(2), Flatten(), Dense(32, "relu")], 10)
      >>> to_spec(m.layers)
      'conv(16, 3) maxpool(2) flatten dense(32, relu) softmax(10)'
    """
    if isinstance(model, str):
        specs = model_spec(model)
    elif isinstance(model, Iterable):
        specs = [LayerSpec.of(m) for m in model]
    else:
        raise SpecError(f"model must be a zoo name, spec text or a list of layers; got "
                        f"{type(model).__name__}")
    if not specs:
        raise SpecError("the model has no layers")
    for i, spec in enumerate(specs):
        _check_layer_spec(spec, i)
    if specs[-1].kind != "SoftmaxOutput":
        if num_classes is None:
            raise SpecError("the model has no output layer and num_classes is not known; end "
                            "the spec with 'softmax(N)' or pass num_classes")
        specs.append(LayerSpec("SoftmaxOutput", ()))
    for i, spec in enumerate(specs):
        if spec.kind == "SoftmaxOutput" and i != len(specs) - 1:
            raise SpecError(f"the softmax output must be the last layer; found it at layer {i + 1} "
                            f"of {len(specs)}")
    out = specs[-1].kwargs()
    if "num_classes" not in out:
        if num_classes is None:
            raise SpecError("the output layer's number of classes is not known; write "
                            "'softmax(N)' or pass num_classes")
        specs[-1] = LayerSpec("SoftmaxOutput",
                              (("num_classes", int(num_classes)), *specs[-1].args))
    elif num_classes is not None and out["num_classes"] != num_classes:
        raise SpecError(f"the spec's output layer has {out['num_classes']} classes but the data has "
                        f"{num_classes}; write 'softmax' to take the data's count")
    if dtype not in (None, "float32", "bfloat16", "float16"):
        raise SpecError(f"dtype must be float32, bfloat16 or float16; got {dtype!r}")
    return Sequential(tuple(specs), dtype=None if dtype == "float32" else dtype, impl=impl)
