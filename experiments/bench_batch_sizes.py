"""Training throughput across batch sizes: does the execution policy hold it?

For each zoo model, ``jaxcnn bench --what train`` (the compiled step that
``jaxcnn train`` runs) at batch 128, 512 and 1024 with the default policy
(``auto``: on the CPU fast path a batch above 256 images is spread over
compiled calls of 128 images, see :class:`jaxcnn.training.ExecutionPolicy`),
beside the same batches as one compiled call (``--micro-batches 1``, what
``auto`` did before chunks existed). Each measurement runs in its own
``jaxcnn bench`` process; rounds alternate the settings, so load from other
processes hits both alike. Ratios are taken within a round.

Command (about 15 minutes on 2 CPU cores)::

    python experiments/bench_batch_sizes.py --rounds 2 --out docs/benchmarks/cpu_batch_sizes

Writes ``<out>.jsonl`` (every bench row), ``<out>.json`` (the ratios) and
``<out>.png``; ``--out`` defaults to a fresh directory under runs/experiments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from experiments._common import environment_line, pyplot, save_figure  # noqa: E402
from jaxcnn.bench import read_jsonl  # noqa: E402

SETTINGS = {"policy": ["--micro-batches", "auto"], "one_call": ["--micro-batches", "1"]}


def _bench(model: str, batch_sizes: list[int], setting: str, args, round_index: int) -> list:
    out = tempfile.mktemp(suffix=".jsonl")
    cmd = [sys.executable, "-m", "jaxcnn", "bench", "--model", model, "--input-shape",
           args.input_shape, "--batch-sizes", ",".join(map(str, batch_sizes)),
           "--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", "2",
           "--first-round", str(round_index), "--out", out, *SETTINGS[setting]]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = read_jsonl(out)
    os.remove(out)
    for row in rows:
        row["setting"] = setting
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["keras_convnet", "seed_cnn", "flax_cnn"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--input-shape", default="28x28x1")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None,
                   help="path prefix of the results (default: a fresh directory under "
                        "runs/experiments)")
    args = p.parse_args(argv)
    out = args.out or os.path.join(
        ROOT, "runs", "experiments",
        "batch_sizes-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), "batch_sizes")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    rows = []
    large = [b for b in args.batch_sizes if b > 256]
    for r in range(args.rounds):
        for model in args.models:
            for setting in (("policy", "one_call") if r % 2 == 0 else ("one_call", "policy")):
                sizes = args.batch_sizes if setting == "policy" else large
                rows += _bench(model, sizes, setting, args, r)
                last = [x for x in rows if x["model"] == model and x["setting"] == setting]
                print(f"round {r} {model:14s} {setting:8s} " + "  ".join(
                    f"{x['batch_size']}: {x['images_per_s']:,.0f}" for x in last
                    if x["round"] == r and x.get("images_per_s")), flush=True)
    with open(out + ".jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    summary = {"command": "python experiments/bench_batch_sizes.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "environment": environment_line(), "models": {}}
    for model in args.models:
        per = {}
        for b in args.batch_sizes:
            for setting in SETTINGS:
                ratios = []
                for r in range(args.rounds):
                    base = [x for x in rows if x["model"] == model and x["setting"] == "policy"
                            and x["batch_size"] == 128 and x["round"] == r]
                    this = [x for x in rows if x["model"] == model and x["setting"] == setting
                            and x["batch_size"] == b and x["round"] == r]
                    if base and this and this[0].get("images_per_s"):
                        ratios.append(this[0]["images_per_s"] / base[0]["images_per_s"])
                speeds = [x["images_per_s"] for x in rows if x["model"] == model
                          and x["setting"] == setting and x["batch_size"] == b
                          and x.get("images_per_s")]
                if speeds:
                    per[f"{setting}@{b}"] = {
                        "images_per_s_median": statistics.median(speeds),
                        "vs_policy_at_128": [round(v, 3) for v in ratios],
                        "chunks": next(x["chunks"] for x in rows if x["model"] == model
                                       and x["setting"] == setting and x["batch_size"] == b),
                        "micro_batches": next(x["micro_batches"] for x in rows
                                              if x["model"] == model and x["setting"] == setting
                                              and x["batch_size"] == b)}
        summary["models"][model] = per
    with open(out + ".json", "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(json.dumps(summary["models"], indent=1))

    plt = pyplot()
    fig, axes = plt.subplots(1, len(args.models), figsize=(4.2 * len(args.models), 3.4),
                             squeeze=False)
    for ax, model in zip(axes[0], args.models):
        for setting, style in (("policy", "o-"), ("one_call", "s--")):
            sizes = [b for b in args.batch_sizes if f"{setting}@{b}" in summary["models"][model]]
            ax.plot(sizes, [summary["models"][model][f"{setting}@{b}"]["images_per_s_median"]
                            for b in sizes], style,
                    label="policy (auto)" if setting == "policy" else "one compiled call")
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.batch_sizes, [str(b) for b in args.batch_sizes])
        ax.set_title(model)
        ax.set_xlabel("batch size")
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("training images/s (median of rounds)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("jaxcnn bench --what train, " + environment_line(), fontsize=8)
    save_figure(fig, out + ".png")
    print("wrote", out + ".jsonl", out + ".json", out + ".png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
