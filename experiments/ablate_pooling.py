"""Pooling ablation: max pooling versus average pooling versus stride-2 convolution versus none.

The seed model with each of its two maxpool(2) layers replaced by avgpool(2), by a stride-2
3x3 convolution with the same number of filters (a learned downsampling), or removed.

Command:   python experiments/ablate_pooling.py --out docs/experiments
           (--dataset NAME for another dataset)
Hardware:  2 shared AMD EPYC CPU cores, no GPU.
The training throughput of the four models is then measured side by side (_common.time_steps).

Run time:  about 5 minutes (4 variants x 3 seeds x 20 epochs, then 1 minute of timing).
Expected:  max pooling 98.9 ± 0.0 % at 53,002 parameters and 0.70 MFLOP per image; average
           pooling 96.9 ± 1.1 % at the same cost; stride-2 convolutions 98.1 ± 0.6 % with 87 %
           more parameters, 1.8x the FLOPs and about 2.7x slower steps; no pooling
           98.4 ± 0.8 % with 10x the parameters (the dense layer sees 8x8x64 = 4,096 inputs),
           4.9x the FLOPs and about 5x slower steps.

Writes <out>/ablate_pooling.{json,csv,md} and ablate_pooling.png.
<out> is a fresh runs/experiments/ablate_pooling-<time>/ unless --out is given; --out
docs/experiments replaces the committed results.
"""

import _common as C

VARIANTS = {
    "max pooling 2x2": dict(pool1="maxpool(2)", pool2="maxpool(2)"),
    "average pooling 2x2": dict(pool1="avgpool(2)", pool2="avgpool(2)"),
    "stride-2 conv 3x3": dict(pool1="conv(32,3,strides=2,same)", pool2="conv(64,3,strides=2,same)"),
    "no pooling": dict(pool1="", pool2=""),
}


def main():
    args = C.parser(__doc__, epochs=20).parse_args()
    variants = {label: {"model.name": " ".join(C.seed_spec(**kw).split())}
                for label, kw in VARIANTS.items()}
    result, agg = C.sweep("ablate_pooling", args, C.base_config(args), variants,
                          description="downsampling: max/avg pooling, stride-2 conv, none")
    timing = C.time_steps({label: v["model.name"] for label, v in variants.items()},
                        args.dataset)
    for r in agg:
        r["step_images_per_s"] = timing[r["label"]]
    C.add_to_json(args, "ablate_pooling", step_timing=timing)
    C.write_table("ablate_pooling", args,
                  ["variant", "test accuracy %", "params", "MFLOP / image",
                   "train step images/s (median, IQR)", "train s / run"],
                  [[r["label"], C.fmt_pct(r), C.fmt_num(r["params_mean"]),
                    f"{r['flops_per_image_mean'] / 1e6:.2f}",
                    f"{r['step_images_per_s']['median']:,.0f} "
                    f"({r['step_images_per_s']['q1']:,.0f}-{r['step_images_per_s']['q3']:,.0f})",
                    f"{r['train_seconds_mean']:.1f}"] for r in agg],
                  note=f"{args.seeds} seeds, {args.epochs} epochs. Throughput: jitted train step, "
                       "batch 32, the four models timed in turn in one process after warm-up, "
                       "median and interquartile range of 7 rounds of 20 steps; the CPU was "
                       "shared with other jobs, so compare the ratios, not the absolute rates. "
                       f"{C.environment_line()}")

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    labels = [r["label"].replace(" ", "\n", 1) for r in agg]
    colors = ["C0", "C1", "C2", "C3"]
    axes[0].bar(labels, [100 * r["test_accuracy_mean"] for r in agg],
                yerr=[100 * r["test_accuracy_std"] for r in agg], capsize=4, color=colors)
    lo = min(100 * r["test_accuracy_min"] for r in agg)
    axes[0].set(ylabel="test accuracy % (mean ± std)", ylim=(max(lo - 2, 0), 100))
    axes[1].bar(labels, [r["params_mean"] for r in agg], color=colors)
    axes[1].set(ylabel="parameters")
    axes[2].bar(labels, [r["flops_per_image_mean"] / 1e6 for r in agg], color=colors)
    axes[2].set(ylabel="MFLOP per image (forward)")
    med = [r["step_images_per_s"]["median"] for r in agg]
    axes[3].bar(labels, med, color=colors,
                yerr=[[m - r["step_images_per_s"]["q1"] for m, r in zip(med, agg)],
                      [r["step_images_per_s"]["q3"] - m for m, r in zip(med, agg)]], capsize=4)
    axes[3].set(ylabel="train step images/s (median, IQR)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Pooling on {args.dataset} ({args.seeds} seeds, {args.epochs} epochs)")
    C.save(fig, args, "ablate_pooling.png")


if __name__ == "__main__":
    main()
