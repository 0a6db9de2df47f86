"""Benchmark harness: compile time, step time, throughput, FLOP/s, utilisation and memory.

One call measures a model at several batch sizes on the default JAX device
(CPU, GPU or TPU) and, optionally, the same model in PyTorch and Keras 3 side
by side (:mod:`jaxcnn.compare`). Each result is one flat dict (one JSON line)
carrying every figure with the device, the versions and the git commit that
produced it, so results from different machines can be merged.

How each figure is measured (``docs/benchmarks.md`` explains their pitfalls):

* ``compile_seconds``: tracing, lowering and XLA compilation of the step,
  timed apart from running it. The persistent compilation cache is turned off
  for this measurement unless asked otherwise (a cache hit would time a file
  read); ``compilation_cache`` says which happened.
* ``step_seconds_*``: after one first call and ``warmup`` more, ``repeats``
  rounds of ``steps`` steps each are timed, blocking on the last result before
  reading the clock (JAX dispatches asynchronously); each round gives a time
  per step, and the median, min and max over rounds are reported.
* ``images_per_s``: batch size / median step time.
* ``flops_per_step``: XLA's cost analysis of the compiled step; when the
  backend gives none, the analytical count of :func:`jaxcnn.models.summary`
  (forward FLOPs x batch, x3 for a training step).
* ``flop_per_s`` and ``utilisation``: FLOPs per step / median step time, and
  that over the device's peak (:func:`device_peak`: a table of published dense
  peaks, or on CPUs a large matmul measured on the spot).
* ``peak_memory_bytes``: the device's own peak (``memory_stats``) where it
  keeps one (GPU, TPU), else XLA's memory analysis of the compiled step
  (arguments + outputs + temporaries - donated buffers).

A batch whose compiled memory estimate exceeds the memory available, or that
fails with an out-of-memory error, becomes a row with ``status="oom"`` and
the sweep goes on.

Example:
  >>> cfg = BenchConfig(model="conv(4, 3) maxpool(2) flatten softmax", input_shape=(8, 8, 1),
  ...                   num_classes=3, batch_sizes=(8,), steps=2, repeats=2, warmup=1)
  >>> row = bench_one(cfg, 8, peak=Peak(1e9, "given", "for the example"))
  >>> row["status"], row["params"], row["images_per_s"] > 0
  ('ok', 151, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import re
import resource
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import env
from jaxcnn.compare import (ComparisonError, check_param_counts, is_oom_message,
                            parse_frameworks, request_layers, run_framework, spread, time_calls)
from jaxcnn.errors import JaxcnnError
from jaxcnn.models import build_model, summary, to_spec
from jaxcnn.ops import compiler_options, paths, resolve_impl
from jaxcnn.train import create_train_state, eval_step, resolve_micro_batches, train_step

WHATS = ("train", "infer", "eval")
MODES = ("step", "scan")
DTYPES = ("float32", "bfloat16")


class BenchError(JaxcnnError):
    """A benchmark request that cannot run as given.

    Example:
      >>> try:
      ...     BenchConfig(what="fly")
      ... except BenchError as e:
      ...     print(str(e).split(";")[0])
      what must be one of train, infer, eval
    """


# ---------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to benchmark and how.

    Attributes:
      model: a zoo name or spec text (:func:`jaxcnn.models.build_model`).
      input_shape: ``(H, W, C)`` of one image.
      num_classes: classes of the output layer.
      batch_sizes: the batch sizes to sweep.
      dtype: ``"float32"``, or ``"bfloat16"`` (bfloat16 compute, float32
        parameters and logits).
      steps: steps per timed round (``mode="step"``), or steps per compiled
        call (``mode="scan"``).
      repeats: timed rounds; the median, min and max over them are reported.
      warmup: untimed calls after the first one.
      mode: ``"step"``: one compiled call per step. ``"scan"``: ``steps``
        steps per compiled call (``lax.scan``), which removes per-step
        dispatch but is slow on XLA's CPU backend for convolutions.
      what: ``"train"`` (forward, backward, Adam update), ``"infer"`` (forward
        to logits) or ``"eval"`` (forward, loss and accuracy).
      impl: conv/pool implementation, ``"auto"``, ``"xla"`` or ``"fast"``
        (:mod:`jaxcnn.ops`).
      micro_batches: ``"auto"`` or how many micro-batches a training step
        runs as (:func:`jaxcnn.train.resolve_micro_batches`; 1: one pass), as
        ``jaxcnn train`` does.
      learning_rate: Adam's learning rate (every framework uses it).
      seed: seed of the parameters and the random batch.
      compilation_cache: keep JAX's persistent compilation cache on while
        compiling (the compile time may then be a cache read).
      reuse_host_memory: ``"auto"``, True or False, as ``jaxcnn train``
        applies it (:func:`jaxcnn.env.reuse_host_memory_for`); process-wide,
        so once on it stays on for later measurements in the process.

    Example:
      >>> BenchConfig(batch_sizes=(32, 128)).batch_sizes
      (32, 128)
    """

    model: str = "keras_convnet"
    input_shape: tuple[int, ...] = (28, 28, 1)
    num_classes: int = 10
    batch_sizes: tuple[int, ...] = (32, 128, 512)
    dtype: str = "float32"
    steps: int = 10
    repeats: int = 5
    warmup: int = 2
    mode: str = "step"
    what: str = "train"
    impl: str = "auto"
    micro_batches: int | str = "auto"
    learning_rate: float = 1e-3
    seed: int = 0
    compilation_cache: bool = False
    reuse_host_memory: bool | str = "auto"

    def __post_init__(self):
        shape = tuple(int(d) for d in self.input_shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or min(shape) < 1:
            raise BenchError(f"input_shape must be (H, W, C); got {self.input_shape!r}. "
                             "Pass e.g. --input-shape 28x28x1")
        object.__setattr__(self, "input_shape", shape)
        sizes = tuple(self.batch_sizes)
        if not sizes or not all(isinstance(b, int) and b >= 1 for b in sizes):
            raise BenchError(f"batch_sizes must be positive ints; got {self.batch_sizes!r}. "
                             "Pass e.g. --batch-sizes 32,128,512")
        object.__setattr__(self, "batch_sizes", sizes)
        checks = (
            (self.what in WHATS, f"what must be one of {', '.join(WHATS)}; got {self.what!r}"),
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}; got {self.mode!r}"),
            (self.dtype in DTYPES,
             f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}"),
            (self.impl in ("auto", "xla", "fast"),
             f"impl must be auto, xla or fast; got {self.impl!r}"),
            (self.micro_batches == "auto" or (isinstance(self.micro_batches, int)
                                              and self.micro_batches >= 1),
             f"micro_batches must be auto or an int >= 1; got {self.micro_batches!r}"),
            (env.is_host_memory_setting(self.reuse_host_memory),
             f"reuse_host_memory must be auto, True or False; got {self.reuse_host_memory!r}"),
            (int(self.num_classes) >= 2, f"num_classes must be >= 2; got {self.num_classes}"),
            (int(self.steps) >= 1, f"steps must be >= 1; got {self.steps}"),
            (int(self.repeats) >= 1, f"repeats must be >= 1; got {self.repeats}"),
            (int(self.warmup) >= 0, f"warmup must be >= 0; got {self.warmup}"),
            (float(self.learning_rate) > 0, f"learning_rate must be > 0; got "
                                            f"{self.learning_rate}"),
        )
        for ok, message in checks:
            if not ok:
                raise BenchError(message + "; see `jaxcnn bench --help`")


# ---------------------------------------------------------------------------
# Device peaks


@dataclasses.dataclass(frozen=True)
class Peak:
    """The peak FLOP/s that utilisation is measured against, and where it came from.

    Attributes:
      flop_per_s: the peak, or None when unknown.
      source: ``"table"`` (published), ``"measured"`` (a matmul timed here),
        ``"given"`` (by the caller) or ``"unknown"``.
      detail: one sentence saying which figure was used and why.

    Example:
      >>> Peak(989.4e12, "table", "H100 SXM").flop_per_s
      989400000000000.0
    """

    flop_per_s: float | None
    source: str
    detail: str


# Published dense (no structured sparsity) peak FLOP/s per chip. Patterns are
# matched, in order, against jax's device_kind (e.g. "NVIDIA H100 80GB HBM3",
# "NVIDIA A100-SXM4-40GB", "TPU v5 lite"). "tf32" is the tensor-core rate that
# XLA uses for float32 convolutions and matmuls on NVIDIA GPUs since Ampere at
# JAX's default matmul precision.
DEVICE_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (r"H100.*PCIe", "NVIDIA H100 PCIe",
     {"float32": 51.2e12, "tf32": 378e12, "bfloat16": 756e12}),
    (r"H100.*NVL", "NVIDIA H100 NVL",
     {"float32": 60e12, "tf32": 417.5e12, "bfloat16": 835.5e12}),
    (r"H200|GH200", "NVIDIA H200",
     {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12}),
    (r"H100", "NVIDIA H100 SXM",
     {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12}),
    (r"A100", "NVIDIA A100",
     {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12}),
    (r"V100S", "NVIDIA V100S PCIe", {"float32": 16.4e12}),
    (r"V100.*PCIE", "NVIDIA V100 PCIe", {"float32": 14e12}),
    (r"V100", "NVIDIA V100 SXM2", {"float32": 15.7e12}),
    (r"\bL4\b", "NVIDIA L4", {"float32": 30.3e12, "tf32": 60e12, "bfloat16": 121e12}),
    (r"TPU v4", "TPU v4", {"bfloat16": 275e12}),
    (r"TPU v5 ?lite|TPU v5e", "TPU v5e", {"bfloat16": 197e12}),
    (r"TPU v5p|TPU v5$", "TPU v5p", {"bfloat16": 459e12}),
    (r"TPU v6 ?lite|TPU v6e|TPU7x|Trillium", "TPU v6e", {"bfloat16": 918e12}),
)


def lookup_peak(device_kind: str, dtype: str = "float32", *,
                matmul_precision: str | None = None) -> Peak | None:
    """The published peak of a device kind from :data:`DEVICE_PEAKS`, or None.

    Args:
      device_kind: ``jax.devices()[0].device_kind``.
      dtype: ``"float32"`` or ``"bfloat16"``.
      matmul_precision: JAX's ``jax_default_matmul_precision`` (None: default).
        At the default precision, float32 runs on TF32 tensor cores on NVIDIA
        GPUs (Ampere and later) and as bfloat16 passes on TPUs, so those
        rates are the peak; ``"highest"``/``"float32"`` use the float32 rate.

    Returns:
      A :class:`Peak` with source ``"table"``, or None for a kind not in the
      table (or with no figure for that dtype, e.g. bfloat16 on a V100).

    Example:
      >>> lookup_peak("NVIDIA H100 80GB HBM3", "bfloat16").flop_per_s
      989400000000000.0
      >>> lookup_peak("NVIDIA A100-SXM4-40GB", "float32").flop_per_s  # TF32
      156000000000000.0
      >>> lookup_peak("Quantum Abacus 9000") is None
      True
    """
    exact_f32 = str(matmul_precision).lower() in ("highest", "float32")
    for pattern, name, peaks in DEVICE_PEAKS:
        if not re.search(pattern, device_kind, flags=re.IGNORECASE):
            continue
        if dtype == "float32" and not exact_f32 and "tf32" in peaks:
            return Peak(peaks["tf32"], "table",
                        f"{name} published dense TF32 peak (XLA runs float32 convolutions "
                        "and matmuls on TF32 tensor cores at JAX's default precision)")
        if dtype == "float32" and "float32" not in peaks and "bfloat16" in peaks \
                and not exact_f32:
            return Peak(peaks["bfloat16"], "table",
                        f"{name} published dense bfloat16 peak (float32 matmuls run as "
                        "bfloat16 passes at JAX's default precision)")
        if dtype in peaks:
            return Peak(peaks[dtype], "table", f"{name} published dense {dtype} peak")
        return None
    return None


def measure_matmul_peak(dtype: str = "float32", *, device=None, repeats: int = 10,
                        max_size: int | None = None) -> tuple[float, int]:
    """FLOP/s of the fastest of several large square matmuls on a device.

    The size doubles from 256 until one matmul takes at least 0.2 s (or
    ``max_size``), so the figure is not dominated by call overhead; the best
    of ``repeats`` timed runs is returned, as peaks are best cases (and on a
    shared machine the best run is the one least disturbed).

    Args:
      dtype: ``"float32"`` or ``"bfloat16"``.
      device: a JAX device (default: the first).
      repeats: timed runs at the final size.
      max_size: largest matrix side (default 4096 on CPU, 16384 elsewhere).

    Returns:
      ``(flop_per_s, size)``.

    Example:
      >>> flops, n = measure_matmul_peak(max_size=256, repeats=2)
      >>> flops > 0, n
      (True, 256)
    """
    device = device or jax.devices()[0]
    max_size = max_size or (4096 if device.platform == "cpu" else 16384)
    matmul = jax.jit(lambda a, b: a @ b)
    n = min(256, max_size)
    while True:
        key_a, key_b = jax.random.split(jax.random.key(n))
        a = jax.device_put(jax.random.normal(key_a, (n, n), dtype), device)
        b = jax.device_put(jax.random.normal(key_b, (n, n), dtype), device)
        matmul(a, b).block_until_ready()
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        elapsed = time.perf_counter() - start
        if elapsed >= 0.2 or n * 2 > max_size:
            break
        n *= 2
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best, n


@functools.lru_cache(maxsize=None)
def _measured_peak(device_kind: str, platform: str, dtype: str) -> tuple[float, int]:
    del device_kind, platform  # cache keys: the measurement is per device kind and dtype
    return measure_matmul_peak(dtype)


def device_peak(dtype: str = "float32", device=None, *, measure: bool = True) -> Peak:
    """The peak FLOP/s to measure utilisation against, saying where it came from.

    GPUs and TPUs in :data:`DEVICE_PEAKS` get their published dense peak. CPUs
    (no table can know a CPU's cores, clock and vector width) and device
    kinds not in the table get a peak measured on the spot with a large
    matmul (:func:`measure_matmul_peak`, cached per process); with
    ``measure=False`` they get an unknown peak.

    Args:
      dtype: ``"float32"`` or ``"bfloat16"``.
      device: a JAX device (default: the first).
      measure: allow measuring.

    Returns:
      A :class:`Peak`.

    Example:
      >>> device_peak(measure=False).source in ("table", "unknown")
      True
    """
    device = device or jax.devices()[0]
    kind = device.device_kind
    if device.platform != "cpu":
        peak = lookup_peak(kind, dtype, matmul_precision=jax.config.jax_default_matmul_precision)
        if peak is not None:
            return peak
        why = (f"device kind {kind!r} has no {dtype} entry in the peak table "
               "(jaxcnn.bench.DEVICE_PEAKS)")
    else:
        why = f"CPU ({kind}): no published peak applies"
    if not measure:
        return Peak(None, "unknown", f"{why}; utilisation is not reported")
    try:
        flops, n = _measured_peak(kind, device.platform, dtype)
    except Exception as e:  # noqa: BLE001 - any failure leaves the peak unknown, not the run
        return Peak(None, "unknown", f"{why}, and measuring a matmul failed ({e})")
    return Peak(flops, "measured", f"{why}; measured here as the best of 10 {dtype} {n}x{n} "
                                   f"matmuls ({flops / 1e9:.1f} GFLOP/s)")


# ---------------------------------------------------------------------------
# Memory


def available_memory_bytes(device=None) -> int | None:
    """Bytes a new computation can still allocate on a device (None if unknown).

    Accelerators report their allocator's limit and use; for the CPU it is the
    host's available memory (``MemAvailable``), capped by a cgroup limit.

    Example:
      >>> available_memory_bytes() is None or available_memory_bytes() > 0
      True
    """
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform != "cpu":
        return None
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if text != "max":
            limits.append(int(text) - used)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def compiled_memory_bytes(compiled) -> int | None:
    """XLA's estimate of the peak memory of a compiled computation.

    Arguments + outputs + temporaries - outputs that reuse donated inputs
    (+ generated code), from ``compiled.memory_analysis()``.

    Example:
      >>> c = jax.jit(lambda x: x * 2).lower(jnp.ones(1000)).compile()
      >>> compiled_memory_bytes(c) >= 8000
      True
    """
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without memory analysis
        return None
    if m is None:
        return None
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes + m.generated_code_size_in_bytes)
    return int(total)


def _device_peak_bytes(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


# ---------------------------------------------------------------------------
# Compilation


@contextlib.contextmanager
def _compile_cache(enabled: bool):
    """Turns the persistent compilation cache off inside (unless ``enabled``);
    yields a list that receives "hit"/"miss" events."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    events: list[str] = []

    def listener(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            events.append("hit")
        elif event == "/jax/compilation_cache/cache_misses":
            events.append("miss")

    previous = jax.config.jax_enable_compilation_cache
    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        # JAX decides once per process whether the cache is in use; reset so
        # the switch takes effect now, and again after restoring it.
        cc.reset_cache()
    jax.monitoring.register_event_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_listener(listener)
        if not enabled:
            jax.config.update("jax_enable_compilation_cache", previous)
            cc.reset_cache()


def _cost_flops(analysis) -> float | None:
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    flops = analysis.get("flops")
    return float(flops) if flops and flops > 0 else None


# ---------------------------------------------------------------------------
# The step functions


def _step_functions(model, config: BenchConfig, micro_batches: int = 1):
    """Returns ``(fn, single_step_fn, donate)`` for ``config.what`` and ``config.mode``.

    ``fn`` takes ``(state, batch, key)`` and runs one step (or ``steps``
    steps under scan); ``single_step_fn`` is one step, for the FLOP count.
    Training steps run as ``micro_batches`` micro-batches.
    """
    if config.what == "train":
        def one(state, batch, key):
            return train_step(state, batch, key, micro_batches=micro_batches)
    elif config.what == "eval":
        def one(state, batch, key):
            return state, eval_step(state, batch)
    else:
        def one(state, batch, key):
            return state, state.apply_fn({"params": state.params}, batch["image"], train=False)

    if config.mode == "step":
        return one, one, (0,) if config.what == "train" else ()

    steps = int(config.steps)

    def scanned(state, batch, key):
        def body(carry, _):
            state, bias = carry
            # Inference and evaluation see the same batch every step; adding a
            # value computed from the previous step (always 0.0) keeps XLA from
            # hoisting the whole pass out of the loop. x * 0.0 is not folded
            # for floats (NaN semantics), so each step really runs.
            state, out = one(state, {**batch, "image": batch["image"] + bias}, key)
            leaves = jax.tree.leaves(out)
            bias = (leaves[0].reshape(-1)[0] * 0.0).astype(batch["image"].dtype)
            return (state, bias), None

        (state, bias), _ = jax.lax.scan(body, (state, jnp.zeros((), batch["image"].dtype)),
                                        None, length=steps)
        return state, bias

    return scanned, one, (0,) if config.what == "train" else ()


def describe_paths(model, input_shape, *, train: bool = True) -> str:
    """Which implementation each conv and pool layer of ``model`` runs, in one line.

    Example:
      >>> from jaxcnn.models import build_model
      >>> describe_paths(build_model("keras_convnet", 10, impl="xla"), (28, 28, 1))
      'conv2d xla,xla; max_pool xla,xla'
    """
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def apply(v, x):
        return model.apply(v, x, train=train, rngs={"dropout": jax.random.key(0)})

    by_op: dict[str, list[str]] = {}
    for op, path in paths(apply, variables, x):
        by_op.setdefault(op, []).append(path)
    return "; ".join(f"{op} {','.join(p)}" for op, p in by_op.items())


def _row_base(config: BenchConfig, batch_size: int) -> dict[str, Any]:
    keys = ("framework", "framework_version", "framework_detail", "model", "spec", "what",
            "mode", "batch_size", "dtype", "impl", "impl_requested", "micro_batches", "op_paths",
            "compiler_options", "host_memory", "input_shape",
            "num_classes", "params", "status", "error", "round", "steps", "repeats", "warmup",
            "compile_seconds", "lower_seconds", "compilation_cache", "first_call_seconds",
            "step_seconds", "step_seconds_median", "step_seconds_min", "step_seconds_max",
            "images_per_s", "flops_per_step", "flops_source", "analytical_flops_per_step",
            "flop_per_s", "peak_flop_per_s", "peak_source", "peak_detail", "utilisation",
            "peak_memory_bytes", "peak_memory_source", "compiled_memory_bytes",
            "memory_available_bytes", "host_peak_rss_bytes", "device_kind", "device",
            "versions", "git_commit", "timestamp")
    row: dict[str, Any] = dict.fromkeys(keys)
    row.update(model=config.model, what=config.what, mode=config.mode, batch_size=batch_size,
               dtype=config.dtype, input_shape=list(config.input_shape),
               num_classes=config.num_classes, steps=config.steps, repeats=config.repeats,
               warmup=config.warmup)
    return row


def _environment(peak: Peak) -> dict[str, Any]:
    info = env.device_info()
    return {"device_kind": info["device_kind"], "device": info, "versions": env.versions(),
            "git_commit": env.git_commit(), "peak_flop_per_s": peak.flop_per_s,
            "peak_source": peak.source, "peak_detail": peak.detail}


def _analytical_flops(forward_per_image: int, batch_size: int, what: str) -> float:
    # The backward pass costs about twice the forward (a gradient for the
    # activations and one for the weights), hence 3x for a training step.
    return float(forward_per_image) * batch_size * (3 if what == "train" else 1)


def _finish(row: dict[str, Any], per_call: list[float], steps_per_call: int) -> None:
    """Fills the timing-derived figures of a row from seconds per call."""
    per_step = [t / steps_per_call for t in per_call]
    s = spread(per_step)
    row.update(step_seconds=per_step, step_seconds_median=s["median"],
               step_seconds_min=s["min"], step_seconds_max=s["max"],
               images_per_s=row["batch_size"] / s["median"])
    if row.get("flops_per_step"):
        row["flop_per_s"] = row["flops_per_step"] / s["median"]
        if row.get("peak_flop_per_s"):
            row["utilisation"] = row["flop_per_s"] / row["peak_flop_per_s"]
    row["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_one(config: BenchConfig, batch_size: int, *, peak: Peak | None = None,
              round_index: int = 0, memory_limit_bytes: int | None = None) -> dict[str, Any]:
    """Benchmarks jaxcnn at one batch size; returns one result row.

    Args:
      config: the :class:`BenchConfig`.
      batch_size: the batch size of this row.
      peak: the device peak (default: :func:`device_peak` for the dtype).
      round_index: recorded as ``round`` (for interleaved repeats).
      memory_limit_bytes: memory the step may use (default: what
        :func:`available_memory_bytes` reports).

    Returns:
      A row dict (see the module docstring); ``status`` is ``"ok"`` or
      ``"oom"`` (then the timings are None and ``error`` says why).

    Example:
      >>> cfg = BenchConfig(model="flatten softmax", input_shape=(4, 4, 1), num_classes=2,
      ...                   what="infer", steps=1, repeats=1, warmup=0)
      >>> bench_one(cfg, 2, peak=Peak(None, "unknown", "example"))["flops_source"]
      'xla_cost_analysis'
    """
    peak = peak or device_peak(config.dtype)
    device = jax.devices()[0]
    row = _row_base(config, batch_size)
    row.update(_environment(peak))
    model = build_model(config.model, config.num_classes,
                        dtype=None if config.dtype == "float32" else config.dtype,
                        impl=config.impl)
    s = summary(model, config.input_shape)
    row.update(framework="jaxcnn", framework_version=row["versions"].get("jaxcnn"),
               spec=to_spec(model.layers), params=s.params, impl_requested=config.impl,
               impl=resolve_impl(config.impl), round=round_index,
               timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               analytical_flops_per_step=_analytical_flops(s.flops, batch_size, config.what))
    row["framework_detail"] = (f"jax {row['versions'].get('jax')}, one jitted call per step"
                               if config.mode == "step" else
                               f"jax {row['versions'].get('jax')}, lax.scan of {config.steps} "
                               "steps per jitted call")

    tx = optax.adam(config.learning_rate)
    state = create_train_state(model, config.input_shape, tx, jax.random.key(config.seed))
    if config.what != "train":
        # Inference and evaluation need no optimiser state; leaving it out
        # keeps it out of the memory figures too.
        state = state.replace(opt_state=())
    k = (resolve_micro_batches(batch_size, config.micro_batches, config.impl)
         if config.what == "train" else 1)
    row["micro_batches"] = k
    fn, single, donate = _step_functions(model, config, k)
    # The XLA options that belong to the conv/pool path (jaxcnn.ops.compiler_options).
    options = compiler_options(config.impl)
    row["compiler_options"] = options
    row["op_paths"] = describe_paths(model, config.input_shape, train=config.what == "train")
    abstract = (jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state),
                {"image": jax.ShapeDtypeStruct((batch_size, *config.input_shape), jnp.float32),
                 "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)},
                jax.random.key(config.seed + 1))
    try:
        with _compile_cache(config.compilation_cache) as events:
            start = time.perf_counter()
            lowered = jax.jit(fn, donate_argnums=donate,
                              compiler_options=options).lower(*abstract)
            row["lower_seconds"] = time.perf_counter() - start
            compiled = lowered.compile()
            row["compile_seconds"] = time.perf_counter() - start
        row["compilation_cache"] = ("off" if not config.compilation_cache
                                    else events[-1] if events else "unused")
    except Exception as e:  # noqa: BLE001 - an accelerator may run out while compiling
        if not is_oom_message(str(e)):
            raise
        row.update(status="oom", error=f"out of memory while compiling: {str(e)[:300]}")
        return row
    # As `jaxcnn train` does; it changes CPU step times, so the row records it.
    env.reuse_host_memory_for(compiled, config.reuse_host_memory)
    row["host_memory"] = env.host_memory_state()

    if config.mode == "step":
        flops = _cost_flops(compiled.cost_analysis())
    else:
        # XLA counts a while loop's body once, whatever its trip count, so
        # the FLOPs of one step come from the single step's own compiled
        # program (compiled, not just lowered: as in step mode, the count is
        # of the optimised program).
        flops = _cost_flops(jax.jit(single, compiler_options=options)
                            .lower(*abstract).compile().cost_analysis())
    if flops:
        row.update(flops_per_step=flops, flops_source="xla_cost_analysis")
    else:
        row.update(flops_per_step=row["analytical_flops_per_step"],
                   flops_source="analytical (summary forward FLOPs x batch"
                                + (" x 3)" if config.what == "train" else ")"))

    needed = compiled_memory_bytes(compiled)
    available = memory_limit_bytes if memory_limit_bytes is not None \
        else available_memory_bytes(device)
    row.update(compiled_memory_bytes=needed, memory_available_bytes=available)
    if needed is not None and available is not None and needed > available:
        # XLA's CPU backend does not fail cleanly when the host runs out (the
        # kernel's OOM killer ends the process), so never start such a step.
        row.update(status="oom", error=f"out of memory: the compiled step needs {needed / 1e9:.2f} "
                                       f"GB (XLA memory analysis) and {available / 1e9:.2f} GB "
                                       "is available")
        return row

    try:
        key = jax.random.key(config.seed + 1)
        k_img, k_lab = jax.random.split(jax.random.key(config.seed + 2))
        batch = {"image": jax.random.normal(k_img, (batch_size, *config.input_shape)),
                 "label": jax.random.randint(k_lab, (batch_size,), 0, config.num_classes)}
        carry = {"state": state}

        def call(n):
            out = None
            for _ in range(n):
                new_state, out = compiled(carry["state"], batch, key)
                carry["state"] = new_state
            jax.block_until_ready((carry["state"], out))

        calls = config.steps if config.mode == "step" else 1
        first, per_call = time_calls(call, calls=calls, repeats=config.repeats,
                                     warmup=config.warmup)
    except Exception as e:  # noqa: BLE001
        if not is_oom_message(str(e)):
            raise
        row.update(status="oom", error=f"out of memory while running: {str(e)[:300]}")
        return row
    row.update(status="ok", first_call_seconds=first)
    _finish(row, per_call, 1 if config.mode == "step" else config.steps)
    device_peak_bytes = _device_peak_bytes(device)
    if device_peak_bytes is not None:
        row.update(peak_memory_bytes=device_peak_bytes,
                   peak_memory_source="device.memory_stats peak_bytes_in_use (process peak)")
    else:
        row.update(peak_memory_bytes=needed, peak_memory_source="xla_memory_analysis")
    return row


# ---------------------------------------------------------------------------
# Other frameworks


def compare_request(config: BenchConfig, jax_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The request a framework subprocess gets (:mod:`jaxcnn.compare`).

    Batches that jaxcnn found too large for memory before running are
    skipped there too on the CPU, where an allocation failure may kill the
    process instead of raising.

    Args:
      config: the benchmark config.
      jax_rows: jaxcnn's rows for the same round (for params and skips).

    Returns:
      A JSON-ready dict.

    Example:
      >>> cfg = BenchConfig(model="conv(4, 3) flatten softmax", input_shape=(6, 6, 1),
      ...                   num_classes=3, batch_sizes=(4,))
      >>> req = compare_request(cfg, [])
      >>> req["expected_params"], [l["kind"] for l in req["layers"]]
      (235, ['Conv2D', 'Flatten', 'SoftmaxOutput'])
    """
    model = build_model(config.model, config.num_classes)
    layers = request_layers(model, config.input_shape)
    skip = {}
    if jax.default_backend() == "cpu":
        skip = {str(r["batch_size"]): f"skipped: {r['error']} (jaxcnn's estimate for this "
                                      "model and batch)"
                for r in jax_rows if r.get("status") == "oom"}
    return {
        "layers": layers, "input_shape": list(config.input_shape),
        "num_classes": config.num_classes, "batch_sizes": list(config.batch_sizes),
        "what": config.what, "dtype": config.dtype, "steps": config.steps,
        "repeats": config.repeats, "warmup": config.warmup,
        "learning_rate": config.learning_rate, "eps": 1e-8, "seed": config.seed,
        "expected_params": sum(layer["params"] for layer in layers), "skip": skip,
    }


def framework_rows(answer: dict[str, Any], config: BenchConfig,
                   jax_rows: Sequence[dict[str, Any]], peak: Peak,
                   round_index: int = 0) -> list[dict[str, Any]]:
    """Turns a framework subprocess's answer into result rows like jaxcnn's.

    The FLOPs per step are jaxcnn's for the same batch (the architecture is
    the same, checked by parameter count), so FLOP/s and utilisation are
    comparable across frameworks. ``compile_seconds`` is the framework's
    first call (tracing, compiling and one step).

    Args:
      answer: :func:`jaxcnn.compare.run_framework`'s answer.
      config: the benchmark config.
      jax_rows: jaxcnn's rows of the same round.
      peak: the device peak.
      round_index: recorded as ``round``.

    Returns:
      One row per batch size.

    Raises:
      ComparisonError: when the answer's parameter count differs from jaxcnn's.
    """
    model = build_model(config.model, config.num_classes)
    s = summary(model, config.input_shape)
    check_param_counts(s.params, {answer["framework"]: answer["params"]})
    by_batch = {r["batch_size"]: r for r in jax_rows}
    base_env = _environment(peak)
    rows = []
    for child in answer["rows"]:
        b = child["batch_size"]
        row = _row_base(config, b)
        row.update(base_env)
        row.update(framework=answer["framework"], framework_version=answer["framework_version"],
                   framework_detail=answer.get("detail"), spec=to_spec(model.layers),
                   params=answer["params"], mode="step", round=round_index,
                   timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds"),
                   analytical_flops_per_step=_analytical_flops(s.flops, b, config.what),
                   status=child["status"], error=child.get("error"))
        jr = by_batch.get(b, {})
        if jr.get("flops_per_step"):
            row.update(flops_per_step=jr["flops_per_step"],
                       flops_source=f"jaxcnn {jr['flops_source']} of the same model")
        else:
            row.update(flops_per_step=row["analytical_flops_per_step"],
                       flops_source="analytical (summary)")
        if child["status"] == "ok":
            row.update(compile_seconds=child["compile_seconds"],
                       first_call_seconds=child["compile_seconds"],
                       peak_memory_bytes=child.get("peak_memory_bytes"),
                       peak_memory_source=child.get("peak_memory_source"))
            _finish(row, child["step_seconds"], 1)
            row["host_peak_rss_bytes"] = child.get("host_peak_rss_bytes")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# The sweep


def run(config: BenchConfig, *, compare: str | Sequence[str] | None = None, rounds: int = 1,
        compare_python: str | None = None, peak: Peak | None = None,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        first_round: int = 0) -> list[dict[str, Any]]:
    """Benchmarks every batch size, and the other frameworks beside jaxcnn.

    With ``rounds > 1`` the whole sweep repeats, frameworks interleaved
    (jaxcnn, then each framework, then jaxcnn again, ...), so a slow spell of
    a shared machine hits every framework rather than one; each row records
    its ``round``.

    Args:
      config: the :class:`BenchConfig`.
      compare: frameworks (:func:`jaxcnn.compare.parse_frameworks`), e.g.
        ``"torch,keras"``.
      rounds: interleaved repetitions of the whole sweep.
      compare_python: the interpreter that runs the other frameworks.
      peak: the device peak (default :func:`device_peak`).
      on_row: called with each row as soon as it is measured.
      first_round: the ``round`` of the first repetition (when separate
        invocations, e.g. of several models in turn, make up the rounds).

    Returns:
      All rows, in the order measured.

    Raises:
      ComparisonError: when a framework is missing, fails or builds a model
        with a different parameter count.

    Example:
      >>> cfg = BenchConfig(model="flatten softmax", input_shape=(4, 4, 1), num_classes=2,
      ...                   batch_sizes=(2, 4), steps=1, repeats=1, warmup=0)
      >>> [r["batch_size"] for r in run(cfg, peak=Peak(None, "unknown", "example"))]
      [2, 4]
    """
    frameworks = parse_frameworks(compare)
    if int(rounds) < 1:
        raise BenchError(f"rounds must be >= 1; got {rounds}")
    peak = peak or device_peak(config.dtype)
    on_row = on_row or (lambda row: None)
    rows: list[dict[str, Any]] = []
    for r in range(int(first_round), int(first_round) + int(rounds)):
        jax_rows = []
        for batch_size in config.batch_sizes:
            row = bench_one(config, batch_size, peak=peak, round_index=r)
            jax_rows.append(row)
            rows.append(row)
            on_row(row)
        for name in frameworks:
            answer = run_framework(name, compare_request(config, jax_rows),
                                   python=compare_python)
            for row in framework_rows(answer, config, jax_rows, peak, r):
                rows.append(row)
                on_row(row)
    return rows


# ---------------------------------------------------------------------------
# JSON lines, table, plot


def write_jsonl(rows: Iterable[dict[str, Any]], path: str, *, append: bool = False) -> str:
    """Writes rows as JSON lines (one object per line).

    Example:
      >>> import tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "bench.jsonl")
      >>> read_jsonl(write_jsonl([{"a": 1}, {"a": 2.5}], path))
      [{'a': 1}, {'a': 2.5}]
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "a" if append else "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    return path


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads JSON lines written by :func:`write_jsonl` (blank lines skipped).

    Raises:
      BenchError: when the file is missing or a line is not JSON.

    Example:
      >>> read_jsonl("/no/such/file.jsonl")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxcnn.bench.BenchError: cannot read /no/such/file.jsonl: ...
    """
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        raise BenchError(f"cannot read {path}: {e.strerror}; pass a file written by "
                         "`jaxcnn bench --out FILE.jsonl`") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BenchError(f"{path}, line {i} is not JSON ({e.msg}); each line must be one "
                             "object, as `jaxcnn bench --out` writes") from None
    return rows


def _group_key(row):
    return (row.get("model"), row.get("what"), row.get("dtype"), row.get("device_kind"))


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merges the rounds of each (model, what, dtype, device, framework, batch).

    Returns one summary per configuration: the median over rounds of each
    round's median step time (and the images/s, FLOP/s and utilisation it
    gives), the min and max step time over every timed round, the median
    compile time, and ``ratio``: jaxcnn's images/s over this framework's.

    Utilisation is against the highest peak any row of the same device kind
    and dtype recorded: a peak measured on the spot (CPUs) varies with the
    load of the moment, and the best measurement is the closest to the
    machine's real peak; one figure for every framework keeps them comparable.

    Example:
      >>> rows = [{"framework": "jaxcnn", "model": "m", "batch_size": 8, "status": "ok",
      ...          "step_seconds_median": t, "step_seconds_min": t, "step_seconds_max": t,
      ...          "compile_seconds": 1.0} for t in (0.1, 0.3, 0.2)]
      >>> a = aggregate(rows)[0]
      >>> a["images_per_s"], a["rounds"], a["images_per_s_min"]
      (40.0, 3, 26.666666666666668)
    """
    groups: dict[tuple, list[dict]] = {}
    best_peak: dict[tuple, float] = {}
    for row in rows:
        key = (*_group_key(row), row.get("framework"), row.get("mode"), row.get("batch_size"))
        groups.setdefault(key, []).append(row)
        if row.get("peak_flop_per_s"):
            pk = (row.get("device_kind"), row.get("dtype"))
            best_peak[pk] = max(best_peak.get(pk, 0.0), row["peak_flop_per_s"])
    out = []
    for key, members in groups.items():
        ok = [r for r in members if r.get("status") == "ok"]
        first = members[0]
        summary_row = {
            "framework": first.get("framework"), "model": first.get("model"),
            "what": first.get("what"), "dtype": first.get("dtype"), "mode": first.get("mode"),
            "batch_size": first.get("batch_size"), "device_kind": first.get("device_kind"),
            "params": first.get("params"), "rounds": len(members),
            "impl": first.get("impl"), "op_paths": first.get("op_paths"),
            "micro_batches": first.get("micro_batches"),
            "host_memory": first.get("host_memory"),
            "status": "ok" if ok else (first.get("status") or "error"),
            "error": None if ok else first.get("error"),
        }
        if ok:
            median = statistics.median(r["step_seconds_median"] for r in ok)
            b = first["batch_size"]
            flops = ok[0].get("flops_per_step")
            peak = best_peak.get((first.get("device_kind"), first.get("dtype")))
            mems = [r["peak_memory_bytes"] for r in ok if r.get("peak_memory_bytes")]
            summary_row.update(
                step_seconds_median=median,
                step_seconds_min=min(r["step_seconds_min"] for r in ok),
                step_seconds_max=max(r["step_seconds_max"] for r in ok),
                images_per_s=b / median,
                images_per_s_min=b / max(r["step_seconds_max"] for r in ok),
                images_per_s_max=b / min(r["step_seconds_min"] for r in ok),
                compile_seconds=statistics.median(r["compile_seconds"] for r in ok
                                                  if r.get("compile_seconds") is not None)
                if any(r.get("compile_seconds") is not None for r in ok) else None,
                flops_per_step=flops,
                flop_per_s=flops / median if flops else None,
                peak_flop_per_s=peak,
                utilisation=flops / median / peak if flops and peak else None,
                peak_memory_bytes=max(mems) if mems else None)
        out.append(summary_row)
    jax_speed = {(*_group_key(a), a["batch_size"]): a.get("images_per_s")
                 for a in out if a["framework"] == "jaxcnn"}
    for a in out:
        mine = jax_speed.get((*_group_key(a), a["batch_size"]))
        a["ratio"] = (mine / a["images_per_s"]) if mine and a.get("images_per_s") else None
    return out


def _fmt(value, spec: str, scale: float = 1.0, none: str = "-") -> str:
    return none if value is None else format(value / scale, spec)


def format_table(rows: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """A readable table of results (rounds merged by :func:`aggregate`).

    ``vs jaxcnn`` is jaxcnn's images/s over that row's (above 1: jaxcnn is
    faster); step times show median [min-max] over every timed round.

    Args:
      rows: result rows.
      markdown: a Markdown table per group (for docs) instead of plain text.

    Example:
      >>> table = format_table([{"framework": "jaxcnn", "model": "m", "batch_size": 8,
      ...                        "status": "oom", "error": "out of memory"}])
      >>> table.splitlines()[-1].split()[:4]
      ['jaxcnn', '-', '8', '-']
      >>> "out of memory" in table
      True
    """
    agg = aggregate(rows)
    head = ("framework", "mode/path", "batch", "compile s", "step ms median [min-max]", "images/s",
            "GFLOP/step", "GFLOP/s", "util %", "mem MB", "vs jaxcnn")
    lines_by_group: dict[tuple, list[tuple[str, ...]]] = {}
    for a in agg:
        if a["status"] != "ok":
            cells = (a["framework"], a.get("mode") or "-", str(a["batch_size"]), "-",
                     "out of memory" if a["status"] == "oom" else a["status"],
                     "-", "-", "-", "-", "-", "-")
        else:
            mode = a.get("mode") or "-"
            if a["framework"] == "jaxcnn" and a.get("impl"):
                mode = f"{mode} {a['impl']}"
            if a["framework"] == "jaxcnn" and (a.get("micro_batches") or 1) > 1:
                mode = f"{mode} {a['micro_batches']}x{a['batch_size'] // a['micro_batches']}"
            cells = (
                a["framework"], mode, str(a["batch_size"]),
                _fmt(a["compile_seconds"], ".2f"),
                f"{a['step_seconds_median'] * 1e3:.2f} [{a['step_seconds_min'] * 1e3:.2f}-"
                f"{a['step_seconds_max'] * 1e3:.2f}]",
                f"{a['images_per_s']:,.0f}", _fmt(a["flops_per_step"], ".4g", 1e9),
                _fmt(a["flop_per_s"], ".4g", 1e9), _fmt(a["utilisation"], ".3g", 0.01),
                _fmt(a["peak_memory_bytes"], ".1f", 1e6),
                "-" if a["framework"] == "jaxcnn" else _fmt(a["ratio"], ".2f") + "x")
        lines_by_group.setdefault(_group_key(a), []).append(cells)
    notes_by_group: dict[tuple, str] = {}
    for a in agg:
        if a["framework"] == "jaxcnn" and a.get("op_paths"):
            note = "jaxcnn ops: " + a["op_paths"]
            if a.get("host_memory"):
                note += f"; host memory: {a['host_memory']}"
            notes_by_group.setdefault(_group_key(a), note)
    out = []
    for (model, what, dtype, kind), body in lines_by_group.items():
        note = notes_by_group.get((model, what, dtype, kind))
        if markdown:
            out += [f"**{model} | {what} | {dtype} | {kind}**", "",
                    "| " + " | ".join(head) + " |",
                    "|" + "|".join(" --- " if i < 2 else " ---: " for i in range(len(head))) + "|",
                    *("| " + " | ".join(cells) + " |" for cells in body), ""]
            if note:
                out += [note, ""]
            continue
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths)))

        out += [f"{model} | {what} | {dtype} | {kind}", line(head),
                "-" * len(line(head)), *map(line, body), *([note] if note else []), ""]
    return "\n".join(out).rstrip()


def plot_throughput(rows: Sequence[dict[str, Any]], path: str, title: str | None = None) -> str:
    """Draws images/s against batch size, one line per framework, to a PNG.

    One panel per (model, what, dtype, device); error bars span the min and
    max over every timed round. A panel with a single batch size shows a bar
    per framework instead. Out-of-memory rows are left out.

    Args:
      rows: result rows (e.g. :func:`read_jsonl` of ``--out`` files).
      path: the PNG to write.
      title: the figure's title (default: the device kind).

    Returns:
      ``path``.

    Example:
      >>> import tempfile
      >>> rows = [{"framework": f, "model": "m", "what": "train", "batch_size": b,
      ...          "status": "ok", "step_seconds_median": 0.01 * b ** 0.5,
      ...          "step_seconds_min": 0.009 * b ** 0.5, "step_seconds_max": 0.011 * b ** 0.5}
      ...         for f in ("jaxcnn", "torch") for b in (32, 128)]
      >>> p = plot_throughput(rows, os.path.join(tempfile.mkdtemp(), "t.png"))
      >>> os.path.getsize(p) > 0
      True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = [a for a in aggregate(rows) if a["status"] == "ok"]
    if not agg:
        raise BenchError("no successful rows to plot; every row is out of memory or failed")
    groups: dict[tuple, list[dict]] = {}
    for a in agg:
        groups.setdefault(_group_key(a), []).append(a)
    n = len(groups)
    cols = min(n, 3)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(5.2 * cols, 4.0 * -(-n // cols)),
                             squeeze=False)
    for ax, ((model, what, dtype, kind), members) in zip(axes.flat, groups.items()):
        by_fw: dict[str, list[dict]] = {}
        for a in members:
            label = a["framework"] + ("" if a.get("mode") in (None, "step") else f" ({a['mode']})")
            by_fw.setdefault(label, []).append(a)
        ordered = sorted(by_fw.items(), key=lambda kv: kv[0] != "jaxcnn")
        batches = sorted({a["batch_size"] for a in members})
        if len(batches) == 1:
            # One batch size: a bar per framework, labelled with its images/s.
            for i, (label, (a, *_)) in enumerate(ordered):
                err = [[a["images_per_s"] - a["images_per_s_min"]],
                       [a["images_per_s_max"] - a["images_per_s"]]]
                ax.bar(i, a["images_per_s"], yerr=err, capsize=3, color=f"C{i}")
                ax.text(i, a["images_per_s"] / 2, f"{a['images_per_s']:,.0f}", ha="center",
                        fontsize=8, color="white", fontweight="bold")
            ax.set_xticks(range(len(ordered)), [label for label, _ in ordered], fontsize=8,
                          rotation=20)
            ax.set_xlabel(f"batch size {batches[0]}")
        else:
            for label, pts in ordered:
                pts.sort(key=lambda a: a["batch_size"])
                xs = [a["batch_size"] for a in pts]
                ys = [a["images_per_s"] for a in pts]
                err = [[y - a["images_per_s_min"] for y, a in zip(ys, pts)],
                       [a["images_per_s_max"] - y for y, a in zip(ys, pts)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches)
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("batch size")
            ax.legend(fontsize=8)
        ax.set_ylabel("images / s")
        ax.set_ylim(bottom=0)
        ax.set_title(" | ".join(str(v) for v in (model, what, dtype) if v is not None),
                     fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    kinds = sorted({str(k[3]) for k in groups if k[3]})
    fig.suptitle(title or ("throughput on " + ", ".join(kinds) if kinds else "throughput"))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "BenchConfig", "BenchError", "ComparisonError", "DEVICE_PEAKS", "Peak", "aggregate",
    "available_memory_bytes", "bench_one", "compare_request", "compiled_memory_bytes",
    "device_peak", "format_table", "framework_rows", "lookup_peak", "measure_matmul_peak",
    "plot_throughput", "read_jsonl", "run", "write_jsonl",
]
