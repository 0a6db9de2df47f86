"""Side-by-side training throughput of the "xla" and "fast" paths on CPU, and of
the fast path with each of its parts taken away.

Every variant of the train step is compiled first; then rounds of a fixed
number of steps run interleaved (variant order shuffled per round), so load
from other processes on the machine hits every variant alike. Reported per
variant: median images/s over rounds, the spread (min, max), the step's FLOPs
from XLA's cost analysis and the fraction of the fp32 matmul peak measured in
the same process. ``--profile`` also times each conv and pool layer's forward
and backward alone, on both paths; ``--trace`` lists the fast step's most
expensive XLA operations from a profiler trace.

Variants (``VARIANTS``): ``xla`` and ``fast`` are the two paths; the others
change one thing of ``fast`` (or of ``xla``) to show what each part is worth.

Command (about 5 minutes on 2 cores)::

    python experiments/bench_fast_path.py --models keras_convnet seed_cnn flax_cnn \
        --variants xla fast xla_fast_options fast_default_options \
        fast_no_library_fusions fast_xla_avg_pool --rounds 7 --profile --trace \
        --out docs/experiments/fast_path_bench.json

Writes ``--out`` and the same name with ``.png``: by default a fresh directory,
``runs/experiments/bench_fast_path-<time>/fast_path_bench.json``, so only
``--out docs/experiments/fast_path_bench.json`` replaces the committed files.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _common import save_figure
from jaxcnn import ops, provenance
from jaxcnn.models import build_model
from jaxcnn.training import create_train_state, train_step

# Per variant: the impl, jaxcnn.ops attributes replaced while the step is traced and
# the XLA compiler options ("path": those of the impl, jaxcnn.ops.compiler_options).
_NO_LIBRARY_FUSIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
VARIANTS = {
    "xla": ("xla", {}, "path"),
    "fast": ("fast", {}, "path"),
    # The plain formulations, compiled with the fast path's XLA options.
    "xla_fast_options": ("xla", {}, "fast"),
    # The fast formulations with XLA's default options (YNNPACK convolutions).
    "fast_default_options": ("fast", {}, "xla"),
    # No XLA library (YNNPACK) fusions at all, not even for reductions and dots.
    "fast_no_library_fusions": ("fast", {}, _NO_LIBRARY_FUSIONS),
    # Max-pool backward from the saved pool input instead of the winners' positions.
    "fast_pool_input": ("fast", {"_fast_max_pool": functools.partial(ops._fast_max_pool,
                                                                     save_input=True)}, "path"),
    # Average pooling left to XLA's reduce_window.
    "fast_xla_avg_pool": ("fast", {"avg_pool_path": lambda *args, **kwargs: "xla"}, "path"),
    # Shifted-input (im2col) weight gradient for every conv, however wide.
    "fast_all_convs": ("fast", {"_FAST_MAX_CIN": 1 << 30}, "path"),
    # The step as micro-batches, one after the other (jaxcnn.training.train_step).
    "fast_micro2": ("fast", {"micro_batches": 2}, "path"),
    "fast_micro4": ("fast", {"micro_batches": 4}, "path"),
    # Only the max-pool gradient replaced.
    "fast_pools_only": ("fast", {"_FAST_MAX_CIN": 0}, "path"),
}


def variant_options(impl, options):
    """The compiler options of a variant."""
    if isinstance(options, dict):
        return options
    return ops.compiler_options(impl if options == "path" else options)


@contextlib.contextmanager
def knobs(settings):
    old = {k: getattr(ops, k) for k in settings}
    for k, v in settings.items():
        setattr(ops, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(ops, k, v)


def matmul_peak(n=2048, repeats=5):
    """fp32 GFLOP/s of one large matmul (median of repeats)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def make_step(model_name, impl, settings, batch, image_shape=(28, 28, 1), options=None):
    model = build_model(model_name, 10, impl=impl)
    state = create_train_state(model, image_shape, optax.adam(1e-3), jax.random.key(0))
    rng = np.random.default_rng(0)
    data = {"image": jnp.asarray(rng.random((batch, *image_shape)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, batch), jnp.int32)}
    key = jax.random.key(1)
    settings = dict(settings)
    micro = settings.pop("micro_batches", 1)
    # A fresh function object per variant: the knobs are read at trace time.
    jitted = jax.jit(lambda s, b, k: train_step(s, b, k, micro_batches=micro), donate_argnums=0,
                     compiler_options=options or {})
    with knobs(settings):
        compiled = jitted.lower(state, data, key).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    return {"fn": compiled, "state": state, "batch": data, "key": key, "flops": flops}


def run_steps(v, steps):
    state = v["state"]
    t = time.perf_counter()
    for _ in range(steps):
        state, m = v["fn"](state, v["batch"], v["key"])
    jax.block_until_ready((state, m))
    dt = time.perf_counter() - t
    v["state"] = state
    return dt


def bench_model(model_name, names, batch, rounds, steps, peak, image_shape=(28, 28, 1)):
    variants = {}
    for name in names:
        impl, settings, options = VARIANTS[name]
        variants[name] = make_step(model_name, impl, settings, batch, image_shape,
                                   options=variant_options(impl, options))
        run_steps(variants[name], 3)  # warm-up
    samples = {name: [] for name in names}
    order = list(names)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            samples[name].append(batch * steps / run_steps(variants[name], steps))
    out = {}
    for name in names:
        s = samples[name]
        med = statistics.median(s)
        flops = variants[name]["flops"]
        out[name] = {
            "images_per_s": med, "min": min(s), "max": max(s), "samples": s,
            "step_gflop": flops / 1e9,
            "gflop_per_s": flops * med / batch / 1e9,
            "fraction_of_peak": flops * med / batch / 1e9 / peak,
        }
    base = out[names[0]]["images_per_s"]
    for name in names:
        out[name]["speedup_vs_" + names[0]] = out[name]["images_per_s"] / base
        # Within each round the variants ran back to back: the median of the
        # per-round ratios is less exposed to load that changes between rounds.
        ratios = [a / b for a, b in zip(samples[name], samples[names[0]])]
        out[name]["paired_speedup_vs_" + names[0]] = statistics.median(ratios)
    return out


def _time(fn, *args, repeats=15):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def layer_shapes(model_name, batch, image_shape=(28, 28, 1)):
    """(kind, input shape, layer) of every conv and pool layer of a zoo model."""
    model = build_model(model_name, 10)
    x = jnp.zeros((batch, *image_shape))
    rows = []
    from jaxcnn.models import layer_names
    for name, spec in layer_names(model.layers):
        layer = spec.build(name=name, parent=None)
        if spec.kind in ("Conv2D", "MaxPooling2D", "AvgPooling2D"):  # ops with two paths
            rows.append((spec.kind, tuple(x.shape), spec))
        variables = layer.init(jax.random.key(0), x) if spec.kind in ("Conv2D", "Dense") else {}
        if spec.kind in ("Dropout",):
            continue
        if spec.kind == "SoftmaxOutput":
            break
        x = layer.apply(variables, x)
    return rows


def profile_model(model_name, batch, image_shape=(28, 28, 1)):
    """Milliseconds of each conv/pool layer's forward and forward+backward, per path."""
    rows = []
    rng = np.random.default_rng(0)
    for i, (kind, shape, spec) in enumerate(layer_shapes(model_name, batch, image_shape)):
        kw = spec.kwargs()
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        row = {"layer": spec.text(), "input": shape}
        for impl in ("xla", "fast"):
            if kind == "Conv2D":
                k = kw["kernel_size"]
                k = (k, k) if isinstance(k, int) else k
                w = jnp.asarray(rng.normal(size=(*k, shape[3], kw["filters"])), jnp.float32)
                pad = kw.get("padding", "valid").upper()

                def f(x, w, impl=impl, pad=pad):
                    return jax.nn.relu(ops.conv2d(x, w, padding=pad, impl=impl))

                # The first layer's input gradient is never needed in training.
                argnums = (1,) if i == 0 else (0, 1)
                args = (x, w)
            else:
                pool = ops.max_pool if kind == "MaxPooling2D" else ops.avg_pool
                p = kw.get("pool_size", 2)
                p = (p, p) if isinstance(p, int) else p

                def f(x, pool=pool, p=p, impl=impl):
                    return pool(x, p, padding=kw.get("padding", "valid").upper(), impl=impl)

                argnums, args = (0,), (x,)
            options = ops.compiler_options(impl)
            fwd = jax.jit(f, compiler_options=options)
            y = fwd(*args)
            dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
            bwd = jax.jit(lambda *a, f=f, argnums=argnums: jax.vjp(
                lambda *p: f(*[p[argnums.index(j)] if j in argnums else a[j]
                               for j in range(len(a))]),
                *[a[j] for j in argnums])[1](dy), compiler_options=options)
            row[impl + "_fwd_ms"] = _time(fwd, *args)
            row[impl + "_fwd_bwd_ms"] = _time(bwd, *args)
        rows.append(row)
    return rows


def trace_step(model_name, impl, batch, steps=10, image_shape=(28, 28, 1)):
    """Per-HLO-op time of the compiled train step, from a jax.profiler trace.

    Returns rows ``{"op", "ms_per_step", "share", "what"}`` (``what``: the
    JAX operations the fused HLO op came from), largest first.
    """
    import collections
    import glob
    import re
    import tempfile

    v = make_step(model_name, impl, {}, batch, image_shape, options=ops.compiler_options(impl))
    run_steps(v, 3)
    logdir = tempfile.mkdtemp(prefix="jaxcnn_trace_")
    jax.profiler.start_trace(logdir)
    run_steps(v, steps)
    jax.profiler.stop_trace()
    data = jax.profiler.ProfileData.from_file(
        glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[-1])
    per_op = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name.startswith("python"):
                continue
            for event in line.events:
                if "ThunkExecutor" not in event.name:
                    per_op[event.name] += event.duration_ns
    hlo = v["fn"].as_text()
    total = sum(per_op.values())
    rows = []
    for name, ns in per_op.most_common(int(os.environ.get("TRACE_TOP", "15"))):
        m = re.search(r"\n\s*(?:ROOT )?%" + re.escape(name) + r" = ([^\n]*)", hlo)
        what = ""
        if m:
            shape = m.group(1).split(" ")[0]
            called = re.search(r"calls=%([\w.\-]+)", m.group(1))
            body = m.group(1)
            if called:
                c = re.search(r"\n%" + re.escape(called.group(1)) + r" [^\n]*\{\n(.*?)\n\}",
                              hlo, re.S)
                body = c.group(1) if c else body
            sources = sorted({"/".join(n.split("/")[-2:])
                              for n in re.findall(r'op_name="([^"]*)"', body)})
            what = f"{shape} " + ", ".join(sources[:4])
        rows.append({"op": name, "ms_per_step": ns / 1e6 / steps, "share": ns / total,
                     "what": what})
    return rows


def plot_variants(result, path):
    """Grouped bars: images/s of every variant per model, error bars min-max over rounds."""
    from jaxcnn.plots import _pyplot

    plt = _pyplot()
    models = list(result["models"])
    variants = list(next(iter(result["models"].values()))["throughput"])
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(models) * len(variants) / 3), 4.2))
    for i, name in enumerate(variants):
        rows = [result["models"][m]["throughput"][name] for m in models]
        med = [r["images_per_s"] for r in rows]
        err = [[r["images_per_s"] - r["min"] for r in rows],
               [r["max"] - r["images_per_s"] for r in rows]]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(models))]
        ax.bar(xs, med, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("training images/s (batch %d)" % result["batch"])
    ax.set_title("jaxcnn training step on %d CPU cores: the fast path and its parts"
                 % result["device"].get("cpu_count", 0))
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _fresh_out(filename: str) -> str:
    """The default ``--out``: ``runs/experiments/bench_fast_path-<time>/<filename>``, a new directory.

    Only an explicit ``--out docs/experiments/...`` replaces the committed results.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs",
                        "experiments", f"bench_fast_path-{stamp}", filename)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["keras_convnet", "seed_cnn", "flax_cnn"])
    p.add_argument("--variants", nargs="+", default=["xla", "fast"], choices=sorted(VARIANTS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-shape", default="28x28x1", help="HxWxC of the input images")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--profile", action="store_true",
                   help="also time each conv/pool layer alone, per path")
    p.add_argument("--trace", action="store_true",
                   help="also profile the fast step with jax.profiler: time per HLO op")
    p.add_argument("--out", default=None,
                   help="results file (default: a fresh runs/experiments/bench_fast_path-<time>/"
                        "fast_path_bench.json)")
    p.add_argument("--png", default=None,
                   help="also draw the variants as grouped bars (default: --out with .png)")
    args = p.parse_args(argv)
    args.out = args.out or _fresh_out("fast_path_bench.json")
    print(f"results go to {args.out}", flush=True)
    random.seed(0)
    image_shape = tuple(int(v) for v in args.image_shape.lower().split("x"))
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    result = {"command": " ".join(["python", *sys.argv]), "matmul_peak_gflops": peak,
              "batch": args.batch, "image_shape": list(image_shape), "rounds": args.rounds, "steps_per_round": args.steps,
              "versions": provenance.versions(), "device": provenance.device_info(),
              "git_commit": provenance.git_commit(), "models": {}}
    for model_name in args.models:
        r = bench_model(model_name, args.variants, args.batch, args.rounds, args.steps, peak,
                        image_shape)
        result["models"][model_name] = {"throughput": r}
        for name, v in r.items():
            print(f"{model_name:14s} {name:16s} {v['images_per_s']:8.0f} img/s "
                  f"[{v['min']:.0f}, {v['max']:.0f}]  x{v['speedup_vs_' + args.variants[0]]:.2f}"
                  f" (paired x{v['paired_speedup_vs_' + args.variants[0]]:.2f})"
                  f"  {v['gflop_per_s']:.1f} GFLOP/s = {100 * v['fraction_of_peak']:.0f}% of peak",
                  flush=True)
        if args.profile:
            prof = profile_model(model_name, args.batch, image_shape)
            result["models"][model_name]["layers"] = prof
            for row in prof:
                print(f"  {row['layer']:28s} {str(row['input']):20s} "
                      f"xla fwd {row['xla_fwd_ms']:6.2f} fwd+bwd {row['xla_fwd_bwd_ms']:6.2f} | "
                      f"fast fwd {row['fast_fwd_ms']:6.2f} "
                      f"fwd+bwd {row['fast_fwd_bwd_ms']:6.2f} ms",
                      flush=True)
        if args.trace:
            rows = trace_step(model_name, "fast", args.batch, image_shape=image_shape)
            result["models"][model_name]["trace_fast"] = rows
            for row in rows:
                print(f"  {row['ms_per_step']:7.2f} ms/step {100 * row['share']:4.1f}%  "
                      f"{row['op']:28s} {row['what'][:90]}", flush=True)
        # Written after every model, so a long run leaves its results behind.
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    png = args.png or os.path.splitext(args.out)[0] + ".png"
    plot_variants(result, png)
    print("wrote", os.path.abspath(args.out), "and", os.path.abspath(png))


if __name__ == "__main__":
    main()
