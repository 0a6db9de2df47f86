"""What checkpointing costs: keras_convnet trained with a checkpoint every epoch vs none.

Three ways to train the same keras_convnet (28x28x1 synthetic images, batch
128, Adam) for a few epochs with :func:`jaxcnn.training.fit`, measured side by
side in one process, interleaved round by round (the order rotates):

* ``none``: no checkpointing;
* ``async``: :class:`jaxcnn.checkpoint.CheckpointCallback` saving the state
  (step, parameters, Adam moments) and its JSON metadata at the end of every
  epoch with asynchronous writes (the default), and waiting for the last write
  before the clock stops;
* ``sync``: the same with synchronous writes.

Every run starts from the same fresh state, after a warm-up run that compiles
everything; the clock stops after ``block_until_ready`` on the final state
and, with checkpoints, after the last write has finished. The report gives
per condition the median seconds per run, the per-round overhead against
``none`` (median, min and max), and the time training spent blocked inside
the save calls (the part asynchronous saving cannot hide).

Command (about 3 minutes on 2 CPU cores)::

    python experiments/bench_checkpoint.py --examples 4096 --epochs 3 --rounds 5 \
        --out docs/experiments/bench_checkpoint.json

Writes ``--out`` (results with the versions, device and commit that produced
them): by default ``runs/experiments/bench_checkpoint-<time>/bench_checkpoint.json``,
a fresh directory, so only ``--out docs/experiments/bench_checkpoint.json``
replaces the committed file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from jaxcnn import checkpoint as ckpt, compilation_cache, provenance  # noqa: E402
from jaxcnn.config import CheckpointConfig, Config, OptimizerConfig, override  # noqa: E402
from jaxcnn.data import Preprocess, load_synthetic  # noqa: E402
from jaxcnn.models import build_model  # noqa: E402
from jaxcnn.training import create_train_state, fit, make_optimizer, split_keys  # noqa: E402

CONDITIONS = ("none", "async", "sync")


class TimedCheckpointCallback(ckpt.CheckpointCallback):
    """Adds up the wall time training spends inside save calls."""

    blocked = 0.0
    saves = 0

    def save(self, state, step, record=None):
        t0 = time.perf_counter()
        saved = super().save(state, step, record)
        self.blocked += time.perf_counter() - t0
        self.saves += int(saved)
        return saved


def run(examples: int = 4096, batch_size: int = 128, epochs: int = 3, rounds: int = 5,
        model_name: str = "keras_convnet") -> dict:
    """Runs the comparison and returns the results (see the module docstring)."""
    ds = load_synthetic(f"synthetic:28x28x1:10:{examples}")
    model = build_model(model_name, ds.num_classes)
    keys = split_keys(0)
    pre = Preprocess.fit(ds.train.images)
    spe = len(ds.train) // batch_size
    tx = make_optimizer(OptimizerConfig(), epochs * spe)
    config = override(Config(), {"model.name": model_name, "data.batch_size": batch_size,
                                 "train.epochs": epochs})
    meta = {"config": config.to_dict(), "dataset": ds.metadata(), "preprocess": pre.to_dict(),
            "steps_per_epoch": spe, "versions": provenance.versions()}
    root = tempfile.mkdtemp(prefix="bench_checkpoint_")

    def one(condition: str, index: int) -> dict:
        state = create_train_state(model, ds.image_shape, tx, keys.init)
        jax.block_until_ready(state)
        callbacks, ckpts = [], None
        if condition != "none":
            directory = os.path.join(root, f"{condition}-{index}")
            ckpts = ckpt.from_config(directory, CheckpointConfig(
                async_save=condition == "async", every_epochs=1))
            callbacks = [TimedCheckpointCallback(ckpts, meta, steps_per_epoch=spe)]
        t0 = time.perf_counter()
        result = fit(state, ds, keys=keys, epochs=epochs, batch_size=batch_size,
                     preprocess=pre, callbacks=callbacks, progress=False)
        jax.block_until_ready(result.state)
        if ckpts is not None:
            ckpts.close()  # waits for the last write
        seconds = time.perf_counter() - t0
        out = {"seconds": seconds, "steps": int(result.state.step)}
        if callbacks:
            out |= {"blocked_seconds": callbacks[0].blocked, "saves": callbacks[0].saves}
            shutil.rmtree(os.path.join(root, f"{condition}-{index}"), ignore_errors=True)
        return out

    for condition in CONDITIONS:  # warm-up: compile the step, the evaluation and Orbax paths
        one(condition, -1)
    per_round = []
    for r in range(rounds):
        order = CONDITIONS[r % 3:] + CONDITIONS[:r % 3]
        per_round.append({c: one(c, r) for c in order})
        print(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{c} {per_round[-1][c]['seconds']:.2f}s" for c in CONDITIONS), file=sys.stderr)
    shutil.rmtree(root, ignore_errors=True)

    summary = {}
    for c in CONDITIONS:
        secs = [p[c]["seconds"] for p in per_round]
        row = {"median_seconds": statistics.median(secs), "min_seconds": min(secs),
               "max_seconds": max(secs)}
        if c != "none":
            overhead = [p[c]["seconds"] / p["none"]["seconds"] - 1 for p in per_round]
            blocked = [p[c]["blocked_seconds"] / p["none"]["seconds"] for p in per_round]
            row |= {"overhead_median": statistics.median(overhead),
                    "overhead_min": min(overhead), "overhead_max": max(overhead),
                    "blocked_fraction_median": statistics.median(blocked),
                    "blocked_seconds_per_save_median": statistics.median(
                        p[c]["blocked_seconds"] / max(p[c]["saves"], 1) for p in per_round),
                    "saves_per_run": per_round[0][c]["saves"]}
        summary[c] = row
    n_params = sum(x.size for x in jax.tree.leaves(
        create_train_state(model, ds.image_shape, tx, keys.init).params))
    return {
        "benchmark": "checkpoint_overhead",
        "model": model_name, "params": int(n_params), "examples": len(ds.train),
        "batch_size": batch_size, "epochs": epochs, "steps_per_epoch": spe, "rounds": rounds,
        "summary": summary, "rounds_detail": per_round,
        "versions": provenance.versions(), "device": provenance.device_info(), "git_commit": provenance.git_commit(),
    }


def _fresh_out(filename: str) -> str:
    """The default ``--out``: ``runs/experiments/bench_checkpoint-<time>/<filename>``, a new directory.

    Only an explicit ``--out docs/experiments/...`` replaces the committed results.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs",
                        "experiments", f"bench_checkpoint-{stamp}", filename)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--examples", type=int, default=4096, help="training images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (one save each)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--model", default="keras_convnet")
    p.add_argument("--out", default=None,
                   help="results file (default: a fresh runs/experiments/bench_checkpoint-<time>/"
                        "bench_checkpoint.json)")
    args = p.parse_args(argv)
    args.out = args.out or _fresh_out("bench_checkpoint.json")
    print(f"results go to {args.out}", flush=True)
    compilation_cache.enable_compilation_cache()
    result = run(args.examples, args.batch_size, args.epochs, args.rounds, args.model)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    for c, row in result["summary"].items():
        extra = (f"  overhead {row['overhead_median']:+.2%} (min {row['overhead_min']:+.2%}, "
                 f"max {row['overhead_max']:+.2%})  blocked {row['blocked_fraction_median']:.2%}"
                 f" ({row['blocked_seconds_per_save_median'] * 1e3:.1f} ms/save)"
                 if c != "none" else "")
        print(f"{c:6s} median {row['median_seconds']:.2f}s{extra}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
