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

from jaxcnn.bench._config import BenchConfig, BenchError
from jaxcnn.bench._frameworks import compare_request, framework_rows
from jaxcnn.bench._job import bench_job, format_job_rows
from jaxcnn.bench._measure import bench_data, bench_one, bench_policy, check_model, train_program
from jaxcnn.bench._memory import available_memory_bytes, compiled_memory_bytes
from jaxcnn.bench._peaks import DEVICE_PEAKS, Peak, device_peak, lookup_peak, measure_matmul_peak
from jaxcnn.bench._report import (aggregate, format_table, output_problem, plot_throughput,
                                  read_jsonl, write_jsonl)
from jaxcnn.bench._sweep import run
from jaxcnn.compare import ComparisonError


__all__ = [
    "BenchConfig", "BenchError", "ComparisonError", "DEVICE_PEAKS", "Peak", "aggregate",
    "available_memory_bytes", "bench_data", "bench_job", "bench_one", "bench_policy",
    "check_model", "format_job_rows",
    "compare_request",
    "compiled_memory_bytes", "device_peak", "format_table", "framework_rows", "lookup_peak",
    "measure_matmul_peak", "output_problem", "plot_throughput", "read_jsonl", "run",
    "train_program", "write_jsonl",
]
