"""Multi-process figures on one CPU machine: what the distributed code path costs, and the
step time per process count.

1. Overhead: ``jaxcnn train`` (keras_convnet, batch 128, 6,144 synthetic 28x28 images,
   one process, one device) against the same command with JAX's distributed runtime
   started (``--distributed on``, one process), in interleaved rounds, each a fresh
   process. Images/s: the median of each run's epochs after the first (whose time
   includes the compile), from its history.
2. Scaling: ``jaxcnn bench`` of the same model as a job of 1, 2 and 4 processes of one
   CPU device each on localhost (gloo collectives): global and per-process images/s and
   the all-reduce's share of the step.

On a 2-core machine the processes share the cores, so (2) is a correctness-scale
figure, not a speed-up: it shows what the collectives cost where compute cannot grow.

Usage (about 6 minutes here):
  PYTHONPATH=. python experiments/distributed_cpu.py --out docs/benchmarks/distributed_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.setdefault("PYTHONPATH", os.getcwd())
    return env


def _job(processes: int, args: list[str]) -> list[str]:
    """Runs one job of ``processes`` processes; returns process 0's stdout."""
    port = _free_port()
    procs = []
    for i in range(processes):
        job = ([] if processes == 1 else
               ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                "--process-id", str(i)])
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxcnn", *args, *job],
                                      env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise SystemExit(f"{args} failed ({p.returncode}):\n{err[-3000:]}")
    return outs[0][0]


def overhead(rounds: int, epochs: int, workroot: str) -> list[dict]:
    rows = []
    base = ["train", "--model", "keras_convnet", "--dataset", "synthetic:28x28x1:10:6144",
            "--batch-size", "128", "--epochs", str(epochs), "--quiet", "--json",
            "--set", "checkpoint.enabled=false"]
    for r in range(rounds):
        for variant, extra in (("plain", []),
                               ("distributed_on", ["--distributed", "on", "--coordinator",
                                                   f"localhost:{_free_port()}",
                                                   "--num-processes", "1",
                                                   "--process-id", "0"])):
            workdir = os.path.join(workroot, f"{variant}-{r}")
            out = _job(1, [*base, "--workdir", workdir, *extra])
            summary = json.loads(out.strip().splitlines()[-1])
            with open(os.path.join(workdir, "history.jsonl")) as f:
                epochs_after_first = [json.loads(line) for line in f][1:]
            # Epochs after the first: the first one's time includes the compile.
            speed = statistics.median(e["images_per_s"] for e in epochs_after_first)
            rows.append({"part": "overhead", "variant": variant, "round": r,
                         "images_per_s": speed,
                         "train_seconds": summary["train_seconds"],
                         "test_accuracy": summary["test_accuracy"]})
            print(f"overhead round {r} {variant}: {speed:,.0f} images/s", file=sys.stderr)
    return rows


def scaling(process_counts: list[int], batch: int, model: str, rounds: int) -> list[dict]:
    rows = []
    for r in range(rounds):
        for n in process_counts:
            out = _job(n, ["bench", "--model", model, "--batch-sizes", str(batch),
                           "--steps", "5", "--repeats", "3", "--warmup", "1", "--json",
                           "--num-devices", str(n)] if n == 1 else
                       ["bench", "--model", model, "--batch-sizes", str(batch), "--steps", "5",
                        "--repeats", "3", "--warmup", "1", "--json"])
            for row in json.loads(out.strip().splitlines()[-1])["results"]:
                row = {"part": "scaling", "round": r,
                       **{k: v for k, v in row.items() if k != "times"}}
                rows.append(row)
                print(f"scaling round {r}: {n} process(es): {row['images_per_s']:,.0f} "
                      f"images/s, step {1000 * row['step_seconds']:.1f} ms, all-reduce "
                      f"{100 * row['collective_share']:.1f}%", file=sys.stderr)
    return rows


def summarize(rows: list[dict]) -> dict:
    plain = [r["images_per_s"] for r in rows if r.get("variant") == "plain"]
    dist = [r["images_per_s"] for r in rows if r.get("variant") == "distributed_on"]
    out = {}
    if plain and dist:
        out["overhead_percent"] = 100 * (1 - statistics.median(dist) / statistics.median(plain))
        out["plain_median_images_per_s"] = statistics.median(plain)
        out["distributed_median_images_per_s"] = statistics.median(dist)
    for n in sorted({r["processes"] for r in rows if r.get("part") == "scaling"}):
        mine = [r for r in rows if r.get("part") == "scaling" and r["processes"] == n]
        out[f"processes_{n}"] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("step_seconds", "images_per_s", "images_per_s_per_process",
                        "allreduce_seconds", "collective_share")}
    if "processes_1" in out:
        for key in [k for k in out if k.startswith("processes_")]:
            out[key]["step_time_vs_1_process"] = (out[key]["step_seconds"]
                                                  / out["processes_1"]["step_seconds"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/benchmarks/distributed_cpu.jsonl")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--model", default="keras_convnet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workroot", default="/tmp/jaxcnn-distributed-cpu")
    ap.add_argument("--parts", default="overhead,scaling",
                    help="which parts to run: overhead, scaling or both")
    ap.add_argument("--merge", nargs="*", default=[],
                    help="earlier results files whose rows of the parts not run now are kept")
    args = ap.parse_args()
    t0 = time.time()
    parts = args.parts.split(",")
    rows = overhead(args.rounds, args.epochs, args.workroot) if "overhead" in parts else []
    if "scaling" in parts:
        rows += scaling([int(v) for v in args.processes.split(",")], args.batch, args.model,
                        max(args.rounds // 2, 1))
    for path in args.merge:  # e.g. the scaling rows of an earlier run, with a new overhead
        with open(path) as f:
            rows += [r for r in map(json.loads, f)
                     if r.get("part") not in ("setup", *parts)]
    setup = {"part": "setup", "machine": platform.processor() or platform.machine(),
             "cpus": os.cpu_count(), "python": platform.python_version(),
             "command": " ".join(sys.argv), "seconds": time.time() - t0,
             **summarize(rows)}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        for row in [setup, *rows]:
            f.write(json.dumps(row, default=str) + "\n")
    print(json.dumps(setup, default=str))


if __name__ == "__main__":
    main()
