"""Data-parallel training speed over a mesh of many devices, and of many processes.

``jaxcnn bench --num-devices N`` (or any ``jaxcnn bench`` in a multi-process
job, where the mesh spans every device of every process) times the training
step exactly as ``jaxcnn train`` runs it over a mesh: the global batch split
over the devices, the gradient all-reduced by XLA. Beside the step it times
the all-reduce alone, a gradient-sized sum over the same mesh, to report
the collective's share of the step.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import sharding as shd
from jaxcnn.bench._config import BenchConfig, BenchError
from jaxcnn.bench._measure import _BENCH_BATCHES, bench_data, train_program
from jaxcnn.config import OptimizerConfig
from jaxcnn.models import build_model
from jaxcnn.training import build_optimizer, create_train_state


def _median_seconds(run, repeats: int, steps: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times), times


def _allreduce(mesh, params):
    """A jitted sum over the mesh of one gradient-sized buffer per device, and its input."""
    size = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    n, sharding = mesh.devices.size, shd.batch_sharding(mesh)
    rows = shd.local_rows(sharding, n)  # this process's devices' rows: one per device
    per_device = shd.put_batch((np.ones((rows.stop - rows.start, size), np.float32),),
                               sharding, n)[0]
    fn = jax.jit(lambda g: g.sum(axis=0), out_shardings=shd.replicated(mesh))
    return fn, per_device


def bench_job(config: BenchConfig, batch_size: int, num_devices: int | None = None) -> dict:
    """One data-parallel training row: ``batch_size`` is the global batch over the mesh.

    Args:
      config: the benchmark settings (``what`` must be ``train``, ``mode`` ``step``).
      batch_size: the global batch, a multiple of the mesh's devices.
      num_devices: devices of the mesh (None: every device of every process).

    Returns:
      A row: ``processes``, ``devices``, ``batch_size``, ``step_seconds``
      (median of ``repeats`` rounds of ``steps`` steps), ``images_per_s``
      (global), ``images_per_s_per_process``, ``allreduce_seconds`` (a
      gradient-sized all-reduce alone), ``collective_share`` (that over the
      step time; an upper bound, as XLA may overlap it with the backward
      pass), ``compile_seconds`` and ``times``.

    Example:
      >>> row = bench_job(BenchConfig(model="conv(4,3) flatten softmax", input_shape=(8, 8, 1),
      ...                             steps=2, repeats=1, warmup=1), 16, num_devices=2)
      >>> row["devices"], row["batch_size"], row["images_per_s"] > 0
      (2, 16, True)
    """
    if config.what != "train" or config.mode != "step":
        raise BenchError("a data-parallel benchmark (--num-devices, or a multi-process job) "
                         "times training steps: use --what train --mode step")
    mesh = shd.make_mesh(num_devices)
    shd.check_batch_size(batch_size, mesh, what="--batch-sizes")
    place = shd.replicated(mesh)
    model = build_model(config.model, config.num_classes, dtype=config.dtype, impl=config.impl)
    tx, _ = build_optimizer(OptimizerConfig(learning_rate=config.learning_rate),
                            max(config.steps, 1))
    state = create_train_state(model, config.input_shape, tx, jax.random.key(config.seed))
    images, labels, preprocess = bench_data(config, batch_size)
    program = dataclasses.replace(train_program(config, batch_size, preprocess),
                                  sharding=shd.batch_sharding(mesh))
    n = batch_size * _BENCH_BATCHES
    box = {"state": shd.put(state, place), "carry": program.init_carry(state, place)}
    data = (shd.put(images, place), shd.put(labels, place),
            shd.put(np.arange(n, dtype=np.int32), place))
    key = shd.put(jax.random.key(config.seed + 1), place)
    aug_key = shd.put(jax.random.key(config.seed + 3), place) if program.augment else None

    def run(k):
        for _ in range(k):
            box["state"], box["carry"] = program.step(box["state"], box["carry"], data, key,
                                                      aug_key)
        jax.block_until_ready((box["state"], box["carry"]))

    t0 = time.perf_counter()
    run(1)  # compiles
    compile_seconds = time.perf_counter() - t0
    run(max(config.warmup, 0) * max(config.steps, 1))
    step_seconds, times = _median_seconds(run, max(config.repeats, 1), max(config.steps, 1))
    reduce_fn, grads = _allreduce(mesh, state.params)
    jax.block_until_ready(reduce_fn(grads))

    def reduce(k):
        for _ in range(k):
            out = reduce_fn(grads)
        jax.block_until_ready(out)

    allreduce_seconds, _ = _median_seconds(reduce, max(config.repeats, 1), max(config.steps, 1))
    images_per_s = batch_size / step_seconds
    return {
        "framework": "jaxcnn", "what": "train", "model": config.model,
        "processes": jax.process_count(), "devices": int(mesh.devices.size),
        "batch_size": batch_size, "step_seconds": step_seconds, "times": times,
        "images_per_s": images_per_s,
        "images_per_s_per_process": images_per_s / jax.process_count(),
        "allreduce_seconds": allreduce_seconds,
        "collective_share": min(allreduce_seconds / step_seconds, 1.0),
        "compile_seconds": compile_seconds, "dtype": str(jnp.dtype(config.dtype)),
    }


def format_job_rows(rows) -> str:
    """The table ``jaxcnn bench`` prints for data-parallel rows.

    Example:
      >>> print(format_job_rows([{"processes": 2, "devices": 4, "batch_size": 64,
      ...                         "step_seconds": 0.01, "images_per_s": 6400.0,
      ...                         "images_per_s_per_process": 3200.0,
      ...                         "collective_share": 0.25}]))
      processes  devices  batch  step ms  images/s  images/s/process  all-reduce share
              2        4     64    10.00     6,400             3,200               25%
    """
    lines = ["processes  devices  batch  step ms  images/s  images/s/process  all-reduce share"]
    for r in rows:
        lines.append(f"{r['processes']:>9}  {r['devices']:>7}  {r['batch_size']:>5}  "
                     f"{1000 * r['step_seconds']:>7.2f}  {r['images_per_s']:>8,.0f}  "
                     f"{r['images_per_s_per_process']:>16,.0f}  "
                     f"{100 * r['collective_share']:>15.0f}%")
    return "\n".join(lines)
