"""Measuring jaxcnn: compile the step, time it, count its FLOPs and memory.

:func:`_target` is the one place that decides what is timed: in step mode the
compiled calls ``jaxcnn train`` runs (:func:`train_program`, under the same
:class:`~jaxcnn.training.ExecutionPolicy`); :func:`bench_one` compiles them (persistent cache off, :func:`_compile_cache`)
and times it with :func:`jaxcnn._timing.time_calls`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import host_memory
from jaxcnn._timing import is_oom_message, time_calls
from jaxcnn.bench._config import BenchConfig
from jaxcnn.bench._memory import (_device_peak_bytes, available_memory_bytes,
                                  compiled_memory_bytes)
from jaxcnn.bench._peaks import Peak, device_peak
from jaxcnn.bench._rows import _analytical_flops, _environment, _finish, _row_base
from jaxcnn.config import OptimizerConfig
from jaxcnn.data import Preprocess, resolve_augment
from jaxcnn.models import build_model, has_batch_norm, model_spec, summary, to_spec
from jaxcnn.ops import paths, resolve_impl
from jaxcnn.training import (ExecutionPolicy, TrainProgram, build_optimizer, compiled_eval,
                             compiled_predict, create_train_state, eval_step, resolve_policy,
                             train_step)


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
    # The step functions are shared (one jitted function per program, as fit uses them),
    # so a second round in this process would find its compilation in memory: clear
    # JAX's in-memory caches so that every row's compile time is a compilation.
    jax.clear_caches()
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


# ---------------------------------------------------------------------------------------
# What is timed: built here and only here. In step mode these are the very compiled
# calls that `jaxcnn train` runs: fit's TrainProgram for training (gather from the
# split on the device, augmentation as jaxcnn train applies it to such images,
# the step, the non-finite guard), evaluate's call for eval, predict's for infer.


def bench_policy(config: BenchConfig, batch_size: int) -> ExecutionPolicy:
    """The execution policy a training step of ``batch_size`` runs under in ``config``,
    resolved exactly as ``jaxcnn train`` resolves it.

    Example:
      >>> bench_policy(BenchConfig(impl="xla", reuse_host_memory=False), 128).micro_batches
      1
    """
    return resolve_policy(batch_size, impl=config.impl, micro_batches=config.micro_batches,
                          host_memory=config.reuse_host_memory,
                          batch_norm=has_batch_norm(model_spec(config.model)))


def bench_data(config: BenchConfig, batch_size: int):
    """Synthetic stored images (uint8, as datasets keep them), labels and their
    :class:`~jaxcnn.data.Preprocess`: ``steps_per_epoch`` batches of them.

    Example:
      >>> x, y, pre = bench_data(BenchConfig(input_shape=(4, 4, 1)), 2)
      >>> x.dtype, x.shape, pre.scale == 1 / 255
      (dtype('uint8'), (4, 4, 4, 1), True)
    """
    rng = np.random.default_rng(config.seed + 2)
    n = batch_size * _BENCH_BATCHES
    images = rng.integers(0, 256, (n, *config.input_shape), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, n).astype(np.int32)
    c = config.input_shape[-1]
    return images, labels, Preprocess(1.0 / 255.0, (0.5,) * c, (0.25,) * c)


# Batches of synthetic data per benchmark "epoch": the gather then draws from more
# than one batch of images, as it does in training.
_BENCH_BATCHES = 2


def train_program(config: BenchConfig, batch_size: int, preprocess: Preprocess) -> TrainProgram:
    """The :class:`~jaxcnn.training.TrainProgram` that ``jaxcnn train`` would run for a
    split of ``batch_size * 2`` images of ``config.input_shape`` on one device.

    Example:
      >>> p = train_program(BenchConfig(input_shape=(32, 32, 3), reuse_host_memory=False), 128,
      ...                   Preprocess(1.0, (0.0,) * 3, (1.0,) * 3))
      >>> p.augment is not None, p.steps_per_epoch
      (True, 2)
    """
    return TrainProgram(bench_policy(config, batch_size), batch_size, preprocess,
                        _BENCH_BATCHES, resolve_augment(None, config.input_shape),
                        label_smoothing=float(config.label_smoothing),
                        steps_per_call=config.steps_per_call)


@dataclasses.dataclass
class _Target:
    """What one benchmark row compiles and times."""

    policy: ExecutionPolicy
    lower: Callable[[], list]  # the lowered programs of one step, largest first
    run: Callable[[int], None]  # runs n steps and waits for them
    calls_per_step: tuple[int, ...]  # how often each program runs per step (FLOP count)
    single_step: Callable[[], Any] | None = None  # one step lowered (scan mode's FLOPs)
    host_bytes: int = 0  # host memory the synthetic data take while they are made


def _target(model, config: BenchConfig, batch_size: int) -> _Target:
    if config.what == "train":
        tx, _ = build_optimizer(OptimizerConfig(learning_rate=config.learning_rate),
                                max(config.steps, 1))
    else:
        tx = optax.identity()
    state = create_train_state(model, config.input_shape, tx, jax.random.key(config.seed))
    if config.what != "train":
        # Inference and evaluation need no optimiser state; leaving it out
        # keeps it out of the memory figures too.
        state = state.replace(opt_state=())
    key = jax.random.key(config.seed + 1)
    if config.mode == "scan":
        return _scan_target(state, model, config, batch_size, key)
    device = jax.devices()[0]
    placed = jax.sharding.SingleDeviceSharding(device)
    c = config.input_shape[-1]
    preprocess = Preprocess(1.0 / 255.0, (0.5,) * c, (0.25,) * c)  # as bench_data's
    n = batch_size * _BENCH_BATCHES if config.what == "train" else batch_size

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=placed)

    # The data are made on the first timed call, after the compiled step's memory was
    # checked against what is available: a batch that cannot fit is reported, not allocated.
    data_specs = (spec((n, *config.input_shape), jnp.uint8), spec((n,), jnp.int32))
    host_bytes = batch_size * _BENCH_BATCHES * (math.prod(config.input_shape) + 8)
    box = {"state": state, "out": None, "data": None}

    def data():
        if box["data"] is None:
            images, labels, _ = bench_data(config, batch_size)
            box["data"] = (jax.device_put(images[:n], device), jax.device_put(labels[:n], device))
        return box["data"]

    if config.what == "train":
        program = train_program(config, batch_size, preprocess)
        perm_spec = spec((n,), jnp.int32)
        aug_key = jax.random.key(config.seed + 3) if program.augment is not None else None
        box["carry"] = program.init_carry(state, device)

        def run(k):
            images, labels = data()
            if "perm" not in box:
                box["perm"] = jax.device_put(np.arange(n, dtype=np.int32), device)
            for _ in range(k):
                box["state"], box["carry"] = program.step(
                    box["state"], box["carry"], (images, labels, box["perm"]), key, aug_key)
            jax.block_until_ready((box["state"], box["carry"]))

        calls = (1,) if program.policy.chunks == 1 else (program.policy.chunks, 1)
        return _Target(program.policy,
                       lambda: program.lower(box["state"], box["carry"],
                                             (*data_specs, perm_spec), key, aug_key),
                       run, calls, host_bytes=host_bytes)
    policy = bench_policy(config, batch_size)
    if config.what == "eval":
        fn = compiled_eval(state)
        mask_spec = spec((batch_size,), jnp.float32)

        def args(x, y):
            if not isinstance(x, jax.Array):
                return (state, x, y, mask_spec, preprocess)
            if "mask" not in box:
                box["mask"] = jax.device_put(np.ones(batch_size, np.float32), device)
            return (state, x, y, box["mask"], preprocess)
    else:
        fn = compiled_predict(state)

        def args(x, y):
            return (state.variables(), x, state.apply_fn, preprocess)

    def run(k):
        call_args = args(*data())
        for _ in range(k):
            box["out"] = fn(*call_args)
        jax.block_until_ready(box["out"])

    return _Target(policy, lambda: [fn.lower(*args(*data_specs))], run, (1,),
                   host_bytes=host_bytes)


def _scan_target(state, model, config: BenchConfig, batch_size: int, key) -> _Target:
    """``--mode scan``: ``steps`` bare pure steps under one ``lax.scan`` per compiled call."""
    policy = bench_policy(config, batch_size)
    k = policy.micro_batches if config.what == "train" else 1
    if config.what == "train":
        def one(state, batch):
            return train_step(state, batch, key, micro_batches=k,
                              label_smoothing=float(config.label_smoothing))
    elif config.what == "eval":
        def one(state, batch):
            return state, eval_step(state, batch)
    else:
        def one(state, batch):
            return state, state.apply_fn(state.variables(), batch["image"], train=False)

    def scanned(state, batch):
        def body(carry, _):
            state, bias = carry
            # Inference and evaluation see the same batch every step; adding a
            # value computed from the previous step (always 0.0) keeps XLA from
            # hoisting the whole pass out of the loop. x * 0.0 is not folded
            # for floats (NaN semantics), so each step really runs.
            state, out = one(state, {**batch, "image": batch["image"] + bias})
            leaves = jax.tree.leaves(out)
            bias = (leaves[0].reshape(-1)[0] * 0.0).astype(batch["image"].dtype)
            return (state, bias), None

        (state, bias), _ = jax.lax.scan(body, (state, jnp.zeros((), batch["image"].dtype)),
                                        None, length=int(config.steps))
        return state, bias

    donate = (0,) if config.what == "train" else ()
    fn = jax.jit(scanned, donate_argnums=donate, compiler_options=policy.options)
    specs = {"image": jax.ShapeDtypeStruct((batch_size, *config.input_shape), jnp.float32),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    box = {"state": state, "out": None, "batch": None}

    def run(n):
        if box["batch"] is None:  # made after the memory check, like step mode's data
            k_img, k_lab = jax.random.split(jax.random.key(config.seed + 2))
            box["batch"] = {
                "image": jax.random.normal(k_img, (batch_size, *config.input_shape)),
                "label": jax.random.randint(k_lab, (batch_size,), 0, config.num_classes)}
        for _ in range(n):
            box["state"], box["out"] = fn(box["state"], box["batch"])
        jax.block_until_ready((box["state"], box["out"]))

    return _Target(policy, lambda: [fn.lower(box["state"], specs)], run, (1,),
                   lambda: jax.jit(one, compiler_options=policy.options).lower(state, specs))


def describe_paths(model, input_shape, *, train: bool = True, batch_size: int = 1) -> str:
    """Which implementation each conv and pool layer of ``model`` runs, in one line.

    Example:
      >>> from jaxcnn.models import build_model
      >>> describe_paths(build_model("keras_convnet", 10, impl="xla"), (28, 28, 1))
      'conv2d xla,xla; max_pool xla,xla'
    """
    x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def apply(v, x):
        return model.apply(v, x, train=train, rngs={"dropout": jax.random.key(0)},
                           mutable=["batch_stats"] if train else False)

    by_op: dict[str, list[str]] = {}
    for op, path in paths(apply, variables, x):
        by_op.setdefault(op, []).append(path)
    return "; ".join(f"{op} {','.join(p)}" for op, p in by_op.items())


def check_model(config: BenchConfig):
    """Builds the benchmark's model and checks that it fits the input shape.

    Cheap (shapes by ``jax.eval_shape``, nothing compiled or allocated), so
    :func:`run` and ``jaxcnn bench`` call it before measuring the device peak or
    compiling anything: a model that does not fit fails in a second, not after
    the first measurements.

    Args:
      config: the :class:`BenchConfig`.

    Returns:
      The model's :class:`~jaxcnn.models.ModelSummary` on ``config.input_shape``.

    Raises:
      ShapeError: a layer does not fit its input (the message names it).
      SpecError: the model does not build, or cannot fit in memory.

    Example:
      >>> check_model(BenchConfig(model="conv(4, 3) flatten softmax", input_shape=(6, 6, 1),
      ...                         num_classes=3)).params
      235
    """
    model = build_model(config.model, config.num_classes,
                        dtype=None if config.dtype == "float32" else config.dtype,
                        impl=config.impl)
    return summary(model, config.input_shape)


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
                               if config.mode == "step" and config.steps_per_call == 1 else
                               f"jax {row['versions'].get('jax')}, {config.steps_per_call} "
                               "steps per jitted call (jaxcnn train's lax.scan)"
                               if config.mode == "step" else
                               f"jax {row['versions'].get('jax')}, lax.scan of {config.steps} "
                               "steps per jitted call")

    target = _target(model, config, batch_size)
    row.update(micro_batches=target.policy.micro_batches, chunks=target.policy.chunks,
               compiler_options=target.policy.options)
    # At the images one call's layers see (a path may depend on the batch).
    row["op_paths"] = describe_paths(
        model, config.input_shape, train=config.what == "train",
        batch_size=max(1, target.policy.images_per_call(batch_size)
                       // target.policy.micro_batches))
    try:
        with _compile_cache(config.compilation_cache) as events:
            start = time.perf_counter()
            lowered = target.lower()
            row["lower_seconds"] = time.perf_counter() - start
            compiled_all = [lw.compile() for lw in lowered]
            row["compile_seconds"] = time.perf_counter() - start
        row["compilation_cache"] = ("off" if not config.compilation_cache
                                    else events[-1] if events else "unused")
    except Exception as e:  # noqa: BLE001 - an accelerator may run out while compiling
        if not is_oom_message(str(e)):
            raise
        row.update(status="oom", error=f"out of memory while compiling: {str(e)[:300]}")
        return row
    compiled = compiled_all[0]  # the largest program (a chunk's, when a step has several)
    # As `jaxcnn train` does; it changes CPU step times, so the row records it.
    host_memory.reuse_host_memory_for(compiled, target.policy.host_memory)
    row["host_memory"] = host_memory.host_memory_state()

    if config.mode == "step":
        counts = [_cost_flops(c.cost_analysis()) for c in compiled_all]
        flops = (sum(n * f for n, f in zip(target.calls_per_step, counts))
                 if all(counts) else None)
    else:
        # XLA counts a while loop's body once, whatever its trip count, so
        # the FLOPs of one step come from the single step's own compiled
        # program (compiled, not just lowered: as in step mode, the count is
        # of the optimised program).
        flops = _cost_flops(target.single_step().compile().cost_analysis())
    if flops:
        row.update(flops_per_step=flops, flops_source="xla_cost_analysis")
    else:
        row.update(flops_per_step=row["analytical_flops_per_step"],
                   flops_source="analytical (summary forward FLOPs x batch"
                                + (" x 3)" if config.what == "train" else ")"))

    needed = compiled_memory_bytes(compiled)
    if needed is not None and target.host_bytes:
        # The synthetic data are made on the host and then put on the device: both for a
        # moment (on a CPU the same memory).
        needed += target.host_bytes
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
        calls = config.steps if config.mode == "step" else 1
        first, per_call = time_calls(target.run, calls=calls, repeats=config.repeats,
                                     warmup=config.warmup)
    except Exception as e:  # noqa: BLE001
        if not is_oom_message(str(e)):
            raise
        row.update(status="oom", error=f"out of memory while running: {str(e)[:300]}")
        return row
    row.update(status="ok", first_call_seconds=first)
    _finish(row, per_call, config.steps_per_call if config.mode == "step" else config.steps)
    device_peak_bytes = _device_peak_bytes(device)
    if device_peak_bytes is not None:
        row.update(peak_memory_bytes=device_peak_bytes,
                   peak_memory_source="device.memory_stats peak_bytes_in_use (process peak)")
    else:
        row.update(peak_memory_bytes=needed, peak_memory_source="xla_memory_analysis")
    return row


__all__ = ["bench_data", "bench_one", "bench_policy", "check_model", "describe_paths",
           "train_program"]
