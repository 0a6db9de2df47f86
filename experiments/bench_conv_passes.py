"""The three passes of a wide convolution on XLA's CPU backend, alone, and other
ways of computing its weight gradient.

The fast path leaves convolutions with more than 4 input channels to XLA's
own kernel (with the fast path's compiler options). This script shows how
close each pass of such a layer comes to the machine's fp32 matmul peak,
measured in the same process, and what the alternatives for the slowest pass,
the weight gradient, cost:

* ``fwd``: the forward convolution;
* ``dx``: the input gradient (XLA's transposed convolution);
* ``dw``: the weight gradient (XLA's convolution of the input with the output
  gradient);
* ``dw_chunks<K>``: the weight gradient summed over K batch chunks;
* ``dw_im2col``: one matmul of the gathered kernel-offset shifts of the input
  (``N*Ho*Wo x KH*KW*C_in``) with the output gradient.

Every variant is compiled first; then rounds run interleaved with a large
fp32 matmul (the peak), order shuffled per round; medians over rounds. GFLOP/s counts the useful multiply-adds
(``2 * N * Ho * Wo * KH * KW * C_in * C_out`` per pass), not the zeros a
padded transposed convolution also multiplies.

Command (about 3 minutes on 2 cores)::

    python experiments/bench_conv_passes.py --out docs/experiments/conv_passes.json

Writes ``--out`` and the same name with ``.png``: by default a fresh directory,
``runs/experiments/bench_conv_passes-<time>/conv_passes.json``, so only
``--out docs/experiments/conv_passes.json`` replaces the committed files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from _common import save_figure  # noqa: E402
from jaxcnn import ops, provenance  # noqa: E402

# The wide layers of the zoo's models at batch 128 (28x28x1 and 32x32x3
# inputs), batch 32 and 512, and two shapes the zoo does not have.
LAYERS = [
    "128x13x13x32:64:valid",   # keras_convnet
    "128x14x14x32:64:same",    # seed_cnn, flax_cnn
    "128x16x16x32:64:same",    # seed_cnn on 32x32x3
    "32x13x13x32:64:valid",
    "512x13x13x32:64:valid",
    "128x7x7x64:128:same",
    "128x28x28x16:32:same",
    "64x32x32x64:64:same",
]
VARIANTS = ["fwd", "dx", "dw", "dw_chunks4", "dw_chunks8", "dw_chunks16", "dw_im2col"]
DN = ("NHWC", "HWIO", "NHWC")


def parse_layer(text):
    """``"NxHxWxC:C_out:padding"`` -> (input shape, C_out, padding)."""
    shape, c_out, padding = text.split(":")
    return tuple(int(v) for v in shape.split("x")), int(c_out), padding.upper()


def variant_fn(name, padding):
    def conv(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)

    def dw_of(x, k, dy):
        return jax.vjp(lambda k: conv(x, k), k)[1](dy)[0]

    if name == "fwd":
        return lambda x, k, dy: conv(x, k)
    if name == "dx":
        return lambda x, k, dy: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0]
    if name == "dw":
        return dw_of
    if name.startswith("dw_chunks"):
        parts = int(name[len("dw_chunks"):])

        def chunked(x, k, dy):
            bounds = np.linspace(0, x.shape[0], parts + 1).round().astype(int)
            return sum(dw_of(x[a:b], k, dy[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
        return chunked
    if name == "dw_im2col":
        def im2col(x, k, dy):
            kh, kw, c_in, c_out = k.shape
            ho, wo = dy.shape[1:3]
            pads = ops._conv_pads(tuple(x.shape[1:3]), (kh, kw), (1, 1), padding)
            xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
            rows = np.arange(ho)[:, None] + np.arange(kh)[None, :]
            cols = np.arange(wo)[:, None] + np.arange(kw)[None, :]
            patches = xp[:, rows[:, None, :, None], cols[None, :, None, :], :]
            patches = patches.reshape(-1, kh * kw * c_in)
            dw = lax.dot_general(patches, dy.reshape(-1, c_out), (((0,), (0,)), ((), ())))
            return dw.reshape(k.shape)
        return im2col
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


PEAK_N = 2048  # the matmul timed beside every layer: its GFLOP/s is the peak


def bench_layer(text, variants, rounds, calls, options):
    (n, h, w, c_in), c_out, padding = parse_layer(text)
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, h, w, c_in))
    k = jax.random.normal(keys[1], (3, 3, c_in, c_out)) * 0.1
    y = lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)
    dy = jax.random.normal(keys[2], y.shape)
    flops = 2 * y.size * 9 * c_in
    a = jnp.ones((PEAK_N, PEAK_N), jnp.float32)
    compiled = {"peak": (jax.jit(lambda a: a @ a).lower(a).compile(), (a,))}
    reference = None
    for name in variants:
        if name.startswith("dw_chunks") and int(name[len("dw_chunks"):]) > n:
            continue
        fn = jax.jit(variant_fn(name, padding)).lower(x, k, dy).compile(options)
        out = fn(x, k, dy)
        if name.startswith("dw"):
            # Every weight-gradient form computes the same numbers.
            reference = out if reference is None else reference
            np.testing.assert_allclose(np.asarray(out), np.asarray(reference), rtol=1e-3, atol=1e-3)
        compiled[name] = (fn, (x, k, dy))
    times = {name: [] for name in compiled}
    for _ in range(rounds):
        order = list(compiled)
        random.shuffle(order)
        for name in order:
            fn, args = compiled[name]
            jax.block_until_ready(fn(*args))
            t = time.perf_counter()
            for _ in range(calls):
                out = fn(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t) / calls * 1e3)
    # The matmul ran in the same rounds: the peak under the same load.
    peak = 2 * PEAK_N**3 / statistics.median(times.pop("peak")) / 1e6
    rows = {}
    for name, ts in times.items():
        ms = statistics.median(ts)
        rows[name] = {"ms": ms, "min_ms": min(ts), "max_ms": max(ts),
                      "gflop_per_s": flops / ms / 1e6, "fraction_of_peak": flops / ms / 1e6 / peak}
    base = rows.get("dw", {}).get("ms")
    for name, row in rows.items():
        if name.startswith("dw") and base:
            row["vs_dw"] = row["ms"] / base
    return {"layer": text, "gflop_per_pass": flops / 1e9, "matmul_peak_gflops": peak,
            "variants": rows}


def plot(record, path):
    """Bars: each layer's passes as a share of the matmul peak measured beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["fwd", "dx", "dw", "dw_chunks8", "dw_im2col"]
    layers = record["layers"]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [100 * r["variants"].get(name, {}).get("fraction_of_peak", float("nan"))
                for r in layers]
        ax.bar(np.arange(len(layers)) + (i - (len(names) - 1) / 2) * width, vals, width,
               label=name)
    ax.set_xticks(np.arange(len(layers)))
    labels = []
    for r in layers:
        shape, c_out, padding = r["layer"].split(":")
        labels.append(f"{shape}\n-> {c_out} {padding}")
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("% of the fp32 matmul peak")
    ax.set_title("One 3x3 convolution's passes on XLA's CPU backend (fast-path options)")
    ax.legend(fontsize=8, ncol=5)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _fresh_out(filename: str) -> str:
    """The default ``--out``: ``runs/experiments/bench_conv_passes-<time>/<filename>``, a new directory.

    Only an explicit ``--out docs/experiments/...`` replaces the committed results.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs",
                        "experiments", f"bench_conv_passes-{stamp}", filename)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", nargs="+", default=LAYERS,
                   help="NxHxWxC_in:C_out:padding (3x3 kernel, stride 1)")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=5, help="timed calls per round")
    p.add_argument("--out", default=None,
                   help="results file (default: a fresh runs/experiments/bench_conv_passes-<time>/"
                        "conv_passes.json)")
    args = p.parse_args(argv)
    args.out = args.out or _fresh_out("conv_passes.json")
    print(f"results go to {args.out}", flush=True)
    options = ops.compiler_options("fast")
    print(f"compiler options {options}; share of peak: of a {PEAK_N}^3 fp32 matmul "
          "timed in the same rounds")
    results = []
    for text in args.layers:
        r = bench_layer(text, args.variants, args.rounds, args.calls, options)
        results.append(r)
        cells = "  ".join(
            f"{name} {v['ms']:.2f} ms ({v['fraction_of_peak']:.0%}"
            + (f", x{v['vs_dw']:.2f} dw" if "vs_dw" in v and name != "dw" else "") + ")"
            for name, v in r["variants"].items())
        print(f"{text:24s} peak {r['matmul_peak_gflops']:.0f} GFLOP/s  {cells}", flush=True)
        # Written after every layer: an interrupted run keeps what it measured.
        record = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
                  "compiler_options": options,
                  "rounds": args.rounds, "calls_per_round": args.calls,
                  "versions": provenance.versions(), "device": provenance.device_info(), "git_commit": provenance.git_commit(ROOT),
                  "layers": results}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    png = plot(record, os.path.splitext(args.out)[0] + ".png")
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
