"""What a model is before it runs: per-layer shapes, parameters and FLOPs
(:func:`summary`), the smallest input it fits (:func:`min_input_size`), and the memory
it needs against what the device has (:func:`memory_budget`)."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import layers as L
from jaxcnn import provenance
from jaxcnn.errors import ShapeError, SpecError
from jaxcnn.models._sequential import Sequential, layer_names
from jaxcnn.models._spec import LAYER_TYPES, MAX_SIZE, LayerSpec, _short, parse_spec
from jaxcnn.models._zoo import ZOO

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
      >>> from jaxcnn.models import build_model
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
      >>> from jaxcnn.models import build_model, model_spec
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
