"""What the input pipeline costs: fit's on-device and streaming paths vs a bare step loop.

Three ways to run the same training steps of keras_convnet (28x28x1, batch 128),
measured side by side in one process, interleaved round by round:

* ``bare``: a loop of ``jax.jit(train_step, donate_argnums=0)`` (with the
  model path's compiler options, as fit uses) over batches
  that are already preprocessed, batched and on the device (no pipeline at all);
* ``device``: :func:`jaxcnn.training.fit` with the training split on the device
  (per-step gather from the epoch's permutation, preprocessing and the metric
  accumulator inside the compiled step);
* ``stream``: :func:`jaxcnn.training.fit` streaming host batches through the
  background prefetch thread.

Each round times one epoch of each (after a warm-up that compiles everything),
with ``block_until_ready`` before reading the clock. The report gives the
median seconds per step of each path and the per-round ratios device/bare and
stream/device (median, min and max).

Short epochs and many interleaved rounds keep slow drifts in the machine's
load out of the per-round ratios.

Command (about 3 minutes on 2 CPU cores)::

    python experiments/bench_pipeline.py --examples 2048 --rounds 15 \
        --out docs/experiments/bench_pipeline.json

Writes ``--out`` (results with the versions, device and commit that produced
them): by default ``runs/experiments/bench_pipeline-<time>/bench_pipeline.json``,
a fresh directory, so only ``--out docs/experiments/bench_pipeline.json``
replaces the committed file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

from jaxcnn import ops, provenance
from jaxcnn.data import Preprocess, load_synthetic
from jaxcnn.models import build_model
from jaxcnn.training import create_train_state, fit, make_optimizer, split_keys, train_step
from jaxcnn.config import OptimizerConfig


def _state(model, ds, keys, total_steps):
    tx = make_optimizer(OptimizerConfig(), total_steps)
    return create_train_state(model, ds.image_shape, tx, keys.init)


def run(examples: int = 2048, batch_size: int = 128, rounds: int = 15, model_name: str =
        "keras_convnet", impl: str = "auto") -> dict:
    """Runs the comparison and returns the results (see the module docstring)."""
    ds = load_synthetic(f"synthetic:28x28x1:10:{examples}")
    model = build_model(model_name, ds.num_classes, impl=impl)
    keys = split_keys(0)
    pre = Preprocess.fit(ds.train.images)
    spe = len(ds.train) // batch_size
    device = jax.devices()[0]

    # The bare loop's batches: preprocessed, batched and on the device before timing.
    perm = np.random.default_rng(0).permutation(len(ds.train))[: spe * batch_size]
    bare_batches = [
        {"image": jax.device_put(pre(ds.train.images[idx]), device),
         "label": jax.device_put(ds.train.labels[idx], device)}
        for idx in perm.reshape(spe, batch_size)]
    # Compiled with the model path's XLA options, as fit compiles its steps.
    bare_step = jax.jit(train_step, donate_argnums=0,
                        compiler_options=ops.compiler_options(model.impl))
    dropout_key = jax.device_put(keys.dropout, device)

    def time_bare():
        state = jax.device_put(_state(model, ds, keys, spe), device)
        jax.block_until_ready(state)
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in bare_batches:
            state, metrics = bare_step(state, batch, dropout_key)
        jax.block_until_ready((state, metrics))
        return time.perf_counter() - t0, time.process_time() - c0

    def time_fit(pipeline):
        state = jax.device_put(_state(model, ds, keys, spe), device)
        jax.block_until_ready(state)
        t0, c0 = time.perf_counter(), time.process_time()
        result = fit(state, ds, keys=keys, epochs=1, batch_size=batch_size, preprocess=pre,
                     progress=False, pipeline=pipeline)
        jax.block_until_ready(result.state)
        assert result.pipeline == pipeline
        return time.perf_counter() - t0, time.process_time() - c0

    load_start = os.getloadavg()[0]
    paths = {"bare": time_bare, "device": lambda: time_fit("device"),
             "stream": lambda: time_fit("stream")}
    t0 = time.perf_counter()
    for fn in paths.values():  # warm-up: compile every path
        fn()
    warmup_s = time.perf_counter() - t0
    per_round, cpu_round = [], []
    for r in range(rounds):
        # Rotate the order so no path always runs first (or after the same one).
        order = list(paths)[r % 3:] + list(paths)[:r % 3]
        measured = {name: paths[name]() for name in order}
        times = {k: v[0] / spe for k, v in measured.items()}
        per_round.append(times)
        # CPU seconds of the whole process (all threads, the prefetch thread included):
        # less sensitive than wall time to other programs competing for the cores.
        cpu_round.append({k: v[1] / spe for k, v in measured.items()})
        print(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{k} {v * 1e3:.1f} ms/step ({cpu_round[-1][k] * 1e3:.0f} cpu-ms)"
            for k, v in times.items()), file=sys.stderr)

    def summary(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    ratios = {
        "device_over_bare": summary([t["device"] / t["bare"] for t in per_round]),
        "stream_over_device": summary([t["stream"] / t["device"] for t in per_round]),
    }
    cpu_ratios = {
        "device_over_bare": summary([t["device"] / t["bare"] for t in cpu_round]),
        "stream_over_device": summary([t["stream"] / t["device"] for t in cpu_round]),
    }
    return {
        "benchmark": "input pipeline",
        "model": model_name, "impl": impl, "image_shape": list(ds.image_shape),
        "train_examples": len(ds.train), "batch_size": batch_size, "steps_per_epoch": spe,
        "rounds": rounds, "warmup_seconds": warmup_s,
        "seconds_per_step": {k: summary([t[k] for t in per_round]) for k in paths},
        "images_per_s": {k: batch_size / statistics.median([t[k] for t in per_round])
                         for k in paths},
        "ratios": ratios,
        "cpu_seconds_per_step": {k: summary([t[k] for t in cpu_round]) for k in paths},
        "cpu_time_ratios": cpu_ratios,
        "targets": {"device_over_bare": "< 1.05", "stream_over_device": "< 1.10"},
        "per_round": per_round,
        "cpu_per_round": cpu_round,
        # Other work on the machine inflates the spread; the load says how much there was.
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "versions": provenance.versions(), "device": provenance.device_info(), "git_commit": provenance.git_commit(),
    }


def _fresh_out(filename: str) -> str:
    """The default ``--out``: ``runs/experiments/bench_pipeline-<time>/<filename>``, a new directory.

    Only an explicit ``--out docs/experiments/...`` replaces the committed results.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs",
                        "experiments", f"bench_pipeline-{stamp}", filename)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=2048, help="synthetic training examples")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (one epoch per path)")
    p.add_argument("--model", default="keras_convnet")
    p.add_argument("--impl", default="auto", help="conv/pool implementation: auto, xla, fast")
    p.add_argument("--out", default=None,
                   help="results file (default: a fresh runs/experiments/bench_pipeline-<time>/"
                        "bench_pipeline.json)")
    args = p.parse_args(argv)
    args.out = args.out or _fresh_out("bench_pipeline.json")
    print(f"results go to {args.out}", flush=True)
    res = run(args.examples, args.batch_size, args.rounds, args.model, args.impl)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2, default=str)
        f.write("\n")
    for label, r in (("wall", res["ratios"]), ("cpu", res["cpu_time_ratios"])):
        print(f"{label}: device/bare {r['device_over_bare']['median']:.3f} "
              f"(min {r['device_over_bare']['min']:.3f}, max {r['device_over_bare']['max']:.3f}); "
              f"stream/device {r['stream_over_device']['median']:.3f} "
              f"(min {r['stream_over_device']['min']:.3f}, "
              f"max {r['stream_over_device']['max']:.3f})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
