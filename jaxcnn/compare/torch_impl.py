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

import resource
from typing import Any

from jaxcnn._timing import is_oom_message, spread, time_calls
from jaxcnn.compare import ComparisonError, check_param_counts
from jaxcnn.compare._child import child_main, pair, same_padding


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


def build_torch_model(layers: list[dict[str, Any]]):
    """Builds the ``torch.nn.Sequential`` equivalent of a jaxcnn layer list.

    Args:
      layers: :func:`jaxcnn.compare.request_layers` of the jaxcnn model.

    Returns:
      The module (NCHW input, logits output), Glorot-initialised.

    Raises:
      ComparisonError: for a layer or option PyTorch cannot express the same way.
    """
    import torch
    from torch import nn

    class NHWCFlatten(nn.Module):
        # jaxcnn flattens (H, W, C); under channels_last this permute is a view.
        def forward(self, x):
            return torch.flatten(x.permute(0, 2, 3, 1), 1) if x.dim() == 4 else x

    class GlobalAvg(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    mods: list = []
    for layer in layers:
        kind, a = layer["kind"], layer["args"]
        shape = layer["input_shape"]
        h, w = (shape[0], shape[1]) if len(shape) == 3 else (1, 1)
        if kind == "Conv2D":
            k, s = pair(a["kernel_size"]), pair(a["strides"])
            cin = layer["input_shape"][-1]
            padding: Any = 0
            if a["padding"] == "same":
                (t, b), (lft, r) = same_padding(h, k[0], s[0]), same_padding(w, k[1], s[1])
                if t == b and lft == r:
                    padding = (t, lft)
                else:
                    mods.append(nn.ZeroPad2d((lft, r, t, b)))
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
            k = pair(a["pool_size"])
            s = pair(a["strides"]) if a.get("strides") is not None else k
            padding = 0
            if a["padding"] == "same":
                (t, b), (lft, r) = same_padding(h, k[0], s[0]), same_padding(w, k[1], s[1])
                if t == b and lft == r:
                    padding = (t, lft)
                elif kind == "MaxPooling2D":
                    mods.append(nn.ConstantPad2d((lft, r, t, b), float("-inf")))
                else:
                    raise ComparisonError(
                        "avgpool with 'same' padding that pads one side more than the other "
                        "has no PyTorch equivalent; use padding=valid or another input size")
            if kind == "MaxPooling2D":
                mods.append(nn.MaxPool2d(k, s, padding=padding))
            else:
                mods.append(nn.AvgPool2d(k, s, padding=padding, count_include_pad=False))
        elif kind == "GlobalAvgPooling2D":
            mods.append(GlobalAvg())
        elif kind == "Dropout":
            mods.append(nn.Dropout(float(a["rate"])))
        elif kind == "Flatten":
            mods.append(NHWCFlatten())
        elif kind in ("Dense", "SoftmaxOutput"):
            fin = layer["input_shape"][-1]
            units = a["units"] if kind == "Dense" else a["num_classes"]
            lin = nn.Linear(fin, units, bias=bool(a.get("use_bias", True)))
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
            mods.append(lin)
            act = _activation(nn, a.get("activation")) if kind == "Dense" else None
            if act is not None:
                mods.append(act)
        else:
            raise ComparisonError(f"layer {kind} has no PyTorch adapter")
    return nn.Sequential(*mods)


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

