"""The execution policy: how a training step is compiled and run on this backend.

One :class:`ExecutionPolicy` is resolved once per run and handed to both
:func:`jaxcnn.training.fit` and ``jaxcnn bench``, so the benchmark times the
program that training runs. It holds every choice that changes speed but not
the mathematics of a step:

* the conv/pool implementation and the XLA compiler options that go with it
  (:func:`jaxcnn.ops.resolve_impl`, :func:`jaxcnn.ops.compiler_options`);
* micro-batches: how many slices one compiled call runs its images as;
* chunks: how many compiled calls one optimiser step is spread over (each
  adds its images' gradients to a running sum; the last applies it);
* host memory: whether glibc keeps freed memory (:mod:`jaxcnn.host_memory`).

A step of ``B`` images as ``c`` chunks of ``k`` micro-batches computes the
gradient of the batch's mean loss as ``c * k`` micro-batches in sequence, the
same arithmetic as one call with ``c * k`` micro-batches; micro-batch ``i``
(counted over the batch) draws its dropout masks from ``fold_in(step_key, i)``.

Why chunks: on XLA's CPU backend a step's speed depends on how large its
temporary buffers are (glibc maps buffers above 32 MiB afresh on each call,
and a thread's heap holds at most 64 MiB) and on cache sizes. Batches of
64-256 images ran fastest as micro-batches of 32-64 (docs/benchmarks.md,
"Micro-batches"); a larger batch as one program had temporaries beyond both
ranges and ran at half the rate (keras_convnet: 5,249 images/s at batch 512
against 10,586 at 128), while more micro-batches in one program cost compile
time in proportion. Chunks keep each compiled call at the measured best size,
so throughput holds across batch sizes (docs/benchmarks.md, "Large batches").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax

from jaxcnn import ops
from jaxcnn.errors import ConfigError
from jaxcnn.host_memory import is_host_memory_setting

# Micro-batching. On XLA's CPU backend a training step of 128 images ran
# faster as 4 micro-batches of 32, one after the other, than in one pass
# (keras_convnet 1.61x, seed_cnn 1.12x, flax_cnn 1.02x; 16 images per
# micro-batch was no faster than the whole batch, and a lax.scan over
# micro-batches ran 10x slower). For keras_convnet most of that was its
# temporaries falling under glibc's 32 MiB mmap threshold (see
# jaxcnn.host_memory); against a one-pass step that keeps its memory, 4 x 32
# ran keras_convnet about 1.0x and seed_cnn 1.1-1.2x (docs/benchmarks.md,
# "Host memory"). Each micro-batch is a copy of the model in the compiled
# step, hence the cap; larger batches are spread over several calls (chunks).
MICRO_BATCH_IMAGES = 32
MAX_MICRO_BATCHES = 4
# The images of one compiled call when a batch is spread over several calls, and the
# most calls one step is spread over (batches of 512 and 1024 were measured; beyond
# 32 chunks, 4,096 images, a step runs as one call, as before chunks existed).
CHUNK_IMAGES = MICRO_BATCH_IMAGES * MAX_MICRO_BATCHES
MAX_CHUNKS = 32


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy:
    """How the training step of one batch size runs (see the module docstring).

    Hashable: compiled-function caches and static arguments take it.

    Attributes:
      backend: the JAX backend (``cpu``, ``gpu``, ``tpu``).
      impl: the conv/pool implementation, resolved (``fast`` or ``xla``).
      compiler_options: XLA options, as sorted ``(name, value)`` pairs.
      micro_batches: micro-batches per compiled call.
      chunks: compiled calls per optimiser step (1: the whole batch in one call).
      host_memory: the ``reuse_host_memory`` setting: ``"auto"``, True or False.

    Example:
      >>> p = resolve_policy(512, impl="fast", backend="cpu")
      >>> p.chunks, p.micro_batches, p.images_per_call(512)
      (4, 4, 128)
    """

    backend: str
    impl: str
    compiler_options: tuple[tuple[str, str], ...] = ()
    micro_batches: int = 1
    chunks: int = 1
    host_memory: bool | str = False

    @property
    def options(self) -> dict[str, str]:
        """The compiler options as a dict for ``jax.jit(..., compiler_options=...)``."""
        return dict(self.compiler_options)

    def images_per_call(self, batch_size: int) -> int:
        """Images each compiled call of a step of ``batch_size`` trains on."""
        return batch_size // self.chunks

    def describe(self) -> dict:
        """JSON-ready form, for run summaries and benchmark rows.

        Example:
          >>> resolve_policy(32, impl="xla", backend="gpu").describe()["micro_batches"]
          1
        """
        return {"backend": self.backend, "impl": self.impl, "compiler_options": self.options,
                "micro_batches": self.micro_batches, "chunks": self.chunks,
                "host_memory": self.host_memory}


def resolve_micro_batches(batch_size: int, setting: int | str = "auto", impl: str = "auto", *,
                          num_devices: int = 1, backend: str | None = None) -> int:
    """How many micro-batches a compiled call of ``batch_size`` images runs as.

    ``"auto"``: on the CPU fast path (``impl`` resolving to ``"fast"``) with
    one device, batches of 64 to 256 images run as 2-4 micro-batches of 32
    to 64 images (``min(batch // 32, 4)``); 1 (the whole batch in one pass)
    for other sizes and elsewhere. An int forces that many (1: off).

    Args:
      batch_size: the images of one compiled call.
      setting: ``"auto"`` or an int >= 1 (``train.micro_batches``).
      impl: the model's conv/pool implementation.
      num_devices: devices the batch is sharded over.
      backend: a JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
      The number of micro-batches, >= 1.

    Raises:
      ConfigError: a bad setting, more micro-batches than images, or several
        micro-batches with a batch sharded over several devices.

    Example:
      >>> resolve_micro_batches(128, impl="fast", backend="cpu")
      4
      >>> resolve_micro_batches(32, impl="fast", backend="cpu"), resolve_micro_batches(
      ...     512, impl="fast", backend="cpu")
      (1, 1)
      >>> resolve_micro_batches(128, backend="gpu"), resolve_micro_batches(128, 2, backend="gpu")
      (1, 2)
    """
    if setting == "auto":
        backend = backend or jax.default_backend()
        if num_devices > 1 or backend != "cpu" or ops.resolve_impl(impl, backend) != "fast":
            return 1
        k = batch_size // MICRO_BATCH_IMAGES
        if k > MAX_MICRO_BATCHES:
            # Micro-batches of more than 64 images were not measured to pay.
            return MAX_MICRO_BATCHES if batch_size <= 2 * MICRO_BATCH_IMAGES * MAX_MICRO_BATCHES \
                else 1
        return max(k, 1)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"train.micro_batches must be 'auto' or an int >= 1 (1: the whole "
                          f"batch in one pass); got {setting!r}")
    if setting > batch_size:
        raise ConfigError(f"train.micro_batches={setting} is more than the batch size "
                          f"{batch_size}; use at most {batch_size}, or 'auto'")
    if setting > 1 and num_devices > 1:
        raise ConfigError(f"train.micro_batches={setting} with a batch sharded over "
                          f"{num_devices} devices is not supported; set train.micro_batches=1 "
                          "(or 'auto'), or train.num_devices=1")
    return setting


def resolve_chunks(batch_size: int, setting: int | str = "auto", impl: str = "auto", *,
                   num_devices: int = 1, backend: str | None = None) -> int:
    """How many compiled calls one step of ``batch_size`` images is spread over.

    ``"auto"`` (with ``train.micro_batches=auto``): on the CPU fast path with
    one device, a batch of more than 256 images runs as the fewest equal
    chunks of at most 128 images (:data:`CHUNK_IMAGES`) that divide it, at
    most :data:`MAX_CHUNKS` of them; 1 where no such division exists,
    elsewhere, and for smaller or larger batches.
    An explicit micro-batch setting means one call (1).

    Example:
      >>> [resolve_chunks(b, impl="fast", backend="cpu") for b in (128, 512, 1024, 300, 257)]
      [1, 4, 8, 3, 1]
      >>> resolve_chunks(4096, impl="fast", backend="cpu"), resolve_chunks(
      ...     8192, impl="fast", backend="cpu")
      (32, 1)
    """
    if setting != "auto":
        return 1
    backend = backend or jax.default_backend()
    if (num_devices > 1 or backend != "cpu" or ops.resolve_impl(impl, backend) != "fast"
            or batch_size <= 2 * CHUNK_IMAGES):
        return 1
    for chunks in range(-(-batch_size // CHUNK_IMAGES),
                        min(batch_size // MICRO_BATCH_IMAGES, MAX_CHUNKS) + 1):
        if batch_size % chunks == 0:
            return chunks
    return 1


def resolve_policy(batch_size: int, *, impl: str = "auto", micro_batches: int | str = "auto",
                   host_memory: bool | str = False, num_devices: int = 1,
                   backend: str | None = None, batch_norm: bool = False) -> ExecutionPolicy:
    """The :class:`ExecutionPolicy` for training steps of ``batch_size`` images.

    Args:
      batch_size: the global training batch size.
      impl: the model's conv/pool implementation (``model.impl``).
      micro_batches: ``train.micro_batches``: ``"auto"`` or an int (then
        exactly that many, in one call).
      host_memory: ``train.reuse_host_memory``: ``"auto"``, True or False.
      num_devices: devices the batch is sharded over.
      backend: a JAX backend name; defaults to ``jax.default_backend()``.
      batch_norm: the model normalises by batch statistics. Then ``"auto"``
        runs the batch as one micro-batch in one call: splitting it would
        normalise each part by its own statistics, and the model would train
        differently on a CPU than on a GPU. An explicit ``micro_batches`` still
        splits it (see :func:`~jaxcnn.training.accumulate_gradients`).

    Returns:
      The policy; a bad setting raises :class:`~jaxcnn.errors.ConfigError`
      here, before any data moves.

    Example:
      >>> resolve_policy(128, impl="fast", backend="cpu").micro_batches
      4
      >>> resolve_policy(128, impl="xla", backend="cpu").micro_batches
      1
    """
    backend = backend or jax.default_backend()
    if not is_host_memory_setting(host_memory):
        raise ConfigError(f"reuse_host_memory must be 'auto', True or False; got "
                          f"{host_memory!r}")
    resolved = ops.resolve_impl(impl, backend)
    if batch_norm and micro_batches == "auto":
        micro_batches = 1
    chunks = resolve_chunks(batch_size, micro_batches, impl, num_devices=num_devices,
                            backend=backend)
    k = resolve_micro_batches(batch_size // chunks, micro_batches, impl, num_devices=num_devices,
                              backend=backend)
    options = tuple(sorted(ops.compiler_options(impl, backend).items()))
    return ExecutionPolicy(backend, resolved, options, k, chunks, host_memory)


def resolve_steps_per_call(steps_per_call: int | str = "auto", steps_per_epoch: int | None = None,
                           backend: str | None = None) -> int:
    """Optimiser steps per compiled call (``train.steps_per_call``).

    ``"auto"`` is 1 on every backend. On XLA's CPU backend a ``lax.scan`` over
    convolution training steps compiled and ran slower than one call per step
    (docs/benchmarks.md, "Steps per call"). On GPUs and TPUs JAX dispatches
    asynchronously, so a step longer than the dispatch (tens of microseconds)
    gains nothing; for smaller steps pass an int (``experiments/gpu_bench.sh``
    measures 1 against 8). An int is capped at ``steps_per_epoch``.

    Example:
      >>> resolve_steps_per_call("auto", backend="cpu"), resolve_steps_per_call(8, 5)
      (1, 5)
    """
    if steps_per_call == "auto":
        return 1
    if not (isinstance(steps_per_call, int) and not isinstance(steps_per_call, bool)
            and steps_per_call >= 1):
        raise ConfigError(f"steps_per_call must be 'auto' or an int >= 1; got "
                          f"{steps_per_call!r}")
    return min(steps_per_call, steps_per_epoch) if steps_per_epoch else steps_per_call


def jit_with(fn: Callable, options: tuple[tuple[str, str], ...], **kwargs) -> Callable:
    """``jax.jit(fn, compiler_options=..., **kwargs)``, one jitted function per arguments.

    Identical runs share compiled code: every call with the same function,
    options and jit arguments returns the same jitted function (and so the
    same cache of compilations).

    Example:
      >>> f = jit_with(abs, ())
      >>> f is jit_with(abs, ())
      True
    """
    return _jit_cached(fn, options, tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())))


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=None)
def _jit_cached(fn, options, kwargs):
    return jax.jit(fn, compiler_options=dict(options), **dict(kwargs))
