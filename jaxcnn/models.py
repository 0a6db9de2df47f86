"""Models: a Sequential container built from layer specs, a text form of the
spec, the model zoo, and a Keras-like :func:`summary`.

Spec text grammar
-----------------
A model is a sequence of layers separated by whitespace (or ``,`` / ``>``
outside parentheses)::

    spec   := layer (sep layer)*
    layer  := NAME [ "(" [ arg ("," arg)* ] ")" ]
    arg    := value | KEY "=" value
    value  := INT | FLOAT | INT "x" INT | IDENT

Layer names (case-insensitive) and their positional arguments:

=====================================  ===============================  ======================
name (aliases)                         positional arguments             layer
=====================================  ===============================  ======================
``conv`` (``conv2d``)                  filters, kernel_size, strides    :class:`~jaxcnn.layers.Conv2D`
``maxpool`` (``pool``, ``max_pool``)   pool_size, strides               :class:`~jaxcnn.layers.MaxPooling2D`
``avgpool`` (``avg_pool``)             pool_size, strides               :class:`~jaxcnn.layers.AvgPooling2D`
``gap`` (``global_avg_pool``)          (none)                           :class:`~jaxcnn.layers.GlobalAvgPooling2D`
``dropout``                            rate                             :class:`~jaxcnn.layers.Dropout`
``flatten``                            (none)                           :class:`~jaxcnn.layers.Flatten`
``dense``                              units, activation                :class:`~jaxcnn.layers.Dense`
``softmax`` (``output``)               num_classes (default: dataset's) :class:`~jaxcnn.layers.SoftmaxOutput`
``bn`` (``batchnorm``), ``bn2d``,      momentum, epsilon                :class:`~jaxcnn.layers.BatchNorm`
``bn1d``
``act`` or a bare ``relu``, ``gelu``   activation                       :class:`~jaxcnn.layers.Activation`
``residual(LAYERS, shortcut=LAYERS)``  (layers)                         :class:`Residual`
=====================================  ===============================  ======================

A bare identifier among a conv or pool layer's arguments is a padding
(``same``/``valid``) or an activation (``relu``, ``none``, ...); so is one of a
``bn`` (``bn(relu)``). ``padding`` may also be an int, PyTorch's explicit padding.
``residual(...)`` holds layers, and after ``shortcut=`` its projection's. ``3x3`` is a
pair. Keywords are the layer's attribute names (``kernel`` and ``stride`` are
accepted for ``kernel_size`` and ``strides``; ``bias`` for ``use_bias``).

Example, the Keras MNIST convnet::

    conv(32, 3) maxpool(2) conv(64, 3) maxpool(2) flatten dropout(0.5) softmax
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import unicodedata
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import layers as L
from jaxcnn import provenance
from jaxcnn.errors import ShapeError, SpecError, did_you_mean

# ---------------------------------------------------------------------------
# Layer specs


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A layer as plain, hashable data: its class name and its arguments.

    Sequential models hold specs rather than modules, so a model's
    architecture is a value that can be compared, hashed, written to JSON and
    printed as spec text.

    Attributes:
      kind: the layer class name, e.g. ``"Conv2D"``.
      args: ``(name, value)`` pairs of the layer's non-default arguments.

    Example:
      >>> spec = LayerSpec.of(L.Conv2D(32, 3, padding="same"))
      >>> spec
      LayerSpec(kind='Conv2D', args=(('filters', 32), ('kernel_size', 3), ('padding', 'same')))
      >>> spec.text()
      'conv(32, 3, padding=same)'
    """

    kind: str
    args: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def of(layer: "nn.Module | LayerSpec") -> "LayerSpec":
        """Returns the spec of an (unbound) layer module, or ``layer`` if already a spec."""
        if isinstance(layer, LayerSpec):
            return layer
        kind = type(layer).__name__
        if kind not in LAYER_TYPES:
            raise SpecError(f"{kind} is not a jaxcnn layer; use one of {sorted(LAYER_TYPES)}")
        args = []
        for f in dataclasses.fields(layer):
            if f.name in ("parent", "name") or f.name in _COMMON_FIELDS or not f.init:
                continue
            value = getattr(layer, f.name)
            if (f.default is not dataclasses.MISSING and value == f.default
                    and f.name not in _ALWAYS):
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                pass  # required argument: always recorded
            elif callable(value) and not isinstance(value, str):
                raise SpecError(
                    f"{kind}.{f.name} is a custom function; specs hold only plain values. Build "
                    "the model as your own linen module to use custom initialisers."
                )
            args.append((f.name, _freeze(value)))
        return LayerSpec(kind, tuple(args))

    def kwargs(self) -> dict[str, Any]:
        """The arguments as a dict."""
        return dict(self.args)

    def build(self, **common: Any) -> nn.Module:
        """Instantiates the layer module.

        ``common`` holds name, parent, dtype and impl; each applies where the
        layer has that attribute (None values are skipped, except parent).
        """
        cls = LAYER_TYPES[self.kind]
        names = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in common.items()
                 if k == "parent" or (k in names and v is not None)}
        try:
            return cls(**self.kwargs(), **extra)
        except TypeError as e:
            raise SpecError(f"{self.kind}: {e}") from None

    def text(self) -> str:
        """The spec text of this layer (the inverse of :func:`parse_spec`)."""
        name = _TEXT_NAME[self.kind]
        kwargs = self.kwargs()
        if self.kind == "Residual":
            inner = " ".join(s.text() for s in kwargs["body"])
            if kwargs.get("shortcut"):
                inner += ", shortcut=" + " ".join(s.text() for s in kwargs["shortcut"])
            return f"residual({inner})"
        if self.kind == "Activation" and kwargs.get("activation") in _ACTIVATION_LAYERS:
            return kwargs["activation"]
        positional = []
        for key in _POSITIONAL[self.kind]:
            if key not in kwargs:
                break
            positional.append(_fmt(kwargs.pop(key)))
        parts = positional + [f"{k}={_fmt(v)}" for k, v in kwargs.items()]
        return f"{name}({', '.join(parts)})" if parts else name


def _freeze(value):
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (nn.Module, LayerSpec)) for v in value):
        return tuple(LayerSpec.of(v) for v in value)  # a block's layers
    return tuple(value) if isinstance(value, list) else value


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


LAYER_TYPES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        L.Conv2D,
        L.MaxPooling2D,
        L.AvgPooling2D,
        L.GlobalAvgPooling2D,
        L.Dropout,
        L.Flatten,
        L.Dense,
        L.BatchNorm,
        L.BatchNorm2D,
        L.BatchNorm1D,
        L.Activation,
        L.SoftmaxOutput,
    )
}  # and Residual, defined below
# Layers whose behaviour differs between training and evaluation: they take ``train=``.
TAKES_TRAIN = ("Dropout", "BatchNorm", "BatchNorm2D", "BatchNorm1D", "Residual")
_BATCH_NORMS = ("BatchNorm", "BatchNorm2D", "BatchNorm1D")
# Arguments recorded even at their default value, because they make a spec readable.
_ALWAYS = {"pool_size"}
# Fields set for the whole model by Sequential, not per layer in a spec.
_COMMON_FIELDS = {"dtype", "param_dtype", "impl"}
_ALIASES = {
    "conv": "Conv2D", "conv2d": "Conv2D",
    "maxpool": "MaxPooling2D", "pool": "MaxPooling2D", "max_pool": "MaxPooling2D",
    "maxpooling2d": "MaxPooling2D", "max_pooling2d": "MaxPooling2D",
    "avgpool": "AvgPooling2D", "avg_pool": "AvgPooling2D", "avgpooling2d": "AvgPooling2D",
    "averagepooling2d": "AvgPooling2D",
    "gap": "GlobalAvgPooling2D", "global_avg_pool": "GlobalAvgPooling2D",
    "globalaveragepooling2d": "GlobalAvgPooling2D", "globalavgpooling2d": "GlobalAvgPooling2D",
    "dropout": "Dropout",
    "flatten": "Flatten",
    "dense": "Dense", "linear": "Dense",
    "softmax": "SoftmaxOutput", "output": "SoftmaxOutput", "softmaxoutput": "SoftmaxOutput",
    "bn": "BatchNorm", "batchnorm": "BatchNorm", "batch_norm": "BatchNorm",
    "batchnormalization": "BatchNorm",
    "bn2d": "BatchNorm2D", "batchnorm2d": "BatchNorm2D",
    "bn1d": "BatchNorm1D", "batchnorm1d": "BatchNorm1D",
    "act": "Activation", "activation": "Activation",
    "residual": "Residual", "res": "Residual",
}
# A bare activation name is a layer too: ``relu`` is ``act(relu)``.
_ACTIVATION_LAYERS = {name for name in L.ACTIVATIONS if name not in ("linear", "none")}
_TEXT_NAME = {
    "Conv2D": "conv", "MaxPooling2D": "maxpool", "AvgPooling2D": "avgpool",
    "GlobalAvgPooling2D": "gap", "Dropout": "dropout", "Flatten": "flatten",
    "Dense": "dense", "SoftmaxOutput": "softmax", "BatchNorm": "bn", "BatchNorm2D": "bn2d",
    "BatchNorm1D": "bn1d", "Activation": "act", "Residual": "residual",
}
_POSITIONAL = {
    "Conv2D": ("filters", "kernel_size", "strides"),
    "MaxPooling2D": ("pool_size", "strides"),
    "AvgPooling2D": ("pool_size", "strides"),
    "GlobalAvgPooling2D": (),
    "Dropout": ("rate",),
    "Flatten": (),
    "Dense": ("units", "activation"),
    "SoftmaxOutput": ("num_classes",),
    "BatchNorm": ("momentum", "epsilon"),
    "BatchNorm2D": ("momentum", "epsilon"),
    "BatchNorm1D": ("momentum", "epsilon"),
    "Activation": ("activation",),
    "Residual": (),
}
_KEY_ALIASES = {"kernel": "kernel_size", "stride": "strides", "bias": "use_bias",
                "act": "activation", "pool": "pool_size", "classes": "num_classes",
                "eps": "epsilon"}
_SPEC_KEYS = {
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "activation", "use_bias"),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "AvgPooling2D": ("pool_size", "strides", "padding"),
    "GlobalAvgPooling2D": (),
    "Dropout": ("rate",),
    "Flatten": (),
    "Dense": ("units", "activation", "use_bias"),
    "SoftmaxOutput": ("num_classes", "use_bias", "scale"),
    "BatchNorm": ("momentum", "epsilon", "use_scale", "use_bias", "activation"),
    "BatchNorm2D": ("momentum", "epsilon", "use_scale", "use_bias", "activation"),
    "BatchNorm1D": ("momentum", "epsilon", "use_scale", "use_bias", "activation"),
    "Activation": ("activation",),
    "Residual": ("body", "shortcut"),
}

# ---------------------------------------------------------------------------
# Spec text parsing

_TOKEN = re.compile(
    r"\s*(?:(?P<pair>\d+x\d+)|(?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),=>|;]))"
)
# The largest size a spec may give (filters, units, classes, kernel, pool, strides). Whether a
# model of such sizes fits in memory is checked by :func:`summary`, before anything is allocated.
MAX_SIZE = 2**31 - 1


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SpecError(_point(text, pos, f"unexpected character {text[pos]!r}"))
        kind = m.lastgroup
        start = m.start(kind)
        tokens.append((kind, m.group(kind), start))
        pos = m.end()
    return tokens


def _point(text: str, pos: int, message: str) -> str:
    """``message``, the spec (escaped, and cut around ``pos`` when long) and a caret under ``pos``."""
    shown, column = _excerpt(text, pos)
    return f"{message} at position {pos} of the spec\n  {shown}\n  {' ' * column}^"


def _excerpt(text: str, pos: int, width: int = 60) -> tuple[str, int]:
    """The text around ``pos`` as printed (control characters escaped) and the caret's column.

    Wide characters take two columns and combining marks none, so the caret stays under the
    character at ``pos``.
    """
    start, end = max(0, pos - width), min(len(text), pos + width)
    out, column, caret = ["..." if start else ""], 3 if start else 0, None
    for k in range(start, end):
        if k == pos:
            caret = column
        c = text[k]
        if not c.isprintable():
            c = c.encode("unicode_escape").decode("ascii")
            column += len(c)
        elif unicodedata.combining(c):
            pass
        else:
            column += 2 if unicodedata.east_asian_width(c) in "WF" else 1
        out.append(c)
    if end < len(text):
        out.append("...")
    return "".join(out), column if caret is None else caret


def _short(token: str, limit: int = 40) -> str:
    return token if len(token) <= limit else f"{token[:24]}...{token[-8:]} ({len(token)} characters)"


def _value(kind: str, tok: str, text: str = "", pos: int = 0):
    try:
        if kind == "pair":
            a, b = tok.split("x")
            return (int(a), int(b))
        if kind == "num":
            return float(tok) if any(c in tok for c in ".eE") else int(tok)
    except ValueError:  # more digits than int() converts
        raise SpecError(_point(text, pos, f"number {_short(tok)} is too long")) from None
    low = tok.lower()
    return {"none": None, "true": True, "false": False}.get(low, low)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _value_problem(layer: str, key: str, value) -> str | None:
    """What is wrong with ``value`` as argument ``key`` of ``layer``; None if nothing."""
    name = _TEXT_NAME[layer]
    if key in ("filters", "units", "num_classes"):
        low = 2 if key == "num_classes" else 1
        if not (_is_int(value) and low <= value <= MAX_SIZE):
            return f"{name}: {key} must be an int from {low} to {MAX_SIZE}"
    elif key in ("kernel_size", "pool_size", "strides"):
        if value is None and key == "strides" and layer != "Conv2D":
            return None  # pools: strides default to the pool size
        sizes = value if isinstance(value, tuple) and len(value) == 2 else (value,)
        if not all(_is_int(v) and 1 <= v <= MAX_SIZE for v in sizes):
            return (f"{name}: {key} must be an int from 1 to {MAX_SIZE} or a pair of them "
                    "such as 3x3")
    elif key == "padding":
        sizes = value if isinstance(value, tuple) and len(value) == 2 else (value,)
        if not ((isinstance(value, str) and value.lower() in L.PADDINGS)
                or all(_is_int(v) and 0 <= v <= MAX_SIZE for v in sizes)):
            return (f"{name}: padding must be {' or '.join(L.PADDINGS)}, an int from 0 to "
                    f"{MAX_SIZE} or a pair of them")
    elif key == "momentum":
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0 <= value < 1):
            return f"{name}: momentum must be a number in [0, 1), e.g. 0.9 (PyTorch's 0.1)"
    elif key in ("epsilon", "scale"):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            return f"{name}: {key} must be a number > 0"
    elif key == "activation":
        if not (value is None or (isinstance(value, str) and value.lower() in L.ACTIVATIONS)):
            return f"{name}: activation must be one of {', '.join(L.ACTIVATIONS)}"
    elif key in ("use_bias", "use_scale"):
        if not (isinstance(value, bool) or (_is_int(value) and value in (0, 1))):
            return f"{name}: {key} must be true or false"
    elif key == "rate":
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0 <= value < 1):
            return f"{name}: rate must be a number in [0, 1), e.g. 0.5"
    return None


def parse_spec(text: str) -> list[LayerSpec]:
    """Parses spec text into a list of :class:`LayerSpec` (grammar: module docstring).

    Every value is checked here (a size is an int from 1 to :data:`MAX_SIZE`, a
    rate is in [0, 1), ...), and each argument may be given once.

    Args:
      text: e.g. ``"conv(32, 3) maxpool(2) flatten softmax"``.

    Returns:
      The layer specs, in order.

    Raises:
      SpecError: with the position of the bad token marked.

    Example:
      >>> [s.text() for s in parse_spec("conv(32,3x3,same) pool(2) flatten dense(10)")]
      ['conv(32, 3x3, padding=same)', 'maxpool(2)', 'flatten', 'dense(10)']
      >>> try:
      ...     parse_spec("conv(32, 3, strides=2, strides=3)")
      ... except SpecError as e:
      ...     print(e)
      conv: strides is given twice at position 23 of the spec
        conv(32, 3, strides=2, strides=3)
                               ^
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError("the model spec is empty; e.g. 'conv(32,3) maxpool(2) flatten softmax'")
    tokens = _tokenize(text)
    specs, i = _parse_layers(text, tokens, 0, inside=None)
    if not specs:
        raise SpecError(f"the model spec {_short(text)!r} has no layers; e.g. "
                        "'conv(32,3) maxpool(2) flatten softmax'")
    return specs


def _is_layer_name(tok: str) -> bool:
    return tok.lower() in _ALIASES or tok.lower() in _ACTIVATION_LAYERS


def _parse_layers(text: str, tokens: list, i: int, inside: str | None
                  ) -> tuple[list[LayerSpec], int]:
    """Parses layers from token ``i`` on; returns them and the index after the last.

    At the top level (``inside`` None) it reads to the end; inside a block
    (``inside`` is its name) it stops before that block's ``)`` or ``shortcut=``.
    """
    specs: list[LayerSpec] = []
    while i < len(tokens):
        kind, tok, pos = tokens[i]
        if kind == "punct" and tok in ",>|;":
            i += 1
            continue
        if inside is not None and (tok == ")" or (
                kind == "ident" and tok.lower() == "shortcut" and i + 1 < len(tokens)
                and tokens[i + 1][1] == "=")):
            return specs, i
        if kind != "ident":
            raise SpecError(_point(text, pos, f"expected a layer name, found {_short(tok)!r}"))
        if tok.lower() in _ACTIVATION_LAYERS and tok.lower() not in _ALIASES:
            # A bare activation name: the layer act(name).
            specs.append(LayerSpec("Activation", (("activation", tok.lower()),)))
            i += 1
            continue
        layer = _ALIASES.get(tok.lower())
        if layer is None:
            names = {a: _TEXT_NAME[k] for a, k in _ALIASES.items()}
            names.update({a: a for a in _ACTIVATION_LAYERS})
            raise SpecError(
                _point(text, pos, f"unknown layer {_short(tok)!r}")
                + f"\nknown layers: {', '.join(sorted(set(_TEXT_NAME.values())))}, and "
                "activations (relu, gelu, ...)."
                + did_you_mean(tok, names)
            )
        i += 1
        if layer == "Residual":
            spec, i = _parse_residual(text, tokens, i, pos)
            specs.append(spec)
            continue
        args, i = _parse_args(text, tokens, i, layer)
        specs.append(_checked_spec(layer, args, text, pos))
    return specs, i


def _parse_residual(text: str, tokens: list, i: int, pos: int) -> tuple[LayerSpec, int]:
    """``residual(LAYERS [, shortcut=LAYERS])`` from the token after ``residual``."""
    if i >= len(tokens) or tokens[i][1] != "(":
        raise SpecError(_point(text, pos, "residual needs its layers in parentheses, e.g. "
                               "residual(conv(64, 3, padding=same) bn) relu"))
    body, i = _parse_layers(text, tokens, i + 1, inside="residual")
    if not body:
        at = tokens[i][2] if i < len(tokens) else len(text)
        raise SpecError(_point(text, at, "residual has no layers; give the block's layers, "
                               "e.g. residual(conv(64, 3, padding=same) bn)"))
    shortcut = None
    if i < len(tokens) and tokens[i][1].lower() == "shortcut":
        shortcut, i = _parse_layers(text, tokens, i + 2, inside="residual")
        if not shortcut:
            at = tokens[i][2] if i < len(tokens) else len(text)
            raise SpecError(_point(text, at, "shortcut= has no layers; give the projection, "
                                   "e.g. shortcut=conv(128, 1, 2, none, bias=false) bn"))
        if i < len(tokens) and tokens[i][1].lower() == "shortcut":
            raise SpecError(_point(text, tokens[i][2], "residual: shortcut is given twice"))
    if i >= len(tokens):
        raise SpecError(_point(text, len(text), "missing ')' to close residual("))
    spec = LayerSpec("Residual", (("body", tuple(body)),)
                     + ((("shortcut", tuple(shortcut)),) if shortcut else ()))
    for where, layers in (("residual", body), ("shortcut", shortcut or ())):
        for layer in layers:
            if layer.kind == "SoftmaxOutput":
                raise SpecError(_point(text, pos, f"the softmax output cannot be inside a "
                                       f"{where}; put it last, after the blocks"))
    return spec, i + 1  # skip ")"


def _parse_args(text: str, tokens: list, i: int, layer: str) -> tuple[dict[str, Any], int]:
    """A layer's ``(...)`` arguments from token ``i`` (if it is ``(``); returns them and
    the index after ``)``."""
    name = _TEXT_NAME[layer]
    args: dict[str, Any] = {}

    def store(key: str, value, key_pos: int, value_pos: int, value_tok: str) -> None:
        if key in args:
            raise SpecError(_point(text, key_pos, f"{name}: {key} is given twice"))
        problem = _value_problem(layer, key, value)
        if problem:
            raise SpecError(_point(text, value_pos, f"{problem}; got {_short(value_tok)}"))
        args[key] = value

    def missing_close(j: int) -> SpecError:
        # The ')' belongs right after the last token of the arguments (token j - 1).
        end = tokens[j - 1][2] + len(tokens[j - 1][1])
        return SpecError(_point(text, end, f"missing ')' to close {name}("))

    if i < len(tokens) and tokens[i][1] == "(":
        i += 1
        positional = list(_POSITIONAL[layer])
        while i < len(tokens) and tokens[i][1] != ")":
            akind, atok, apos = tokens[i]
            if akind == "punct" and atok == ",":
                i += 1
                continue
            if akind == "ident" and i + 1 < len(tokens) and tokens[i + 1][1] == "=":
                key = _KEY_ALIASES.get(atok.lower(), atok.lower())
                if key not in _SPEC_KEYS[layer]:
                    if atok.lower() == "shortcut":
                        raise missing_close(i)  # the enclosing residual's shortcut
                    raise SpecError(
                        _point(text, apos, f"{name} has no argument {_short(atok)!r}")
                        + f"\nvalid arguments: {', '.join(_SPEC_KEYS[layer]) or '(none)'}."
                        + did_you_mean(atok, {k: k for k in _SPEC_KEYS[layer]} | {
                            a: k for a, k in _KEY_ALIASES.items() if k in _SPEC_KEYS[layer]})
                    )
                if i + 2 >= len(tokens) or tokens[i + 2][0] == "punct":
                    raise SpecError(_point(text, tokens[i + 1][2],
                                           f"missing value for {_short(atok)}"))
                vkind, vtok, vpos = tokens[i + 2]
                store(key, _value(vkind, vtok, text, vpos), apos, vpos, vtok)
                i += 3
                continue
            if akind == "punct":
                if atok in ">|;" or (atok == "(" and tokens[i - 1][0] == "ident"):
                    # A separator, or the next layer's "(": the ")" was left out.
                    raise missing_close(i - 1 if atok == "(" else i)
                raise SpecError(_point(text, apos, f"unexpected {atok!r}"))
            value = _value(akind, atok, text, apos)
            if akind == "ident" and _is_layer_name(atok) and not _ident_fits(layer, value):
                raise missing_close(i)  # the next layer's name
            key = _positional_key(layer, value, positional, akind)
            if key is None:
                raise SpecError(
                    _point(text, apos, f"too many or unexpected arguments for {name}")
                    + f"\npositional arguments: {', '.join(_POSITIONAL[layer]) or '(none)'}"
                )
            store(key, value, apos, apos, atok)
            i += 1
        if i >= len(tokens):
            raise SpecError(_point(text, len(text), f"missing ')' to close {name}("))
        i += 1  # skip ")"
    return args, i


def _ident_fits(layer: str, value) -> bool:
    """Whether a bare identifier is a valid positional argument of ``layer``."""
    if layer in ("Conv2D", "MaxPooling2D", "AvgPooling2D") and value in L.PADDINGS:
        return True
    return layer in ("Conv2D", "Dense", "Activation", *_BATCH_NORMS) and _value_problem(
        layer, "activation", value) is None


def _positional_key(layer: str, value, positional: list[str], kind: str) -> str | None:
    if kind == "ident" and layer in ("Conv2D", "MaxPooling2D", "AvgPooling2D"):
        if value in L.PADDINGS:
            return "padding"
        if layer == "Conv2D" and (value is None or value in L.ACTIVATIONS):
            return "activation"
        return None
    if kind == "ident" and layer in ("Dense", "Activation", *_BATCH_NORMS) and (
            value is None or value in L.ACTIVATIONS):
        if "activation" in positional:
            positional.remove("activation")
        return "activation"
    if layer == "Dense" and kind != "ident" and positional[:1] == ["activation"]:
        return None  # a number where only an activation may follow
    return positional.pop(0) if positional else None


def _checked_spec(layer: str, args: dict[str, Any], text: str, pos: int) -> LayerSpec:
    cls = LAYER_TYPES[layer]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [
        n for n, f in fields.items()
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        and n not in ("parent", "name") and n not in args and n != "num_classes"
    ]
    if missing:
        raise SpecError(_point(text, pos, f"{_TEXT_NAME[layer]} needs {', '.join(missing)}"))
    # Canonical form: arguments equal to the layer's default are left out, as LayerSpec.of does.
    for key in _ALWAYS & set(_SPEC_KEYS[layer]):
        args.setdefault(key, fields[key].default)
    ordered = tuple((k, args[k]) for k in _SPEC_KEYS[layer]
                    if k in args and (k in _ALWAYS or not (
                        fields[k].default is not dataclasses.MISSING
                        and args[k] == fields[k].default)))
    return LayerSpec(layer, ordered)


def to_spec(layers: Iterable["nn.Module | LayerSpec"]) -> str:
    """Returns the spec text of a list of layers (modules or specs).

    Example:
      >>> to_spec([L.Conv2D(32, 3), L.MaxPooling2D(2), L.Flatten(), L.SoftmaxOutput(10)])
      'conv(32, 3) maxpool(2) flatten softmax(10)'
    """
    return " ".join(LayerSpec.of(layer).text() for layer in layers)


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


def _check_layer_spec(spec: LayerSpec, index: int) -> None:
    """Checks a spec that did not come from spec text (a module, or a LayerSpec made by hand)."""
    if not isinstance(spec, LayerSpec) or spec.kind not in LAYER_TYPES:
        raise SpecError(f"layer {index + 1} is not a jaxcnn layer ({spec!r}); use one of "
                        f"{sorted(LAYER_TYPES)}")
    try:
        args = dict(spec.args)
    except (TypeError, ValueError):
        raise SpecError(f"layer {index + 1}: args must be (name, value) pairs; got "
                        f"{_short(repr(spec.args))}") from None
    for key, value in args.items():
        problem = _value_problem(spec.kind, key, value) if key in _SPEC_KEYS[spec.kind] else None
        if problem:
            raise SpecError(f"layer {index + 1}: {problem}; got {_short(repr(value))}")
    if spec.kind == "Residual":
        for key in ("body", "shortcut"):
            layers = args.get(key)
            if layers is None and key == "shortcut":
                continue
            if not isinstance(layers, tuple) or not layers:
                raise SpecError(f"layer {index + 1}: a residual block's {key} must be a "
                                f"non-empty tuple of layer specs; got {_short(repr(layers))}")
            for j, inner in enumerate(layers):
                _check_layer_spec(inner, j)
                if inner.kind == "SoftmaxOutput":
                    raise SpecError(f"layer {index + 1}: the softmax output cannot be inside a "
                                    "residual block; put it last")


# ---------------------------------------------------------------------------
# Summary


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One row of a :class:`ModelSummary`: a layer's output shape, parameters, FLOPs.

    A residual block's row holds its layers' rows as ``children`` (its body,
    then its shortcut's, named ``shortcut_...``); its own figures include them.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int
    children: tuple["LayerRow", ...] = ()

    def to_dict(self) -> dict:
        """A JSON-ready dict of the row (and its children)."""
        out = {"name": self.name, "kind": self.kind, "output_shape": list(self.output_shape),
               "params": self.params, "flops": self.flops}
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out

    def lines(self, depth: int = 0) -> list[tuple[str, str, str, str]]:
        """Table cells of this row and, indented, of its children."""
        own = [("  " * depth + f"{self.name} ({self.kind})", str(self.output_shape),
                f"{self.params:,}", _si(self.flops))]
        return own + [cell for c in self.children for cell in c.lines(depth + 1)]


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Per-layer output shapes, parameter counts and forward FLOPs per image.

    FLOPs count a multiply-add as 2; they are for one image's forward pass.

    Attributes:
      input_shape: ``(H, W, C)``.
      rows: one :class:`LayerRow` per layer.
    """

    input_shape: tuple[int, ...]
    rows: tuple[LayerRow, ...]

    @property
    def params(self) -> int:
        """Total parameter count."""
        return sum(r.params for r in self.rows)

    @property
    def flops(self) -> int:
        """Total forward FLOPs per image."""
        return sum(r.flops for r in self.rows)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the summary."""
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "flops_per_image": self.flops,
            "layers": [r.to_dict() for r in self.rows],
        }

    def __str__(self) -> str:
        head = ("Layer (type)", "Output shape", "Params", "FLOPs")
        body = [cells for r in self.rows for cells in r.lines()]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(4)]
        line = lambda row: "  ".join(  # noqa: E731
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        rule = "-" * len(line(head))
        return "\n".join([
            f"Input shape: {self.input_shape}", rule, line(head), rule,
            *map(line, body), rule,
            f"Total params: {self.params:,}",
            f"Forward FLOPs per image: {_si(self.flops)} ({self.flops:,})",
        ])


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def summary(model: Sequential, input_shape: Sequence[int], *, batch_size: int | None = None,
            budget_bytes: int | None = None, input_name: str | None = None) -> ModelSummary:
    """Computes each layer's output shape, parameters and FLOPs (per image).

    Shapes are checked on the way: a layer that does not fit its input raises
    :class:`~jaxcnn.errors.ShapeError` naming the layer. When the images are
    smaller than the model needs, the message also names the model (its zoo
    name), the smallest size it accepts (:func:`min_input_size`) and datasets
    of images that fit. Nothing is computed on a device (shapes come from
    ``jax.eval_shape``).

    Memory is checked on the way too, before anything is allocated or
    compiled: a model that cannot fit raises :class:`~jaxcnn.errors.SpecError`
    naming its largest layer, the bytes needed and the budget. The estimate is
    a lower bound: without ``batch_size``, the float32 parameters and the
    activations of one image; with it, parameters and their gradients plus
    the activations of ``batch_size`` images that training keeps for the
    backward pass (the optimiser's state and XLA's temporaries come on top).

    Args:
      model: a :class:`Sequential`.
      input_shape: ``(H, W, C)`` (or ``(H, W)`` for grayscale).
      batch_size: images in one training pass on one device (check the
        memory training needs); None: check inference of one image.
      budget_bytes: the memory allowed; None: what the default device
        reports (``bytes_limit``), or on the CPU the host's physical memory,
        capped by a cgroup limit and by ``ulimit -v`` / ``-d`` (less what the
        process already maps).
      input_name: what the images are, for that message (e.g. the dataset's
        name: ``"digits is 8x8x1"``); None: ``"the input is 8x8x1"``.

    Returns:
      A :class:`ModelSummary`; ``print()`` it for a Keras-like table.

    Example:
      >>> s = summary(build_model("keras_convnet", 10), (28, 28, 1))
      >>> s.params
      34826
      >>> [r.output_shape for r in s.rows][:2]
      [(26, 26, 32), (13, 13, 32)]
      >>> try:
      ...     summary(build_model("flatten dense(100000)", 10), (28, 28, 1), budget_bytes=2**28)
      ... except SpecError as e:
      ...     print(str(e).split(" available")[0])
      the model needs at least 299.1 MiB of memory, more than the 256.0 MiB
    """
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError, OverflowError):
        shape = ()
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) < 1 or max(shape) > MAX_SIZE:
        raise ShapeError(f"input_shape must be (H, W, C) of sizes from 1 to {MAX_SIZE}; got "
                         f"{_short(repr(input_shape))}")
    memory = _Memory(model, shape, batch_size, budget_bytes)
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    rows = []
    for name, spec in layer_names(model.layers):
        layer = spec.build(parent=None, name=name, dtype=model.dtype, impl=model.impl)
        _check_window(layer, x.shape)
        # Parameters a layer will have, known before its shapes are traced.
        memory.check(rows, (name, type(layer).__name__, _param_lower_bound(layer, x.shape)))
        try:
            y, variables = jax.eval_shape(
                lambda v, layer=layer: layer.init_with_output(jax.random.key(0), v), x)
        except ShapeError as e:
            too_small = _input_too_small(model, shape, str(e), input_name)
            if too_small is None:
                raise
            raise ShapeError(too_small) from None
        rows.append(_row(name, spec, layer, x, y, variables, model))
        memory.check(rows)
        x = jax.ShapeDtypeStruct(y.shape, jnp.float32)
    return ModelSummary(shape, tuple(rows))


def _row(name: str, spec: LayerSpec, layer: nn.Module, x, y, variables, model) -> LayerRow:
    """The summary row of one layer (shapes from ``jax.eval_shape``; batch statistics are
    not parameters)."""
    params = sum(math.prod(p.shape) for p in jax.tree.leaves(variables.get("params", {})))
    children: tuple[LayerRow, ...] = ()
    flops = _flops(layer, x.shape[1:], y.shape[1:])
    if spec.kind == "Residual":
        kw = spec.kwargs()
        children = (_child_rows(kw["body"], x, model, "")
                    + _child_rows(kw.get("shortcut") or (), x, model, "shortcut_"))
        flops = sum(c.flops for c in children) + math.prod(y.shape[1:])  # and the add
    return LayerRow(name, type(layer).__name__, tuple(y.shape[1:]), int(params), int(flops),
                    children)


def _child_rows(specs, x, model, prefix: str) -> tuple[LayerRow, ...]:
    rows = []
    for name, spec in layer_names(specs):
        layer = spec.build(parent=None, name=prefix + name, dtype=model.dtype, impl=model.impl)
        y, variables = jax.eval_shape(
            lambda v, layer=layer: layer.init_with_output(jax.random.key(0), v), x)
        rows.append(_row(prefix + name, spec, layer, x, y, variables, model))
        x = jax.ShapeDtypeStruct(y.shape, jnp.float32)
    return tuple(rows)


def min_input_size(model: "Sequential | Iterable[nn.Module | LayerSpec]") -> tuple[int, int]:
    """The smallest ``(height, width)`` of input images that every layer of ``model`` fits.

    Walks the layers from the output back to the input, starting from a 1x1 feature
    map: a conv or pool layer with ``valid`` padding needs ``(out - 1) * stride + window``
    input rows for ``out`` output rows (its output is ``floor((in - window) / stride) + 1``),
    with ``same`` padding ``(out - 1) * stride + 1`` (its output is ``ceil(in / stride)``).
    Other layers do not depend on the image size. Any larger size fits too.

    Args:
      model: a :class:`Sequential`, or its layers (modules or :class:`LayerSpec`).

    Returns:
      ``(height, width)``.

    Example:
      >>> min_input_size(build_model("keras_convnet", 10))
      (10, 10)
      >>> min_input_size(model_spec("conv(8, 3, padding=same) maxpool(2) conv(8, 5x3) flatten"))
      (10, 6)
    """
    layers = model.layers if isinstance(model, Sequential) else model
    need = _input_need([LayerSpec.of(layer) for layer in layers], (1, 1))
    return need[0], need[1]


def _input_need(specs: Sequence[LayerSpec], need: tuple[int, int]) -> tuple[int, int]:
    """The input size ``specs`` need to produce a ``need`` output (walking backwards)."""
    for spec in reversed(specs):
        if spec.kind == "Residual":
            kw = spec.kwargs()
            body = _input_need(kw["body"], need)
            short = _input_need(kw.get("shortcut") or (), need)
            need = (max(body[0], short[0]), max(body[1], short[1]))
            continue
        if spec.kind not in ("Conv2D", "MaxPooling2D", "AvgPooling2D"):
            continue
        fields = {f.name: f.default for f in dataclasses.fields(LAYER_TYPES[spec.kind])}
        kw = {**fields, **spec.kwargs()}
        window = kw["kernel_size" if spec.kind == "Conv2D" else "pool_size"]
        strides = window if kw["strides"] is None else kw["strides"]
        pad = kw["padding"]
        out = list(need)
        for axis in (0, 1):
            w = int(window[axis] if isinstance(window, (tuple, list)) else window)
            s = int(strides[axis] if isinstance(strides, (tuple, list)) else strides)
            if isinstance(pad, str):
                extra = w if pad.lower() == "valid" else 1
            else:
                p = int(pad[axis] if isinstance(pad, (tuple, list)) else pad)
                extra = max(1, w - 2 * p)
            out[axis] = (need[axis] - 1) * s + extra
        need = (out[0], out[1])
    return need


# Datasets of larger images that a model too large for its input is offered:
# (name, image side, what it is). tests/test_names_and_shapes.py checks the sides.
_LARGER_DATASETS = (
    ("digits28", 28, "the embedded 8x8 digits upsampled to 28x28, offline"),
    ("mnist", 28, None),
    ("cifar10", 32, None),
)


def _zoo_name(specs: Sequence[LayerSpec]) -> str | None:
    """The zoo name of a model's layers (its output's class count aside), or None."""
    def body(layers):
        layers = tuple(layers)
        return layers[:-1] if layers and layers[-1].kind == "SoftmaxOutput" else layers
    for name, (text, _) in ZOO.items():
        if body(parse_spec(text)) == body(specs):
            return name
    return None


def _input_too_small(model: Sequential, shape: tuple[int, ...], detail: str,
                     input_name: str | None = None) -> str | None:
    """The message for input images smaller than ``model`` needs; None if they are not."""
    try:
        need = min_input_size(model)
    except (TypeError, ValueError, KeyError, IndexError):  # a layer with bad sizes says so itself
        return None
    if shape[0] >= need[0] and shape[1] >= need[1]:
        return None
    fits = [d for d in _LARGER_DATASETS if d[1] >= max(need)]
    if fits:
        names = [f"{n} ({what})" if what else n for n, _, what in fits]
        datasets = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        use = (f"Use larger images: --dataset {datasets}; or --input-shape "
               f"{fits[0][1]}x{fits[0][1]}x{shape[2]} (summary, bench)")
    else:
        use = (f"Use a dataset of images of at least {need[0]}x{need[1]}, or --input-shape "
               f"{need[0]}x{need[1]}x{shape[2]} (summary, bench)")
    return (f"{_zoo_name(model.layers) or 'the model'} needs images of at least "
            f"{need[0]}x{need[1]}; {_short(str(input_name)) if input_name else 'the input'} is "
            f"{shape[0]}x{shape[1]}x{shape[2]}. {use}. "
            f"Where it fails: {detail}")


def _check_window(layer: nn.Module, in_shape) -> None:
    """Refuses a kernel or pool window far larger than its input (only 'same' padding allows it).

    Such a window is nearly all padding, and tracing it costs time and memory that grow with
    its size.
    """
    window = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    if window is None or len(in_shape) != 4:
        return
    window = tuple(window) if isinstance(window, (tuple, list)) else (window, window)
    for size, dim in zip(window, in_shape[1:3]):
        if isinstance(size, int) and size > max(int(dim), 1024):
            raise ShapeError(
                f"{type(layer).__name__} '{layer.name}': window {window[0]}x{window[1]} is larger "
                f"than its input feature map {in_shape[1]}x{in_shape[2]} and than 1024; it would "
                "be almost all padding. Use a window no larger than the feature map.")


def _param_lower_bound(layer: nn.Module, in_shape) -> int:
    """The weights of a conv or dense layer on an input of ``in_shape`` (N, ...); 0 if unknown.

    Bad values give 0 here: the layer itself raises :class:`~jaxcnn.errors.ShapeError` for them.
    """
    try:
        if isinstance(layer, L.Conv2D):
            k = layer.kernel_size
            kernel = tuple(k) if isinstance(k, (tuple, list)) else (k, k)
            return max(0, math.prod(int(v) for v in kernel) * int(in_shape[-1])
                       * int(layer.filters))
        if isinstance(layer, L.Dense):
            return max(0, int(in_shape[-1]) * int(layer.units))
        if isinstance(layer, L.SoftmaxOutput):
            return max(0, int(in_shape[-1]) * int(layer.num_classes))
    except (TypeError, ValueError, OverflowError):
        pass
    return 0


# Layers whose output is a view of their input (no new buffer), or that XLA fuses into the next.
_NO_BUFFER = ("Flatten", "Dropout")


class _Memory:
    """The memory check of :func:`summary`: a lower bound of the bytes a model needs."""

    def __init__(self, model: Sequential, shape, batch_size: int | None,
                 budget_bytes: int | None):
        self.batch = None if batch_size is None else max(1, int(batch_size))
        self.act_bytes = 2 if model.dtype in ("bfloat16", "float16") else 4
        # Parameters (float32) and, for training, their gradients.
        self.param_copies = 1 if self.batch is None else 2
        self.input_elements = math.prod(shape)
        if budget_bytes is not None:
            self.budget: tuple[int, str] | None = (int(budget_bytes), "the given budget")
        else:
            self.budget = memory_budget()

    def layer_bytes(self, params: int, out_elements: int) -> tuple[int, int]:
        return 4 * self.param_copies * params, (self.batch or 1) * out_elements * self.act_bytes

    def check(self, rows: list[LayerRow], pending: tuple[str, str, int] | None = None) -> None:
        if self.budget is None:
            return
        parts = [(r.name, r.kind, r.params, self.layer_bytes(
            r.params, 0 if r.kind in _NO_BUFFER else math.prod(r.output_shape))) for r in rows]
        if pending is not None:
            name, kind, params = pending
            parts.append((name, kind, params, self.layer_bytes(params, 0)))
        input_bytes = (self.batch or 1) * self.input_elements * 4
        param_bytes = sum(p[3][0] for p in parts)
        act_bytes = sum(p[3][1] for p in parts) + input_bytes
        need, (budget, source) = param_bytes + act_bytes, self.budget
        if need <= budget:
            return
        what = ("parameters and their gradients" if self.batch else "parameters")
        images = (f"{self.batch} image{'s' if self.batch > 1 else ''} in one training pass"
                  if self.batch else "one image")
        smaller = ", or a smaller batch (--batch-size, or train.micro_batches)" if self.batch else ""
        name, kind, params, (p_bytes, a_bytes) = max(parts, key=lambda p: sum(p[3]))
        if input_bytes > p_bytes + a_bytes:
            largest = (f"The input images alone take {_size(input_bytes)}. Use smaller "
                       f"images{smaller}.")
        else:
            largest = (f"The largest layer is {name} ({kind}): {params:,} parameters "
                       f"({_size(p_bytes)}), activations {_size(a_bytes)}. Use fewer filters "
                       f"or units, downsample before it{smaller}.")
        raise SpecError(
            f"the model needs at least {_size(need)} of memory, more than the {_size(budget)} "
            f"available ({source}): {what} {_size(param_bytes)}, activations of {images} "
            f"{_size(act_bytes)}. {largest}")


def _size(n: int) -> str:
    if n >= 2**60:
        return f"{n / 2**60:,.0f} EiB"
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def memory_budget(device=None) -> tuple[int, str] | None:
    """The bytes a model may take, and where that figure comes from (None: unknown).

    A device that reports its memory (GPU, TPU) gives its ``bytes_limit`` less
    what is in use. On the CPU: the host's physical memory, capped by a cgroup
    memory limit and by the process's address-space and data limits
    (``ulimit -v``, ``ulimit -d``) less what it already maps.

    Example:
      >>> budget = memory_budget()
      >>> budget is None or budget[0] > 0
      True
    """
    device = device or jax.devices()[0]
    stats = provenance.device_memory_stats(device)
    if stats and stats.get("bytes_limit"):
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, f"the memory of {device.platform}:{device.id}"
    if device.platform != "cpu":
        return None
    limits = []
    try:
        limits.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                       "the host's physical memory"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
            if text.isdigit():
                limits.append((int(text), "the cgroup's memory limit"))
        except OSError:
            pass
    limits += _rlimits()
    return min(limits) if limits else None


def _rlimits() -> list[tuple[int, str]]:
    """Room left under ``ulimit -v`` and ``ulimit -d``, from ``/proc/self/statm``."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            pages = [int(v) for v in f.read().split()]
        page = os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, AttributeError):
        return []
    out = []
    for limit, used, what in ((resource.RLIMIT_AS, pages[0], "the address-space limit, ulimit -v"),
                              (resource.RLIMIT_DATA, pages[5], "the data limit, ulimit -d")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY:
            out.append((max(0, soft - used * page), f"{what}, less what the process maps"))
    return out


def _flops(layer: nn.Module, in_shape, out_shape) -> int:
    """Forward FLOPs of one image: 2 per multiply-add, 1 per add, compare or activation."""
    out = math.prod(out_shape)
    if isinstance(layer, L.Conv2D):
        kh, kw = (layer.kernel_size,) * 2 if isinstance(layer.kernel_size, int) else layer.kernel_size
        flops = 2 * out * kh * kw * in_shape[-1]
        return flops + out * (int(layer.use_bias) + int(layer.activation not in (None, "linear", "none")))
    if isinstance(layer, (L.Dense, L.SoftmaxOutput)):
        bias = int(getattr(layer, "use_bias", True))
        act = int(getattr(layer, "activation", None) not in (None, "linear", "none"))
        return 2 * out * in_shape[-1] + out * (bias + act)
    if isinstance(layer, (L.MaxPooling2D, L.AvgPooling2D)):
        ph, pw = (layer.pool_size,) * 2 if isinstance(layer.pool_size, int) else layer.pool_size
        return out * ph * pw
    if isinstance(layer, L.GlobalAvgPooling2D):
        return math.prod(in_shape)
    if isinstance(layer, L.BatchNorm):  # evaluation: one multiply-add per element, and act
        return out * (2 + int(layer.activation not in (None, "linear", "none")))
    if isinstance(layer, L.Activation):
        return out * int(layer.activation not in ("linear", "none"))
    return 0


__all__ = [
    "DEFAULT_MODEL", "LAYER_TYPES", "LayerRow", "LayerSpec", "ModelSummary", "Residual",
    "Sequential", "TAKES_TRAIN", "ZOO", "MAX_SIZE", "build_model", "cifar_speed_spec",
    "has_batch_norm",
    "residual", "resnet_spec", "layer_names", "memory_budget", "min_input_size", "model_spec",
    "parse_spec", "summary", "to_spec",
]
