"""A jaxcnn model rebuilt and timed in Keras 3 (run as a subprocess).

``KERAS_BACKEND=tensorflow|jax python -m jaxcnn.compare.keras_impl`` reads a
request (JSON on stdin) and writes one JSON answer on stdout; Keras fixes its
backend at import, so each backend gets its own process.

The model is a functional ``keras.Model`` of the same layers (Keras's own
Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Dropout,
Flatten, Dense, BatchNormalization, Activation and Add for residual blocks;
explicit padding is a pad layer before a valid convolution or pool; the softmax
output is a Dense layer producing logits, trained with
``SparseCategoricalCrossentropy(from_logits=True)`` as jaxcnn does), Adam with
the same learning rate and epsilon (Keras's default epsilon is 1e-7; jaxcnn's
1e-8 is passed), and the same batch, already on the device. Its parameter
count is the trainable one (Keras counts batch norms' moving statistics as
non-trainable weights; jaxcnn does not count them). Training runs
``train_on_batch`` (one compiled step per call, like jaxcnn's step mode; batch
norms use batch statistics there and the moving ones in prediction and
evaluation), with Keras's default ``jit_compile="auto"``: XLA on the JAX
backend and on TensorFlow with a GPU, but a plain ``tf.function`` graph
(TensorFlow's own oneDNN kernels, no XLA) on a CPU-only machine; each row's
``framework_detail`` records which. Inference runs ``predict_on_batch``,
evaluation ``test_on_batch``. ``--dtype bfloat16`` uses the ``mixed_bfloat16``
policy (bfloat16 compute, float32 variables).

Example (needs Keras):
  >>> from jaxcnn.compare import request_layers
  >>> from jaxcnn.models import build_model
  >>> layers = request_layers(build_model("keras_convnet", 10), (28, 28, 1))
  >>> trainable_params(build_keras_model(layers, (28, 28, 1)))  # doctest: +SKIP
  34826
"""

from __future__ import annotations

import functools
import os
import resource
from typing import Any

from jaxcnn._timing import is_oom_message, spread, time_calls
from jaxcnn.compare import ComparisonError, check_param_counts
from jaxcnn.compare._child import child_main, pair, window_coverage

# Keras's own names where they mean the same function as jaxcnn's; gelu and
# leaky_relu need Flax's defaults spelled out (Keras's gelu is the exact erf
# form and its leaky_relu slope 0.2; Flax's are the tanh form and 0.01).
_ACTIVATIONS = {None: None, "none": None, "linear": None, "relu": "relu", "gelu": "gelu_tanh",
                "elu": "elu", "selu": "selu", "silu": "silu", "swish": "silu", "tanh": "tanh",
                "sigmoid": "sigmoid", "leaky_relu": "leaky_relu_0.01"}


def _activation(name):
    if name not in _ACTIVATIONS:
        raise ComparisonError(f"activation {name!r} has no Keras equivalent here; use one of "
                              f"{', '.join(k for k in _ACTIVATIONS if k)}")
    key = _ACTIVATIONS[name]
    if key in ("gelu_tanh", "leaky_relu_0.01"):
        import keras

        if key == "gelu_tanh":
            return lambda x: keras.activations.gelu(x, approximate=True)
        return lambda x: keras.activations.leaky_relu(x, negative_slope=0.01)
    return key


@functools.lru_cache(maxsize=None)
def _custom_layers():
    """The two small layers Keras lacks, defined once keras is imported."""
    import keras
    import numpy as np

    class ConstantPad(keras.layers.Layer):
        """Pads height and width with a constant (``-inf`` before a max pool)."""

        def __init__(self, pads, value, **kwargs):
            super().__init__(**kwargs)
            self.pads, self.value = tuple(tuple(p) for p in pads), float(value)

        def call(self, x):
            return keras.ops.pad(x, ((0, 0), *self.pads, (0, 0)), constant_values=self.value)

        def compute_output_shape(self, shape):
            (t, b), (lft, r) = self.pads
            grow = lambda n, extra: None if n is None else n + extra  # noqa: E731
            return (shape[0], grow(shape[1], t + b), grow(shape[2], lft + r), shape[3])

    class ConstantScale(keras.layers.Layer):
        """Multiplies by a constant, a scalar or an array broadcast over the batch."""

        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = np.asarray(factor, np.float32)

        def call(self, x):
            return x * keras.ops.cast(self.factor, x.dtype)

        def compute_output_shape(self, shape):
            return shape

    return ConstantPad, ConstantScale


def build_keras_model(layers: list[dict[str, Any]], input_shape):
    """Builds the Keras (functional) equivalent of a jaxcnn layer list.

    Supported: Conv2D, MaxPooling2D, AvgPooling2D (padding ``valid``,
    ``same``, or an int / pair: zeros before a valid convolution, ``-inf``
    before a max pool, and an average that leaves the padding out, as
    jaxcnn's), GlobalAvgPooling2D, Dropout, Flatten, Dense, BatchNorm /
    BatchNorm2D / BatchNorm1D (``BatchNormalization``: the same momentum
    convention, ``center`` = use_bias, ``scale`` = use_scale, then the
    activation), Activation, Residual (``Add`` of body and shortcut, nested to
    any depth) and SoftmaxOutput (with or without bias, logits times
    ``scale``).

    Keras keeps a batch norm's moving mean and variance as non-trainable
    weights: compare :func:`trainable_params`, not ``count_params()``.

    Args:
      layers: :func:`jaxcnn.compare.request_layers` of the jaxcnn model.
      input_shape: ``(H, W, C)``.

    Returns:
      The (uncompiled) Keras model, NHWC input, logits output.

    Raises:
      ComparisonError: for a layer or option with no identical Keras form.

    Example (needs Keras):
      >>> from jaxcnn.compare import request_layers
      >>> from jaxcnn.models import build_model
      >>> spec = ("conv(8, 3, none, padding=1, bias=false) bn(relu) "
      ...         "residual(conv(8, 3, padding=1)) gap softmax")
      >>> layers = request_layers(build_model(spec, 10), (16, 16, 3))
      >>> m = build_keras_model(layers, (16, 16, 3))  # doctest: +SKIP
      >>> trainable_params(m), m.count_params()  # doctest: +SKIP
      (906, 922)
    """
    import keras

    inputs = keras.Input(shape=tuple(input_shape))
    return keras.Model(inputs, _keras_layers(layers, inputs))


def trainable_params(model) -> int:
    """The number of trainable parameters of a Keras model (jaxcnn's count: batch
    statistics are not parameters)."""
    import numpy as np

    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _keras_layers(layers: list[dict[str, Any]], x):
    """Applies ``layers`` to the symbolic tensor ``x``; returns the output tensor."""
    import keras

    L = keras.layers
    ConstantPad, ConstantScale = _custom_layers()
    for layer in layers:
        kind, a = layer["kind"], layer["args"]
        shape = layer["input_shape"]
        if kind == "Conv2D":
            padding = a["padding"]
            if not isinstance(padding, str):
                ph, pw = _explicit(padding, kind)
                if ph or pw:
                    x = L.ZeroPadding2D(((ph, ph), (pw, pw)))(x)
                padding = "valid"
            x = L.Conv2D(a["filters"], pair(a["kernel_size"]), strides=pair(a["strides"]),
                         padding=padding, activation=_activation(a["activation"]),
                         use_bias=bool(a["use_bias"]))(x)
        elif kind in ("MaxPooling2D", "AvgPooling2D"):
            x = _keras_pool(layer, x, L, ConstantPad, ConstantScale)
        elif kind == "GlobalAvgPooling2D":
            x = L.GlobalAveragePooling2D()(x)
        elif kind == "Dropout":
            x = L.Dropout(float(a["rate"]))(x)
        elif kind == "Flatten":
            x = L.Flatten()(x)  # NHWC, so the same feature order as jaxcnn's
        elif kind == "Dense":
            x = L.Dense(a["units"], activation=_activation(a.get("activation")),
                        use_bias=bool(a.get("use_bias", True)))(x)
        elif kind in ("BatchNorm", "BatchNorm2D", "BatchNorm1D"):
            if len(shape) not in (1, 3):
                raise ComparisonError(f"{kind} on per-image shape {shape} is not compared; use "
                                      "it on feature maps or vectors")
            # Keras's momentum is jaxcnn's (and Flax's): the old running value's weight.
            x = L.BatchNormalization(axis=-1, momentum=float(a["momentum"]),
                                     epsilon=float(a["epsilon"]), center=bool(a["use_bias"]),
                                     scale=bool(a["use_scale"]))(x)
            act = _activation(a.get("activation"))
            if act is not None:
                x = L.Activation(act)(x)
        elif kind == "Activation":
            act = _activation(a["activation"])
            if act is not None:
                x = L.Activation(act)(x)
        elif kind == "Residual":
            body = _keras_layers(layer["body"], x)
            shortcut = _keras_layers(layer["shortcut"], x) if layer.get("shortcut") else x
            x = L.Add()([body, shortcut])
        elif kind == "SoftmaxOutput":
            # Logits, as jaxcnn's; the loss takes them with from_logits=True.
            x = L.Dense(a["num_classes"], use_bias=bool(a.get("use_bias", True)))(x)
            if float(a.get("scale", 1.0)) != 1.0:
                x = ConstantScale(float(a["scale"]))(x)
        else:
            raise ComparisonError(f"layer {kind} has no Keras adapter")
    return x


def _explicit(padding, kind: str) -> tuple[int, int]:
    ph, pw = pair(padding)
    if min(ph, pw) < 0:
        raise ComparisonError(f"{kind}: padding {padding!r} is negative")
    return ph, pw


def _keras_pool(layer: dict[str, Any], x, L, ConstantPad, ConstantScale):
    """A pool with jaxcnn's padding. Keras has only 'valid' and 'same', so explicit
    padding is a pad layer before a valid pool: ``-inf`` for max; for average, zeros
    and then a constant map rescaling each window's mean to its unpadded positions."""
    import numpy as np

    kind, a = layer["kind"], layer["args"]
    k = pair(a["pool_size"])
    s = pair(a["strides"]) if a.get("strides") is not None else k
    cls = L.MaxPooling2D if kind == "MaxPooling2D" else L.AveragePooling2D
    padding = a["padding"]
    if isinstance(padding, str):
        return cls(k, strides=s, padding=padding)(x)
    ph, pw = _explicit(padding, kind)
    if not (ph or pw):
        return cls(k, strides=s, padding="valid")(x)
    pads = ((ph, ph), (pw, pw))
    if kind == "MaxPooling2D":
        return cls(k, strides=s, padding="valid")(ConstantPad(pads, float("-inf"))(x))
    y = cls(k, strides=s, padding="valid")(L.ZeroPadding2D(pads)(x))
    # Each window's mean over zeros, rescaled to its real positions: jaxcnn's average.
    (h, w), (oh, ow) = layer["input_shape"][:2], layer["output_shape"][:2]
    rows = window_coverage(h, k[0], s[0], ph, oh)
    cols = window_coverage(w, k[1], s[1], pw, ow)
    if min(rows) <= 0 or min(cols) <= 0:
        raise ComparisonError(f"avgpool with padding {padding} has windows wholly in the "
                              "padding (an average of nothing); use a padding smaller than "
                              "the window")
    inverse = np.array([[1.0 / (fr * fc) for fc in cols] for fr in rows], np.float32)
    return ConstantScale(inverse[None, :, :, None])(y)


def _memory(backend: str, gpu: bool, reset: bool = False):
    if not gpu:
        return None, None
    if backend == "tensorflow":
        import tensorflow as tf

        if reset:
            tf.config.experimental.reset_memory_stats("GPU:0")
            return None, None
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), \
            "tf.config.experimental.get_memory_info"
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use"), "jax device.memory_stats (process peak)"
    return None, None


def bench(request: dict[str, Any]) -> dict[str, Any]:
    """Builds, checks and times the requested model in Keras on this process's backend.

    Args:
      request: as for :func:`jaxcnn.compare.torch_impl.bench`.

    Returns:
      ``{"framework", "framework_version", "device", "params", "detail", "rows"}``.
    """
    import keras
    import numpy as np

    backend = keras.backend.backend()
    keras.utils.set_random_seed(int(request["seed"]))
    if request["dtype"] == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    if backend == "tensorflow":
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
        backend_version = tf.__version__
    elif backend == "jax":
        import jax

        gpu = jax.default_backend() != "cpu"
        backend_version = jax.__version__
    else:
        raise ComparisonError(f"Keras backend {backend!r} is not benchmarked; set "
                              "KERAS_BACKEND to tensorflow or jax")
    model = build_keras_model(request["layers"], request["input_shape"])
    # Trainable weights only: Keras also counts batch norms' moving statistics.
    params = trainable_params(model)
    check_param_counts(int(request["expected_params"]), {f"keras-{backend}": params})
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(request["learning_rate"]),
                                        epsilon=float(request.get("eps", 1e-8))),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    what = request["what"]
    h, w, c = request["input_shape"]
    rng = np.random.default_rng(int(request["seed"]))
    rows = []
    for batch_size in request["batch_sizes"]:
        skip = request.get("skip", {}).get(str(batch_size))
        if skip:
            rows.append({"batch_size": batch_size, "status": "oom", "error": skip})
            continue
        try:
            # On the device before timing, as jaxcnn's batch is.
            x = keras.ops.convert_to_tensor(
                rng.standard_normal((batch_size, h, w, c), dtype=np.float32))
            y = keras.ops.convert_to_tensor(
                rng.integers(0, request["num_classes"], batch_size).astype(np.int32))
            _memory(backend, gpu, reset=True)
            if what == "train":
                one = lambda: model.train_on_batch(x, y)  # noqa: E731
            elif what == "eval":
                one = lambda: model.test_on_batch(x, y)  # noqa: E731
            else:
                one = lambda: model.predict_on_batch(x)  # noqa: E731

            # Each *_on_batch call returns host values (numpy/floats), so it
            # has finished when it returns.
            def call(n):
                for _ in range(n):
                    one()

            first, per_call = time_calls(call, calls=request["steps"],
                                         repeats=request["repeats"], warmup=request["warmup"])
        except Exception as e:  # noqa: BLE001 - frameworks raise many OOM types
            if not is_oom_message(str(e)):
                raise
            rows.append({"batch_size": batch_size, "status": "oom", "error": str(e)[:300]})
            continue
        mem, source = _memory(backend, gpu)
        rows.append({
            "batch_size": batch_size, "status": "ok", "compile_seconds": first,
            "step_seconds": per_call, **{f"step_seconds_{k}": v
                                         for k, v in spread(per_call).items()},
            "peak_memory_bytes": mem, "peak_memory_source": source,
            "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        })
    return {
        "framework": f"keras-{backend}", "framework_version": keras.__version__,
        "backend_version": backend_version,
        "device": "gpu" if gpu else "cpu", "params": params,
        "detail": f"Keras {keras.__version__} on {backend} {backend_version}, "
                  f"jit_compile={model.jit_compile}, *_on_batch"
                  + (", mixed_bfloat16" if request["dtype"] == "bfloat16" else ""),
        "rows": rows,
    }


__all__ = ["bench", "build_keras_model", "trainable_params"]

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(child_main(bench))

