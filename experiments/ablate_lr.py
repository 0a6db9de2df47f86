"""Learning-rate sweep with Adam over five orders of magnitude: final loss, accuracy, loss curves.

The seed model with Adam at learning rates 1e-5, 1e-4, 1e-3, 1e-2, 1e-1 and 1 (constant
schedule, batch 32).

Command:   python experiments/ablate_lr.py --out docs/experiments
           (--dataset NAME for another dataset)
Hardware:  2 shared AMD EPYC CPU cores, no GPU.
Run time:  about 5 minutes (6 rates x 3 seeds x 20 epochs).
Expected:  1e-5 is far too slow (training loss 2.27 after 20 epochs, 47 % test accuracy),
           1e-4 is slow (90 %), 1e-3 (Adam's usual default) is best (99.2 %), 1e-2 is noisier
           and worse (97.8 %), and at 1e-1 and 1 the loss blows up (to 1e4 in the first epoch
           at 1) and the model ends at chance (10 %).

Writes <out>/ablate_lr.{json,csv,md} and ablate_lr.png.
<out> is a fresh runs/experiments/ablate_lr-<time>/ unless --out is given; --out
docs/experiments replaces the committed results.
"""

import _common as C

RATES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def main():
    args = C.parser(__doc__, epochs=20).parse_args()
    variants = {f"lr {lr:g}": {"optimizer.learning_rate": lr} for lr in RATES}
    result, agg = C.sweep("ablate_lr", args, C.base_config(args), variants,
                          description="Adam learning rate")
    C.write_table("ablate_lr", args,
                  ["learning rate", "final train loss", "test loss", "test accuracy %",
                   "diverged runs"],
                  [[r["label"].split()[1],
                    C.fmt_num(r.get("final_train_loss_mean"), 3),
                    C.fmt_num(r.get("test_loss_mean"), 3), C.fmt_pct(r),
                    f"{r['diverged']}/{r['n']}"] for r in agg],
                  note=f"Adam, constant rate, batch 32; mean of {args.seeds} seeds after "
                       f"{args.epochs} epochs. {C.environment_line()}")

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ok = [(lr, r) for lr, r in zip(RATES, agg) if "test_accuracy_mean" in r]
    axes[0].errorbar([lr for lr, _ in ok], [r["final_train_loss_mean"] for _, r in ok],
                     [r["final_train_loss_std"] for _, r in ok], marker="o", capsize=3,
                     label="final training loss")
    axes[0].errorbar([lr for lr, _ in ok], [r["test_loss_mean"] for _, r in ok],
                     [r["test_loss_std"] for _, r in ok], marker="s", capsize=3,
                     label="test loss")
    axes[0].set(xscale="log", yscale="log", xlabel="learning rate", ylabel="loss")
    axes[1].errorbar([lr for lr, _ in ok], [100 * r["test_accuracy_mean"] for _, r in ok],
                     [100 * r["test_accuracy_std"] for _, r in ok], marker="o", capsize=3)
    axes[1].set(xscale="log", xlabel="learning rate", ylabel="test accuracy % (mean ± std)")
    for i, (lr, r) in enumerate(zip(RATES, agg)):
        ep, loss, _ = C.mean_curve(C.rows_of(result, r["label"]), "loss")
        axes[2].plot(ep, loss, color=f"C{i}", label=f"lr {lr:g}")
    axes[2].set(xlabel="epoch", ylabel="training loss (mean of seeds)", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Adam learning rate on {args.dataset} ({args.seeds} seeds, "
                 f"{args.epochs} epochs)")
    C.save(fig, args, "ablate_lr.png")


if __name__ == "__main__":
    main()
