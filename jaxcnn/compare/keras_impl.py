"""A jaxcnn model rebuilt and timed in Keras 3 (run as a subprocess).

``KERAS_BACKEND=tensorflow|jax python -m jaxcnn.compare.keras_impl`` reads a
request (JSON on stdin) and writes one JSON answer on stdout; Keras fixes its
backend at import, so each backend gets its own process.

The model is a ``keras.Sequential`` of the same layers (Keras's own Conv2D,
MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Dropout, Flatten and
Dense; the softmax output is a Dense layer producing logits, trained with
``SparseCategoricalCrossentropy(from_logits=True)`` as jaxcnn does), Adam with
the same learning rate and epsilon (Keras's default epsilon is 1e-7; jaxcnn's
1e-8 is passed), and the same batch, already on the device. Training runs
``train_on_batch`` (one compiled step per call, like jaxcnn's step mode), with
Keras's default ``jit_compile="auto"``: XLA on the JAX backend and on
TensorFlow with a GPU, but a plain ``tf.function`` graph (TensorFlow's own
oneDNN kernels, no XLA) on a CPU-only machine; each row's ``framework_detail``
records which. Inference runs ``predict_on_batch``, evaluation ``test_on_batch``.
``--dtype bfloat16`` uses the ``mixed_bfloat16`` policy (bfloat16 compute,
float32 variables).

Example (needs Keras):
  >>> from jaxcnn.compare import request_layers
  >>> from jaxcnn.models import build_model
  >>> layers = request_layers(build_model("keras_convnet", 10), (28, 28, 1))
  >>> build_keras_model(layers, (28, 28, 1)).count_params()  # doctest: +SKIP
  34826
"""

from __future__ import annotations

import os
import resource
from typing import Any

from jaxcnn._timing import is_oom_message, spread, time_calls
from jaxcnn.compare import ComparisonError, check_param_counts
from jaxcnn.compare._child import child_main, pair

_ACTIVATIONS = {None: None, "none": None, "linear": None, "relu": "relu", "gelu": "gelu",
                "elu": "elu", "selu": "selu", "silu": "silu", "swish": "silu", "tanh": "tanh",
                "sigmoid": "sigmoid", "leaky_relu": "leaky_relu"}


def _activation(name):
    if name not in _ACTIVATIONS:
        raise ComparisonError(f"activation {name!r} has no Keras equivalent here; use one of "
                              f"{', '.join(k for k in _ACTIVATIONS if k)}")
    return _ACTIVATIONS[name]


def build_keras_model(layers: list[dict[str, Any]], input_shape):
    """Builds the ``keras.Sequential`` equivalent of a jaxcnn layer list.

    Args:
      layers: :func:`jaxcnn.compare.request_layers` of the jaxcnn model.
      input_shape: ``(H, W, C)``.

    Returns:
      The (uncompiled) Keras model, NHWC input, logits output.

    Raises:
      ComparisonError: for a layer with no Keras adapter.
    """
    import keras

    L = keras.layers
    mods: list = [keras.Input(shape=tuple(input_shape))]
    for layer in layers:
        kind, a = layer["kind"], layer["args"]
        if kind == "Conv2D":
            mods.append(L.Conv2D(a["filters"], pair(a["kernel_size"]), strides=pair(a["strides"]),
                                 padding=a["padding"], activation=_activation(a["activation"]),
                                 use_bias=bool(a["use_bias"])))
        elif kind in ("MaxPooling2D", "AvgPooling2D"):
            cls = L.MaxPooling2D if kind == "MaxPooling2D" else L.AveragePooling2D
            strides = pair(a["strides"]) if a.get("strides") is not None else None
            mods.append(cls(pair(a["pool_size"]), strides=strides, padding=a["padding"]))
        elif kind == "GlobalAvgPooling2D":
            mods.append(L.GlobalAveragePooling2D())
        elif kind == "Dropout":
            mods.append(L.Dropout(float(a["rate"])))
        elif kind == "Flatten":
            mods.append(L.Flatten())
        elif kind == "Dense":
            mods.append(L.Dense(a["units"], activation=_activation(a.get("activation")),
                                use_bias=bool(a.get("use_bias", True))))
        elif kind == "SoftmaxOutput":
            mods.append(L.Dense(a["num_classes"]))
        else:
            raise ComparisonError(f"layer {kind} has no Keras adapter")
    return keras.Sequential(mods)


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
    params = int(model.count_params())
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


__all__ = ["bench", "build_keras_model"]

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(child_main(bench))

