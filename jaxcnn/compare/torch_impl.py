"""A jaxcnn model rebuilt and timed in PyTorch (run as a subprocess).

``python -m jaxcnn.compare.torch_impl`` reads a request (JSON on stdin, built
by :func:`jaxcnn.bench.compare_request`) and writes one JSON answer on stdout.
The model is built from jaxcnn's layer specs with the same shapes, the same
initialisers (Glorot uniform, zero biases), Adam with the same learning rate
and epsilon, softmax cross-entropy on logits, and the same batch.

* CPU: eager mode with ``channels_last`` memory (PyTorch's fast CPU layout
  for convolutions).
* GPU: ``torch.compile`` of the model (its first call, reported as the
  compile time, includes the compilation).

Activations are kept NHWC-ordered before ``Flatten`` (a free view under
``channels_last``), so the dense layer sees features in jaxcnn's order.
Batch norms train on batch statistics (``model.train()``) and evaluate on the
running ones (``model.eval()``); their momentum is converted to PyTorch's
(``1 -`` jaxcnn's). PyTorch keeps the unbiased batch variance in its running
variance (jaxcnn the biased one, as Flax and Keras): the same work, slightly
different running statistics, which timing does not see.
``--dtype bfloat16`` runs under ``torch.autocast`` (bfloat16 compute,
float32 parameters), the same policy as jaxcnn.

Example (needs PyTorch):
  >>> from jaxcnn.compare import request_layers
  >>> from jaxcnn.models import build_model
  >>> layers = request_layers(build_model("keras_convnet", 10), (28, 28, 1))
  >>> net = build_torch_model(layers)  # doctest: +SKIP
  >>> sum(p.numel() for p in net.parameters())  # doctest: +SKIP
  34826
"""

from __future__ import annotations

import functools
import resource
from typing import Any

from jaxcnn._timing import is_oom_message, spread, time_calls
from jaxcnn.compare import ComparisonError, check_param_counts
from jaxcnn.compare._child import child_main, pair, same_padding, window_coverage


def _activation(nn, name):
    if name in (None, "none", "linear"):
        return None
    table = {
        "relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU, "silu": nn.SiLU, "swish": nn.SiLU,
        "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
        # Flax's gelu and leaky_relu defaults: tanh approximation, slope 0.01.
        "gelu": lambda: nn.GELU(approximate="tanh"),
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
    }
    if name not in table:
        raise ComparisonError(f"activation {name!r} has no PyTorch equivalent here; use relu, "
                              "gelu, elu, selu, silu, tanh, sigmoid or leaky_relu")
    return table[name]()


@functools.lru_cache(maxsize=None)
def _modules():
    """The few modules PyTorch lacks, defined once torch is imported (never at import
    time: jaxcnn itself does not need torch)."""
    import torch
    from torch import nn

    class NHWCFlatten(nn.Module):
        """Flattens in jaxcnn's (H, W, C) order; under channels_last the permute is a view."""

        def forward(self, x):
            return torch.flatten(x.permute(0, 2, 3, 1), 1) if x.dim() == 4 else x

    class GlobalAvg(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    class Scale(nn.Module):
        """Multiplies by a constant: SoftmaxOutput's ``scale``, or a per-position map
        (a buffer, so it moves with the model) broadcast over batch and channels."""

        def __init__(self, scale):
            super().__init__()
            if isinstance(scale, (int, float)):
                self.scale = float(scale)
            else:
                self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

        def forward(self, x):
            return x * self.scale

        def extra_repr(self):
            return f"scale={self.scale!r}" if isinstance(self.scale, float) else "scale=map"

    class Residual(nn.Module):
        """``body(x) + shortcut(x)``; the shortcut is the identity unless given."""

        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body = body
            self.shortcut = shortcut if shortcut is not None else nn.Identity()

        def forward(self, x):
            return self.body(x) + self.shortcut(x)

    def batch_norm_class(base):
        class BatchNorm(base):
            """PyTorch's batch norm with the scale and the bias each optional.

            jaxcnn's ``use_scale=false`` (airbench) has a bias but no scale;
            ``affine=False`` would drop both, and a frozen weight of ones would
            still count as a parameter. Instead the missing one is ``None``,
            which ``batch_norm`` takes as "no scale" / "no shift", so the
            kernel stays the fused one and the parameter count is jaxcnn's.
            """

            def __init__(self, features, *, momentum, eps, use_scale, use_bias):
                super().__init__(features, eps=eps, momentum=momentum,
                                 affine=use_scale or use_bias)
                if self.affine and not use_scale:
                    self.register_parameter("weight", None)
                if self.affine and not use_bias:
                    self.register_parameter("bias", None)

            def reset_parameters(self):
                self.reset_running_stats()
                if self.weight is not None:
                    nn.init.ones_(self.weight)
                if self.bias is not None:
                    nn.init.zeros_(self.bias)

            def extra_repr(self):
                return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                        f"scale={self.weight is not None}, bias={self.bias is not None}")

            def forward(self, x):
                self._check_input_dim(x)
                # The op itself rather than F.batch_norm, which refuses a training
                # batch with one value per channel (batch size 1 after a dense layer);
                # jaxcnn normalises that to the bias (variance 0), and so does the op.
                # (Its running variance, unbiased, is then inf: timing does not see it.)
                # No num_batches_tracked update: the momentum is always given.
                # (The op's order: weight and bias before the running statistics.)
                return torch.batch_norm(x, self.weight, self.bias, self.running_mean,
                                        self.running_var, self.training, self.momentum, self.eps,
                                        torch.backends.cudnn.enabled)

        return BatchNorm

    return {"NHWCFlatten": NHWCFlatten, "GlobalAvg": GlobalAvg, "Scale": Scale,
            "Residual": Residual, "BatchNorm2d": batch_norm_class(nn.BatchNorm2d),
            "BatchNorm1d": batch_norm_class(nn.BatchNorm1d)}


def _explicit_padding(value, kind: str) -> tuple[int, int]:
    """jaxcnn's int / (ph, pw) padding as a pair; 'valid' as (0, 0)."""
    if isinstance(value, str):
        if value == "valid":
            return 0, 0
        raise ComparisonError(f"{kind}: padding {value!r} is not valid, same or an int")
    pads = pair(value)
    if min(pads) < 0:
        raise ComparisonError(f"{kind}: padding {value!r} is negative")
    return pads


def build_torch_model(layers: list[dict[str, Any]]):
    """Builds the ``torch.nn.Sequential`` equivalent of a jaxcnn layer list.

    Supported: Conv2D, MaxPooling2D, AvgPooling2D (padding ``valid``, ``same``
    or an int / pair as PyTorch's own ``padding``; where a pool's own padding
    cannot express it, an explicit pad first: ``-inf`` for max, zeros and a
    rescale to the unpadded count for average), GlobalAvgPooling2D,
    Dropout, Flatten, Dense, BatchNorm / BatchNorm2D / BatchNorm1D (PyTorch's
    ``momentum`` is ``1 -`` jaxcnn's; a missing scale or bias is absent, not
    frozen, so the parameter counts agree), Activation, Residual (body plus
    shortcut, nested to any depth) and SoftmaxOutput (with or without bias,
    its ``scale`` a constant multiply of the logits).

    Convolutions and linear layers are Glorot-uniform with zero biases (as
    jaxcnn's); batch norms start at scale 1, bias 0, running mean 0 and
    variance 1. Batch norm uses batch statistics in ``model.train()`` and the
    running ones in ``model.eval()``, as jaxcnn's ``train=True/False``.

    Args:
      layers: :func:`jaxcnn.compare.request_layers` of the jaxcnn model.

    Returns:
      The module (NCHW input, best in ``channels_last`` memory; logits output).

    Raises:
      ComparisonError: for a layer or option PyTorch cannot express the same way.

    Example (needs PyTorch):
      >>> from jaxcnn.compare import request_layers
      >>> from jaxcnn.models import build_model
      >>> spec = ("conv(8, 3, none, padding=1, bias=false) bn(relu) "
      ...         "residual(conv(8, 3, padding=1)) gap softmax")
      >>> layers = request_layers(build_model(spec, 10), (16, 16, 3))
      >>> net = build_torch_model(layers)  # doctest: +SKIP
      >>> sum(p.numel() for p in net.parameters())  # doctest: +SKIP
      906
    """
    from torch import nn

    return nn.Sequential(*_torch_layers(layers, nn))


def _torch_layers(layers: list[dict[str, Any]], nn) -> list:
    """The modules of ``layers``, in order (a layer may take more than one)."""
    extra = _modules()
    mods: list = []
    for layer in layers:
        kind, a = layer["kind"], layer["args"]
        shape = layer["input_shape"]
        h, w = (shape[0], shape[1]) if len(shape) == 3 else (1, 1)
        if kind == "Conv2D":
            k, s = pair(a["kernel_size"]), pair(a["strides"])
            cin = shape[-1]
            padding: Any = 0
            if a["padding"] == "same":
                (t, b), (lft, r) = same_padding(h, k[0], s[0]), same_padding(w, k[1], s[1])
                if t == b and lft == r:
                    padding = (t, lft)
                else:
                    mods.append(nn.ZeroPad2d((lft, r, t, b)))
            else:
                padding = _explicit_padding(a["padding"], kind)
            conv = nn.Conv2d(cin, a["filters"], k, stride=s, padding=padding,
                             bias=bool(a["use_bias"]))
            nn.init.xavier_uniform_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            mods.append(conv)
            act = _activation(nn, a["activation"])
            if act is not None:
                mods.append(act)
        elif kind in ("MaxPooling2D", "AvgPooling2D"):
            mods.extend(_torch_pool(layer, nn, h, w))
        elif kind == "GlobalAvgPooling2D":
            mods.append(extra["GlobalAvg"]())
        elif kind == "Dropout":
            mods.append(nn.Dropout(float(a["rate"])))
        elif kind == "Flatten":
            mods.append(extra["NHWCFlatten"]())
        elif kind in ("BatchNorm", "BatchNorm2D", "BatchNorm1D"):
            # jaxcnn normalises over every axis but the last: per channel of a
            # feature map (BatchNorm2d) or per feature of a vector (BatchNorm1d).
            if len(shape) not in (1, 3):
                raise ComparisonError(f"{kind} on per-image shape {shape} has no PyTorch "
                                      "equivalent here; use it on feature maps or vectors")
            cls = extra["BatchNorm2d" if len(shape) == 3 else "BatchNorm1d"]
            mods.append(cls(shape[-1], momentum=1.0 - float(a["momentum"]),
                            eps=float(a["epsilon"]), use_scale=bool(a["use_scale"]),
                            use_bias=bool(a["use_bias"])))
            act = _activation(nn, a.get("activation"))
            if act is not None:
                mods.append(act)
        elif kind == "Activation":
            act = _activation(nn, a["activation"])
            if act is not None:
                mods.append(act)
        elif kind == "Residual":
            shortcut = layer.get("shortcut")
            mods.append(extra["Residual"](
                nn.Sequential(*_torch_layers(layer["body"], nn)),
                nn.Sequential(*_torch_layers(shortcut, nn)) if shortcut else None))
        elif kind in ("Dense", "SoftmaxOutput"):
            fin = shape[-1]
            units = a["units"] if kind == "Dense" else a["num_classes"]
            lin = nn.Linear(fin, units, bias=bool(a.get("use_bias", True)))
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
            mods.append(lin)
            act = _activation(nn, a.get("activation")) if kind == "Dense" else None
            if act is not None:
                mods.append(act)
            if kind == "SoftmaxOutput" and float(a.get("scale", 1.0)) != 1.0:
                mods.append(extra["Scale"](a["scale"]))
        else:
            raise ComparisonError(f"layer {kind} has no PyTorch adapter")
    return mods


def _torch_pool(layer: dict[str, Any], nn, h: int, w: int) -> list:
    """A max or average pool with jaxcnn's padding: max pads with -inf, average
    leaves padded positions out of its count."""
    kind, a = layer["kind"], layer["args"]
    k = pair(a["pool_size"])
    s = pair(a["strides"]) if a.get("strides") is not None else k
    if a["padding"] == "same":
        (t, b), (lft, r) = same_padding(h, k[0], s[0]), same_padding(w, k[1], s[1])
    else:
        t, lft = _explicit_padding(a["padding"], kind)
        b, r = t, lft
    # PyTorch's pools pad only symmetrically, and by at most half the window.
    if t == b and lft == r and 2 * t <= k[0] and 2 * lft <= k[1]:
        if kind == "MaxPooling2D":
            return [nn.MaxPool2d(k, s, padding=(t, lft))]
        return [nn.AvgPool2d(k, s, padding=(t, lft), count_include_pad=False)]
    if kind == "MaxPooling2D":
        # Padding with -inf first gives the same maxima (the padding wins only
        # in a window lying wholly inside it, and then in jaxcnn too).
        return [nn.ConstantPad2d((lft, r, t, b), float("-inf")), nn.MaxPool2d(k, s)]
    # Zero padding, a valid average, then each window's mean rescaled to its real
    # positions: the average jaxcnn takes.
    oh, ow = layer["output_shape"][:2]
    rows = window_coverage(h, k[0], s[0], t, oh)
    cols = window_coverage(w, k[1], s[1], lft, ow)
    if min(rows) <= 0 or min(cols) <= 0:
        raise ComparisonError(
            f"avgpool with padding {a['padding']} has windows wholly in the padding (an "
            "average of nothing); use a padding smaller than the window")
    inverse = [[[1.0 / (fr * fc) for fc in cols] for fr in rows]]  # (1, oh, ow): per channel
    return [nn.ZeroPad2d((lft, r, t, b)), nn.AvgPool2d(k, s), _modules()["Scale"]([inverse])]


def bench(request: dict[str, Any]) -> dict[str, Any]:
    """Builds, checks and times the requested model in PyTorch.

    Args:
      request: ``layers``, ``input_shape``, ``batch_sizes``, ``what``,
        ``dtype``, ``steps``, ``repeats``, ``warmup``, ``learning_rate``,
        ``seed``, ``expected_params`` and ``skip`` (batch size -> reason,
        for batches the parent found will not fit in memory).

    Returns:
      ``{"framework", "framework_version", "device", "params", "detail",
      "rows"}``; each row has ``batch_size``, ``status`` and the timings.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(int(request["seed"]))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = build_torch_model(request["layers"])
    params = sum(p.numel() for p in model.parameters())
    # Refuse before any timing: a different count means a different model.
    check_param_counts(int(request["expected_params"]), {"torch": params})
    model = model.to(device=device, memory_format=torch.channels_last)
    forward = torch.compile(model) if cuda else model
    what = request["what"]
    dtype = request["dtype"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    optimizer = torch.optim.Adam(model.parameters(), lr=float(request["learning_rate"]),
                                 eps=float(request.get("eps", 1e-8)))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    h, w, c = request["input_shape"]
    rows = []
    for batch_size in request["batch_sizes"]:
        skip = request.get("skip", {}).get(str(batch_size))
        if skip:
            rows.append({"batch_size": batch_size, "status": "oom", "error": skip})
            continue
        try:
            x = torch.randn(batch_size, c, h, w, device=device).contiguous(
                memory_format=torch.channels_last)
            y = torch.randint(0, request["num_classes"], (batch_size,), device=device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()

            if what == "train":
                model.train()

                def one():
                    optimizer.zero_grad(set_to_none=True)
                    with autocast:
                        logits = forward(x)
                    loss = F.cross_entropy(logits.float(), y)
                    loss.backward()
                    optimizer.step()
                    return (logits.argmax(1) == y).float().mean()
            else:
                model.eval()

                def one():
                    with torch.inference_mode(), autocast:
                        logits = forward(x)
                        if what == "eval":
                            F.cross_entropy(logits.float(), y)
                            return (logits.argmax(1) == y).float().mean()
                        return logits

            def call(n):
                for _ in range(n):
                    one()
                sync()

            first, per_call = time_calls(call, calls=request["steps"],
                                         repeats=request["repeats"], warmup=request["warmup"])
        except (RuntimeError, MemoryError) as e:
            if not is_oom_message(str(e)) and not isinstance(e, MemoryError):
                raise
            if cuda:
                torch.cuda.empty_cache()
            rows.append({"batch_size": batch_size, "status": "oom", "error": str(e)[:300]})
            continue
        rows.append({
            "batch_size": batch_size, "status": "ok", "compile_seconds": first,
            "step_seconds": per_call, **{f"step_seconds_{k}": v
                                         for k, v in spread(per_call).items()},
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
            "peak_memory_source": "torch.cuda.max_memory_allocated" if cuda else None,
            "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        })
    return {
        "framework": "torch", "framework_version": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "params": params,
        "detail": ("torch.compile, channels_last" if cuda else "eager, channels_last")
                  + f", {torch.get_num_threads()} threads"
                  + (", autocast bfloat16" if dtype == "bfloat16" else ""),
        "rows": rows,
    }


__all__ = ["bench", "build_torch_model"]

if __name__ == "__main__":
    raise SystemExit(child_main(bench))
