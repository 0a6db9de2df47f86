"""Training throughput with glibc's default malloc settings against
``jaxcnn.host_memory.reuse_host_memory`` (freed host memory kept for reuse).

malloc settings are process-wide and apply to threads as they first
allocate, so every measurement runs in a fresh subprocess that applies its
setting before JAX starts. Rounds interleave the subprocesses (order shuffled
per round), so load from other processes hits every variant alike. Besides
images/s, each child reports the kernel (system) CPU time and the minor page
faults per step, from ``getrusage``: those are what the setting changes.

Settings (``SETTINGS``): ``default`` (glibc as it starts); ``reuse``
(:func:`jaxcnn.host_memory.reuse_host_memory`, what ``jaxcnn train`` applies to a
step with more than 32 MiB of temporaries); ``reuse_single_heap`` (``reuse``
and one heap for all threads, ``M_ARENA_MAX=1``); ``reuse_env`` (the
settings of ``reuse_single_heap`` as glibc tunables, read at process start);
``reuse_env_thp`` (and transparent huge pages for the heap); ``thp`` (huge
pages only).

Commands (about 10 and 15 minutes on 2 cores)::

    python experiments/bench_host_memory.py --models keras_convnet seed_cnn flax_cnn \\
        --micro-batches 1 4 --settings default reuse reuse_single_heap --rounds 3 \\
        --out docs/experiments/host_memory.json
    python experiments/bench_host_memory.py --models keras_convnet seed_cnn flax_cnn \\
        --micro-batches 1 4 --settings default reuse_single_heap reuse_env reuse_env_thp thp \\
        --rounds 3 --out docs/experiments/host_memory_glibc.json

Writes ``--out`` and the same name with ``.png``: by default a fresh directory,
``runs/experiments/bench_host_memory-<time>/host_memory.json``, so only an explicit
``--out docs/experiments/...`` replaces the committed files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Per setting: how the child applies it. "mallopt...": jaxcnn.host_memory.reuse_host_memory() at
# start-up (and one heap for all threads); another string: glibc tunables in the child's
# environment (read by glibc when the process starts).
_REUSE_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.arena_max=1"
SETTINGS = {
    "default": None,
    "reuse": "mallopt",
    "reuse_single_heap": "mallopt_single_heap",
    "reuse_env": _REUSE_TUNABLES,
    "reuse_env_thp": _REUSE_TUNABLES + ":glibc.malloc.hugetlb=1",
    "thp": "glibc.malloc.hugetlb=1",
}


def child(args) -> dict:
    """One measurement, in this (fresh) process: applies the setting, then times the step."""
    import resource
    import time

    from jaxcnn import host_memory

    how = SETTINGS[args.setting] or ""
    if how.startswith("mallopt"):
        host_memory.reuse_host_memory()
    if how == "mallopt_single_heap":
        host_memory._mallopt()(-8, 1)  # M_ARENA_MAX
    sys.path.insert(0, HERE)
    from bench_fast_path import make_step, run_steps

    from jaxcnn import ops

    shape = tuple(int(v) for v in args.image_shape.split("x"))
    v = make_step(args.model, "fast", {"micro_batches": args.micro}, args.batch, shape,
                  options=ops.compiler_options("fast"))
    run_steps(v, 3)
    rows = []
    for _ in range(args.repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run_steps(v, args.steps)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        rows.append({"images_per_s": args.batch * args.steps / (t1 - t0),
                     "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / args.steps,
                     "user_ms": 1e3 * (r1.ru_utime - r0.ru_utime) / args.steps,
                     "minor_faults": (r1.ru_minflt - r0.ru_minflt) / args.steps})
    best = statistics.median(r["images_per_s"] for r in rows)
    return {"images_per_s": best,
            **{k: statistics.median(r[k] for r in rows)
               for k in ("sys_ms", "user_ms", "minor_faults")}}


def run_child(model, micro, setting, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--setting", setting,
           "--models", model, "--micro", str(micro), "--batch", str(args.batch),
           "--image-shape", args.image_shape, "--steps", str(args.steps),
           "--repeats", str(args.repeats)]
    child_env = dict(os.environ)
    child_env.pop("GLIBC_TUNABLES", None)
    if SETTINGS[setting] and not SETTINGS[setting].startswith("mallopt"):
        child_env["GLIBC_TUNABLES"] = SETTINGS[setting]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=child_env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(result, path):
    """images/s per model and micro-batch count, one bar per setting (min-max bars)."""
    from _common import save_figure

    from jaxcnn.plots import _pyplot

    plt = _pyplot()
    groups = [(m, k) for m in result["models"] for k in result["micro_batches"]]
    settings = result["settings"]
    width = 0.8 / len(settings)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, s in enumerate(settings):
        cells = [result["cells"][f"{m}/{k}/{s}"] for m, k in groups]
        xs = [g + (i - (len(settings) - 1) / 2) * width for g in range(len(groups))]
        med = [c["images_per_s"] for c in cells]
        err = [[c["images_per_s"] - c["min"] for c in cells],
               [c["max"] - c["images_per_s"] for c in cells]]
        axes[0].bar(xs, med, width, yerr=err, capsize=2, label=s)
        axes[1].bar(xs, [c["sys_ms"] for c in cells], width, label=s)
    for ax, title in zip(axes, ("images/s (median over rounds, min-max)",
                                "kernel (system) CPU ms per step")):
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{m}\n{k} micro" for m, k in groups], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Training step, batch {result['batch']}, {result['image_shape']}, CPU "
                 f"fast path: glibc malloc defaults vs reuse_host_memory", fontsize=10)
    save_figure(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["keras_convnet", "seed_cnn", "flax_cnn"])
    p.add_argument("--micro-batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--settings", nargs="+", default=["default", "reuse"], choices=SETTINGS)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-shape", default="28x28x1")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None,
                   help="results file (default: a fresh runs/experiments/bench_host_memory-<time>/"
                        "host_memory.json)")
    # Internal: one measurement in a fresh process.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setting", default="default", help=argparse.SUPPRESS)
    p.add_argument("--micro", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.model = args.models[0]
        print(json.dumps(child(args)))
        return
    if args.out is None:
        args.out = os.path.join(HERE, "..", "runs", "experiments",
                                "bench_host_memory-" + time.strftime("%Y%m%d-%H%M%S"),
                                "host_memory.json")
    print(f"results go to {os.path.normpath(args.out)}", flush=True)
    cells = [(m, k, s) for m in args.models for k in args.micro_batches for s in args.settings]
    samples = {c: [] for c in cells}
    for r in range(args.rounds):
        order = list(cells)
        random.shuffle(order)
        for c in order:
            samples[c].append(run_child(*c, args))
            print(f"round {r} {c[0]:14s} micro {c[1]} {c[2]:13s} "
                  f"{samples[c][-1]['images_per_s']:7.0f} images/s  "
                  f"sys {samples[c][-1]['sys_ms']:5.1f} ms/step  "
                  f"faults {samples[c][-1]['minor_faults']:7.0f}/step", flush=True)
    result = {"models": args.models, "micro_batches": args.micro_batches,
              "settings": args.settings, "batch": args.batch, "image_shape": args.image_shape,
              "rounds": args.rounds, "steps": args.steps, "repeats": args.repeats, "cells": {}}
    base_setting = args.settings[0]
    for m, k, s in cells:
        rows = samples[(m, k, s)]
        ips = [row["images_per_s"] for row in rows]
        base = [row["images_per_s"] for row in samples[(m, k, base_setting)]]
        result["cells"][f"{m}/{k}/{s}"] = {
            "images_per_s": statistics.median(ips), "min": min(ips), "max": max(ips),
            "samples": ips,
            "sys_ms": statistics.median(row["sys_ms"] for row in rows),
            "user_ms": statistics.median(row["user_ms"] for row in rows),
            "minor_faults": statistics.median(row["minor_faults"] for row in rows),
            f"paired_speedup_vs_{base_setting}": statistics.median(
                a / b for a, b in zip(ips, base)),
        }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.splitext(args.out)[0] + ".png")
    print(f"{'model':14s} micro {'setting':13s} {'images/s':>9s} {'paired x':>9s} "
          f"{'sys ms':>7s} {'faults':>8s}")
    for m, k, s in cells:
        c = result["cells"][f"{m}/{k}/{s}"]
        print(f"{m:14s} {k:5d} {s:13s} {c['images_per_s']:9.0f} "
              f"{c[f'paired_speedup_vs_{base_setting}']:9.2f} {c['sys_ms']:7.1f} "
              f"{c['minor_faults']:8.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
