"""Pooling ablation: max pooling versus average pooling versus stride-2 convolution versus none.

The seed model with each of its two maxpool(2) layers replaced by avgpool(2), by a stride-2
3x3 convolution with the same number of filters (a learned downsampling), or removed.

Command:   python experiments/ablate_pooling.py       (--dataset NAME for another dataset)
Hardware:  2 shared AMD EPYC CPU cores, no GPU.
Run time:  about 4 minutes (4 variants x 3 seeds x 20 epochs).
Expected:  max pooling is the most accurate per FLOP; average pooling is close; stride-2
           convolutions cost extra parameters and FLOPs for no gain; without pooling the dense
           layer grows 16x (about 0.5 M parameters), the model trains slower per image and
           fits no better.

Writes docs/experiments/ablate_pooling.{json,csv,md} and ablate_pooling.png.
"""

import statistics

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
    for r in agg:
        # Median over seeds: the CPU is shared, so single timings are noisy.
        r["images_per_s_median"] = statistics.median(
            x["images_per_s"] for x in C.rows_of(result, r["label"]))
    C.write_table("ablate_pooling", args,
                  ["variant", "test accuracy %", "params", "MFLOP / image",
                   "train images/s (median)", "train s / run"],
                  [[r["label"], C.fmt_pct(r), C.fmt_num(r["params_mean"]),
                    f"{r['flops_per_image_mean'] / 1e6:.2f}", f"{r['images_per_s_median']:,.0f}",
                    f"{r['train_seconds_mean']:.1f}"] for r in agg],
                  note=f"{args.seeds} seeds, {args.epochs} epochs; throughput measured on a "
                       f"CPU shared with other jobs (indicative only). {C.environment_line()}")

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
    axes[3].bar(labels, [r["images_per_s_median"] for r in agg], color=colors)
    axes[3].set(ylabel="training images/s (median of seeds)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Pooling on {args.dataset} ({args.seeds} seeds, {args.epochs} epochs)")
    C.save(fig, args, "ablate_pooling.png")


if __name__ == "__main__":
    main()
