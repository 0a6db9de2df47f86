"""Convolution ablation: number of filters and kernel size versus accuracy, parameters and FLOPs.

The seed model with its two convolutions changed: filters (F, 2F) for F in 4, 8, 16, 32, 64 at
kernel 3, and kernel sizes 1, 3, 5, 7 at F = 32 ('same' padding throughout).

Command:   python experiments/ablate_conv.py --out docs/experiments
           (--dataset NAME for another dataset)
Hardware:  2 shared AMD EPYC CPU cores, no GPU.
The training throughput of every variant is then measured side by side (_common.time_steps).

Run time:  about 10 minutes (8 variants x 3 seeds x 20 epochs; the 5x5 and 7x7 runs are the
           slow ones), then 2 minutes of timing.
Expected:  accuracy rises with F (87.9 % at 4/8, 94.8 % at 8/16, 97.2 % at 16/32, 98.9 % at
           32/64) and stops at 64/128 (98.2 %) while the FLOPs grow about 3.7x per doubling;
           a 1x1 kernel (no spatial context) collapses to 51.9 %; 5x5 (98.6 %) and 7x7
           (97.8 %) gain nothing over 3x3 at 2.6x and 5x the FLOPs, and their train steps run
           about 20x and 30x slower on this CPU.

Writes <out>/ablate_conv.{json,csv,md} and ablate_conv.png.
<out> is a fresh runs/experiments/ablate_conv-<time>/ unless --out is given; --out
docs/experiments replaces the committed results.
"""

import _common as C

FILTERS = (4, 8, 16, 32, 64)
KERNELS = (1, 3, 5, 7)


def main():
    args = C.parser(__doc__, epochs=20).parse_args()
    variants = {f"filters {f}/{2 * f}, 3x3": {"model.name": C.seed_spec(f1=f, f2=2 * f)}
                for f in FILTERS}
    variants |= {f"filters 32/64, {k}x{k}": {"model.name": C.seed_spec(k=k)}
                 for k in KERNELS if k != 3}
    result, agg = C.sweep("ablate_conv", args, C.base_config(args), variants,
                          description="filters and kernel size of the two convolutions")
    # The two XLA-only entries separate XLA's own cost of larger kernels from what the
    # CPU fast path (impl="auto" picks it on CPU) adds.
    timing = C.time_steps({**{label: v["model.name"] for label, v in variants.items()},
                           "3x3, impl=xla": (C.seed_spec(k=3), "xla"),
                           "5x5, impl=xla": (C.seed_spec(k=5), "xla")}, args.dataset)
    C.add_to_json(args, "ablate_conv", step_timing=timing)
    C.write_table("ablate_conv", args,
                  ["variant", "test accuracy %", "params", "MFLOP / image",
                   "train step images/s (median, IQR)", "GFLOP/s (forward)"],
                  [[r["label"], C.fmt_pct(r), C.fmt_num(r["params_mean"]),
                    f"{r['flops_per_image_mean'] / 1e6:.2f}",
                    f"{timing[r['label']]['median']:,.0f} ({timing[r['label']]['q1']:,.0f}-"
                    f"{timing[r['label']]['q3']:,.0f})",
                    f"{timing[r['label']]['median'] * r['flops_per_image_mean'] / 1e9:.1f}"]
                   for r in agg],
                  note=f"{args.seeds} seeds, {args.epochs} epochs. Throughput: jitted train step, "
                       f"with the default impl (auto); with impl=xla for both, 3x3 ran "
                       f"{timing['3x3, impl=xla']['median']:,.0f} and 5x5 "
                       f"{timing['5x5, impl=xla']['median']:,.0f} images/s; "
                       "batch 32, all models timed in turn in one process after warm-up, median "
                       "and interquartile range of 7 rounds of 20 steps; GFLOP/s counts forward "
                       "FLOPs only (a training step does about 3x that). The CPU was shared with "
                       f"other jobs: compare ratios. {C.environment_line()}")

    plt = C.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    by_label = {r["label"]: r for r in agg}
    groups = (("filters F in the first conv (2F in the second), 3x3 kernels",
               "F", [f"filters {f}/{2 * f}, 3x3" for f in FILTERS], FILTERS),
              ("kernel size k x k, 32/64 filters", "k",
               [f"filters 32/64, {k}x{k}" for k in KERNELS], KERNELS))
    for row_axes, (title, xname, labels, xs) in zip(axes, groups):
        rows = [by_label[label] for label in labels]
        row_axes[0].errorbar(xs, [100 * r["test_accuracy_mean"] for r in rows],
                             [100 * r["test_accuracy_std"] for r in rows], marker="o", capsize=3)
        row_axes[0].set(ylabel="test accuracy % (mean ± std)")
        row_axes[1].plot(xs, [r["params_mean"] for r in rows], "o-")
        row_axes[1].set(ylabel="parameters", yscale="log")
        row_axes[2].plot(xs, [r["flops_per_image_mean"] / 1e6 for r in rows], "o-")
        row_axes[2].set(ylabel="MFLOP per image (forward)", yscale="log")
        for ax in row_axes:
            ax.set(xlabel=xname, xticks=list(xs), xticklabels=[str(x) for x in xs])
            if xname == "F":
                ax.set_xscale("log", base=2)
                ax.set(xticks=list(xs), xticklabels=[str(x) for x in xs])
            ax.grid(alpha=0.3)
        row_axes[1].set_title(title)
    fig.suptitle(f"Convolution: filters and kernel size on {args.dataset} "
                 f"({args.seeds} seeds, {args.epochs} epochs)")
    C.save(fig, args, "ablate_conv.png")


if __name__ == "__main__":
    main()
