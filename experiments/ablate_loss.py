"""Softmax and cross-entropy: plain one-hot targets against label smoothing, and what the
softmax probabilities are worth as confidence (calibration).

The seed model trained with the plain cross-entropy (``train.label_smoothing=0``) and with
label smoothing 0.1 and 0.2 (targets ``(1 - s) * one_hot + s / 10``). Each run keeps its
final checkpoint, which is loaded back to predict the test split's class probabilities.
Measured on the test split, per run: accuracy; the cross-entropy ``-log p_y`` (never
smoothed); the mean confidence (the largest softmax probability, the probability of the
class predicted); the mean probability given to the true class; the share of images
predicted with confidence above 0.99; and the expected calibration error (ECE: the images
binned by confidence in 10 bins of width 0.1, the gap |accuracy - mean confidence| of each
bin weighted by its share of images). The plot also draws the loss as a function of the
probability given to the true class (the rest spread evenly over the other 9 classes),
which is where the two losses differ: -log p falls to 0 only at p = 1, the smoothed loss is
lowest at p = 1 - s + s/10.

Command:   python experiments/ablate_loss.py --out docs/experiments
           (--dataset NAME for another dataset)
Hardware:  2 shared AMD EPYC CPU cores, no GPU.
Run time:  about 6 minutes on 2 shared cores (3 variants x 5 seeds x 20 epochs).
Expected:  the same accuracy for all three (98.7 ± 0.6, 98.8 ± 0.5, 98.8 ± 0.5 %, seeds 0-4);
           mean confidence 98.0 %, 88.0 % and 77.5 % (ECE 1.2 %, 10.9 %, 21.3 %): plain
           cross-entropy is calibrated here and smoothing makes the model underconfident,
           with a 3.6x and 6.7x higher test cross-entropy.
           Explained in docs/concepts.md#measured-cross-entropy-label-smoothing-and-confidence.

Writes <out>/ablate_loss.{json,csv,md} and ablate_loss.png.
<out> is a fresh runs/experiments/ablate_loss-<time>/ unless --out is given; --out
docs/experiments replaces the committed results.
"""

import numpy as np

import _common as C

SMOOTHING = (0.0, 0.1, 0.2)
BINS = 10


def label(s: float) -> str:
    return "cross-entropy" if s == 0 else f"label smoothing {s:g}"


def test_probabilities(workdir: str, dataset):
    """The test split's class probabilities from a cell's final checkpoint."""
    from jaxcnn import checkpoint
    from jaxcnn.training import predict

    restored = checkpoint.load(workdir, "latest")
    return predict(restored.state, dataset.test.images, restored.preprocess)


def calibration(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, cross-entropy, confidence and calibration of one run's test predictions."""
    conf = probs.max(-1)
    correct = probs.argmax(-1) == labels
    p_true = probs[np.arange(len(labels)), labels]
    edges = np.linspace(0, 1, BINS + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, BINS - 1)
    ece = sum(abs(correct[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
              for b in range(BINS) if (which == b).any())
    return {"accuracy": float(correct.mean()),
            "nll": float(-np.log(np.maximum(p_true, 1e-30)).mean()),
            "mean_confidence": float(conf.mean()),
            "mean_p_true": float(p_true.mean()),
            "share_confidence_above_0.99": float((conf > 0.99).mean()),
            "ece": float(ece)}


def smoothed_loss(p, s, k=10):
    """The loss of a prediction giving p to the true class and (1 - p)/(k - 1) to each other."""
    target = 1 - s + s / k
    return -(target * np.log(p) + (1 - target) * np.log((1 - p) / (k - 1)))


def main():
    args = C.parser(__doc__, epochs=20, seeds=5).parse_args()
    # Each cell keeps its final state (one synchronous save at the end) to predict from.
    base = C.base_config(args, checkpoint__enabled=True, checkpoint__every_epochs=0,
                         checkpoint__keep=1, checkpoint__keep_best=0,
                         checkpoint__async_save=False)
    variants = {label(s): {"train.label_smoothing": s} for s in SMOOTHING}
    result, agg = C.sweep("ablate_loss", args, base, variants,
                          description="cross-entropy vs label smoothing; test-set confidence "
                                      "and calibration from the final checkpoints")

    from jaxcnn.data import load_dataset

    ds = load_dataset(args.dataset, validation_fraction=0.0, data_dir=args.data_dir)
    labels = np.asarray(ds.test.labels)
    per_run, pooled = [], {}
    for row in result.rows:
        probs = np.asarray(test_probabilities(row["workdir"], ds), np.float64)
        m = calibration(probs, labels)
        per_run.append({"label": row["label"], "seed": row["seed"], **m})
        pooled.setdefault(row["label"], []).append(probs)
    summary = {}
    for r in agg:
        runs = [m for m in per_run if m["label"] == r["label"]]
        summary[r["label"]] = {k: {"mean": float(np.mean([m[k] for m in runs])),
                                   "std": float(np.std([m[k] for m in runs], ddof=1))
                                   if len(runs) > 1 else 0.0}
                               for k in runs[0] if k not in ("label", "seed")}
    C.add_to_json(args, "ablate_loss", test_calibration_per_run=per_run,
                  test_calibration=summary, ece_bins=BINS)

    def ms(lbl, key, scale=1.0, digits=1):
        v = summary[lbl][key]
        return f"{scale * v['mean']:.{digits}f} ± {scale * v['std']:.{digits}f}"

    C.write_table("ablate_loss", args,
                  ["variant", "test accuracy %", "test cross-entropy", "mean confidence %",
                   "mean p(true class) %", "confidence > 0.99 (% of images)", "ECE %",
                   "final train loss (smoothed)"],
                  [[r["label"], ms(r["label"], "accuracy", 100), ms(r["label"], "nll", 1, 3),
                    ms(r["label"], "mean_confidence", 100),
                    ms(r["label"], "mean_p_true", 100),
                    ms(r["label"], "share_confidence_above_0.99", 100),
                    ms(r["label"], "ece", 100), f"{r['final_train_loss_mean']:.3f}"]
                   for r in agg],
                  note=f"{args.seeds} seeds, {args.epochs} epochs, the whole training split "
                       f"(no validation hold-out), mean ± std over seeds on the "
                       f"{len(labels)} test images, predicted from each run's final "
                       "checkpoint. The test cross-entropy is -log p(true class), never "
                       f"smoothed; ECE: {BINS} confidence bins of width 0.1. The final train "
                       "loss is the training objective itself (smoothed when s > 0, "
                       f"measured with dropout on). {C.environment_line()}")

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    colors = {lbl: f"C{i}" for i, lbl in enumerate(summary)}
    p = np.linspace(0.02, 0.9999, 500)
    for s in SMOOTHING:
        axes[0].plot(p, smoothed_loss(p, s), color=colors[label(s)], label=label(s))
        if s:
            best = 1 - s + s / 10
            axes[0].plot([best], [smoothed_loss(best, s)], "o", color=colors[label(s)])
    axes[0].set(xlabel="probability given to the true class", ylabel="loss of one image",
                ylim=(0, 4), title="loss vs p(true class) (dots: minimum)")
    axes[0].legend(fontsize=8)
    bins = np.linspace(0.1, 1.0, 37)
    for lbl, probs in pooled.items():
        conf = np.concatenate(probs).max(-1)
        axes[1].hist(conf, bins=bins, histtype="step", lw=1.5, color=colors[lbl], label=lbl)
    axes[1].set(xlabel="confidence (largest softmax probability)", yscale="log",
                ylabel=f"test images ({args.seeds} seeds pooled)",
                title="how sure the predictions are")
    axes[1].legend(fontsize=8, loc="upper left")
    edges = np.linspace(0, 1, BINS + 1)
    axes[2].plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="calibrated")
    for lbl, probs in pooled.items():
        probs = np.concatenate(probs)
        conf = probs.max(-1)
        correct = probs.argmax(-1) == np.tile(labels, len(pooled[lbl]))
        which = np.clip(np.digitize(conf, edges[1:-1]), 0, BINS - 1)
        xs = [conf[which == b].mean() for b in range(BINS) if (which == b).sum() >= 5]
        ys = [correct[which == b].mean() for b in range(BINS) if (which == b).sum() >= 5]
        axes[2].plot(xs, ys, "o-", color=colors[lbl], label=lbl, ms=4)
    axes[2].set(xlabel="mean confidence in the bin", ylabel="accuracy in the bin",
                title="reliability (bins with 5+ images)", xlim=(0.2, 1.02), ylim=(0.2, 1.02))
    axes[2].legend(fontsize=8)
    names = list(summary)
    x = np.arange(len(names))
    for off, key, name, color in ((-0.2, "accuracy", "test accuracy", "0.35"),
                                  (0.0, "mean_confidence", "mean confidence", "C4"),
                                  (0.2, "mean_p_true", "mean p(true class)", "C9")):
        axes[3].bar(x + off, [100 * summary[n][key]["mean"] for n in names], 0.2, color=color,
                    yerr=[100 * summary[n][key]["std"] for n in names], capsize=3, label=name)
    lo = min(100 * summary[n][k]["mean"] for n in names
             for k in ("accuracy", "mean_confidence", "mean_p_true"))
    axes[3].set(xticks=x, ylabel="% (mean ± std over seeds)", ylim=(max(lo - 5, 0), 100),
                title="accuracy vs confidence")
    axes[3].set_xticklabels([n.replace("label smoothing", "smoothing") for n in names],
                            fontsize=8)
    axes[3].legend(fontsize=8, loc="lower left")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Cross-entropy and label smoothing on {args.dataset} ({args.seeds} seeds, "
                 f"{args.epochs} epochs; test split)")
    C.save(fig, args, "ablate_loss.png")


if __name__ == "__main__":
    main()
