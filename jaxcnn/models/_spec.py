"""Layer specs: layers as plain data, and the spec text that writes a model down.

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
import re
import unicodedata
from typing import Any, Iterable

import flax.linen as nn

from jaxcnn import layers as L
from jaxcnn.errors import SpecError, did_you_mean

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
