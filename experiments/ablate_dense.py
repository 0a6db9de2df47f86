"""Dense ablation: the hidden Dense layer's width (none, 32, 128, 512) and its activation.

The seed model with its hidden ``dense(128,relu)`` replaced: removed (the flattened 256
features go through the same dropout(0.5) straight to the softmax output layer), 32, 128 (the
seed model) or 512 units with ReLU, and 128 units without an activation (linear), which
makes Dense 128 -> output one linear map again: the same function class as no hidden layer.

Command:   python experiments/ablate_dense.py --out docs/experiments
           (--dataset NAME for another dataset)
Hardware:  2 shared AMD EPYC CPU cores, no GPU.
Run time:  about 9 minutes on 2 shared cores (5 variants x 5 seeds x 20 epochs).
Expected:  test accuracy (seeds 0-4) 97.5 ± 0.4 % without the hidden layer, 97.7 ± 0.4 % with
           32 ReLU units, 98.7 ± 0.6 % with 128 (the seed model), 98.1 ± 0.4 % with 512, and
           98.6 ± 0.7 % with 128 linear units, whose final training loss (0.067) is below
           the no-hidden-layer model's (0.150): the layer helps fitting, not expressiveness.
           Explained in docs/concepts.md#measured-the-hidden-dense-layer.

Writes <out>/ablate_dense.{json,csv,md} and ablate_dense.png.
<out> is a fresh runs/experiments/ablate_dense-<time>/ unless --out is given; --out
docs/experiments replaces the committed results.
"""

import _common as C

VARIANTS = {
    "no hidden layer": "",
    "dense 32, relu": "dense(32,relu)",
    "dense 128, relu": "dense(128,relu)",
    "dense 512, relu": "dense(512,relu)",
    "dense 128, linear": "dense(128)",
}


def main():
    args = C.parser(__doc__, epochs=20, seeds=5).parse_args()
    variants = {label: {"model.name": " ".join(C.seed_spec(dense=dense).split())}
                for label, dense in VARIANTS.items()}
    result, agg = C.sweep("ablate_dense", args, C.base_config(args), variants,
                          description="the hidden Dense layer: width 0/32/128/512 (ReLU), "
                                      "and 128 without activation")
    C.write_table("ablate_dense", args,
                  ["variant", "test accuracy %", "test loss", "final train loss", "params",
                   "dense params", "MFLOP / image"],
                  [[r["label"], C.fmt_pct(r), f"{r['test_loss_mean']:.3f}",
                    f"{r['final_train_loss_mean']:.3f}", C.fmt_num(r["params_mean"]),
                    f"{r['params_mean'] - agg[0]['params_mean']:+,.0f}",
                    f"{r['flops_per_image_mean'] / 1e6:.2f}"] for r in agg],
                  note=f"{args.seeds} seeds, {args.epochs} epochs, the whole training split "
                       "(no validation hold-out), mean ± std on the test split; \"dense "
                       "params\": parameters beyond the model without a hidden layer (the "
                       "hidden layer's, minus the output layer's saving). "
                       f"{C.environment_line()}")

    plt = C.pyplot()
    fig, (ax_acc, ax_par, ax_loss) = plt.subplots(1, 3, figsize=(15, 4))
    labels = [r["label"].replace(", ", "\n") for r in agg]
    colors = ["C7", "C0", "C1", "C2", "C3"]
    ax_acc.bar(labels, [100 * r["test_accuracy_mean"] for r in agg],
               yerr=[100 * r["test_accuracy_std"] for r in agg], capsize=4, color=colors)
    for i, r in enumerate(agg):
        seeds = [100 * row["test_accuracy"] for row in C.rows_of(result, r["label"])
                 if "test_accuracy" in row]
        ax_acc.plot([i] * len(seeds), seeds, "k.", ms=4)
    lo = min(100 * r["test_accuracy_min"] for r in agg)
    ax_acc.set(ylabel="test accuracy % (mean ± std, dots: seeds)", ylim=(max(lo - 1, 0), 100))
    ax_par.bar(labels, [r["params_mean"] for r in agg], color=colors)
    ax_par.set(ylabel="parameters (whole model)")
    for i, r in enumerate(agg):
        ep, loss, _ = C.mean_curve(C.rows_of(result, r["label"]), "loss")
        ax_loss.plot(ep, loss, color=colors[i], label=r["label"])
    ax_loss.set(xlabel="epoch", ylabel="training loss (with dropout; mean of seeds)",
                yscale="log")
    ax_loss.legend(fontsize=8)
    for ax in (ax_acc, ax_par):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    ax_loss.grid(alpha=0.3)
    fig.suptitle(f"The hidden Dense layer on {args.dataset} ({args.seeds} seeds, "
                 f"{args.epochs} epochs)")
    C.save(fig, args, "ablate_dense.png")


if __name__ == "__main__":
    main()
