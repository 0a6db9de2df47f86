"""BatchNorm on the digits: a small ResNet trains, evaluates with running statistics, and
those statistics match the training data.

Four runs of 15 epochs on the 1,437 embedded 8x8 training digits, seeds 0..N-1, each
with the default recipe of `jaxcnn train` (Adam 1e-3, batch 32, 1-pixel shifts, label
smoothing 0.1) and a constant learning rate or ("cosine decay") a cosine decay to 0:

  * resnet: ``resnet_spec((1, 1), bottleneck=False, stem="cifar", widths=(16, 32))``, a 3x3
    stem convolution and two basic residual blocks (16 and 32 channels, the second strided
    with a 1x1 projection shortcut), every convolution followed by batch norm (momentum
    0.9, Flax's convention), then global average pooling and softmax; 19,706 parameters
    on 8x8x1;
  * resnet without BN: the same layers with every batch norm removed (the convolutions
    get biases instead); 19,562 parameters.

Per seed it records the test accuracy after every epoch (evaluation mode), and at the end:

  * test accuracy four ways: evaluation mode (the running statistics: the real one);
    evaluation mode with every batch norm's statistics recomputed on the unshifted
    training images ("recalibrated"); batch norm in train mode with the batch statistics
    of the whole 360-image test split as one batch; and of batches of 8 test images (what
    forgetting evaluation mode costs: a prediction then depends on the rest of its batch);
  * for every batch norm layer, its running mean and variance against what they
    estimate: the average over 128 batches of 32 (drawn from the training images at all
    9 one-pixel shifts, the augmentation's distribution) of each batch's statistics of
    the layer's input, with the final parameters. The model computes them itself: a
    train-mode pass with the running statistics set to 0 and once to 1 gives each
    layer's momentum m and batch statistic b from ``new = m * old + (1 - m) * b``. The
    error of a running mean is |running - target mean| / target std per channel, and it
    is set against the sampling noise an exponential average of batch means has (std of
    one batch's mean x sqrt((1 - m) / (1 + m))) and against the initial statistics.

Command:   python experiments/resnet_digits.py --out docs/experiments
Hardware:  2 shared CPU cores, no GPU.
Run time:  about 2-3.5 minutes (12 runs of 15 epochs, 6-28 s each with compilation;
           3.5 minutes measured on a machine loaded by other jobs).
Expected:  measured (docs/experiments/resnet_digits.md): test accuracy 98.43 ± 0.16 % for
           the resnet (98.70 ± 0.70 % with cosine decay) against 94.35 ± 1.70 % (91.85 ±
           1.97 %) without BN; batch statistics of batches of 8 lose 1.4-3.7 points. With
           the cosine decay each layer's running mean is within 0.001-0.004 std (median
           over channels) of its target, inside the sampling noise (0.002-0.007); with the
           constant rate the deeper layers lag by 0.015-0.020 std (the parameters still
           move); the initial statistics are 0.04-0.58 std off.

Writes <out>/resnet_digits.{json,csv,md,png}; <out> is a fresh
runs/experiments/resnet_digits-<time>/ unless --out is given (--out docs/experiments
replaces the committed results). --variants picks some of the four models (resnet,
resnet-cosine, no-bn, no-bn-cosine), for quick checks.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

import _common as C

from jaxcnn.models import resnet_spec  # noqa: E402

RESNET = resnet_spec((1, 1), bottleneck=False, stem="cifar", widths=(16, 32))


def without_batch_norm(spec: str) -> str:
    """The spec with every batch norm removed; ``bn(relu)`` keeps its ReLU, and the
    bias-free convolutions (a bias before batch norm is redundant) get biases back."""
    spec = re.sub(r"\bbn\((\w+)\)", r"\1", spec)   # bn(relu) -> relu
    spec = re.sub(r"\s*\bbn\b(?!\()", "", spec)      # a bare bn -> nothing
    return spec.replace("bias=false", "bias=true")


# Label -> config overrides of the default recipe.
COSINE = {"optimizer.schedule": "warmup_cosine"}  # linear warm-up 0 steps, cosine decay to 0
VARIANTS = {
    "resnet": {"model.name": RESNET},
    "resnet, cosine decay": {"model.name": RESNET, **COSINE},
    "resnet without BN": {"model.name": without_batch_norm(RESNET)},
    "resnet without BN, cosine decay": {"model.name": without_batch_norm(RESNET), **COSINE},
}
# Short names for --variants.
SHORT = dict(zip(("resnet", "resnet-cosine", "no-bn", "no-bn-cosine"), VARIANTS))


def _callback_class():
    from jaxcnn.training import Callback, evaluate

    class Watch(Callback):
        """Test accuracy after every epoch; keeps the final state."""

        def __init__(self, test, preprocess):
            self.test, self.preprocess = test, preprocess
            self.test_accuracy: list[float] = []
            self.state = None

        def on_epoch_end(self, state, record):
            self.test_accuracy.append(evaluate(state, self.test, self.preprocess, 500)["accuracy"])

        def on_train_end(self, state, history):
            self.state = state

    return Watch


def batch_stat_accuracy(state, images, labels, batch_size: int) -> float:
    """Test accuracy with batch norm in train mode: each batch normalised by its own statistics."""
    import jax

    @jax.jit
    def predict(variables, x):
        logits, _ = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
        return logits.argmax(-1)

    correct = 0
    for start in range(0, len(labels), batch_size):
        pred = np.asarray(predict(state.variables(), images[start:start + batch_size]))
        correct += int((pred == labels[start:start + batch_size]).sum())
    return correct / len(labels)


def _flat_stats(tree, prefix=()) -> dict:
    """``{"residual_1/batch_norm_1": {"mean": ..., "var": ...}, ...}`` from a batch_stats tree."""
    out = {}
    for k, v in tree.items():
        if "mean" in v and "var" in v and not hasattr(v["mean"], "items"):
            out["/".join(prefix + (k,))] = v
        else:
            out |= _flat_stats(v, prefix + (k,))
    return out


def _unflat_stats(flat: dict) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = {"mean": v["mean"], "var": v["var"]}
    return tree


def stats_function(state):
    """A jitted ``images -> {layer: {"mean", "var", "momentum"}}``: each batch norm layer's
    momentum and the mean and variance of its input over ``images`` (one batch).

    Runs the model in train mode twice, with every running statistic set to 0 and then to
    1: ``new = m * old + (1 - m) * b`` gives m (= new_1 - new_0) and b (= new_0 / (1 - m)).
    """
    import jax
    import jax.numpy as jnp

    @jax.jit
    def stats(params, batch_stats, images):
        def updated(fill):
            filled = jax.tree.map(lambda a: jnp.full_like(a, fill), batch_stats)
            _, upd = state.apply_fn({"params": params, "batch_stats": filled}, images,
                                    train=True, mutable=["batch_stats"])
            return upd["batch_stats"]

        new0, new1 = updated(0.0), updated(1.0)
        m = jax.tree.map(lambda a, b: b - a, new0, new1)
        return jax.tree.map(lambda a, mm: a / (1 - mm), new0, m), m

    def run(images):
        b, m = stats(state.params, state.batch_stats, images)
        b, m = _flat_stats(b), _flat_stats(m)
        return {layer: {"mean": np.asarray(b[layer]["mean"], np.float64),
                        "var": np.asarray(b[layer]["var"], np.float64),
                        "momentum": float(np.median(np.asarray(m[layer]["mean"])))}
                for layer in b}

    return run


def shifted_copies(images: np.ndarray, p: int) -> np.ndarray:
    """Every image at every shift the training augmentation draws: a crop of the image
    after ``p`` pixels of zero padding at each of the (2p+1)^2 offsets."""
    n, h, w, c = images.shape
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    return np.concatenate([padded[:, i:i + h, j:j + w] for i in range(2 * p + 1)
                           for j in range(2 * p + 1)])


def compare_statistics(running: dict, target: dict, whole: dict, plain: dict,
                       noise: dict) -> list[dict]:
    """Per layer: how far the running statistics (and the initial ones) are from the data's.

    ``target``: the average over training-size batches of the shifted training images of
    each batch's statistics (train mode): what the running averages estimate. ``whole``:
    the statistics of all shifted images as one batch (earlier layers normalised by the
    whole set's statistics rather than each batch's); ``plain``: of the unshifted training
    images as one batch; ``noise``: per channel, the spread of a running mean expected
    from sampling alone.
    """
    rows = []

    def errors(ref):
        r_mean = np.asarray(running[layer]["mean"], np.float64)
        r_var = np.asarray(running[layer]["var"], np.float64)
        return (np.abs(r_mean - ref["mean"]) / np.sqrt(ref["var"]),
                np.abs(r_var / ref["var"] - 1))

    for layer, d in target.items():
        mean_err, var_err = errors(d)
        whole_mean_err, _ = errors(whole[layer])
        plain_mean_err, plain_var_err = errors(plain[layer])
        std = np.sqrt(d["var"])
        rows.append({"layer": layer, "channels": int(mean_err.size), "momentum": d["momentum"],
                     "mean_err_max": float(mean_err.max()),
                     "mean_err_median": float(np.median(mean_err)),
                     "var_err_max": float(var_err.max()),
                     "var_err_median": float(np.median(var_err)),
                     "expected_mean_noise_median": float(np.median(noise[layer])),
                     "whole_batch_mean_err_median": float(np.median(whole_mean_err)),
                     "unshifted_mean_err_median": float(np.median(plain_mean_err)),
                     "unshifted_var_err_median": float(np.median(plain_var_err)),
                     "init_mean_err_median": float(np.median(np.abs(d["mean"]) / std)),
                     "init_var_err_median": float(np.median(np.abs(1 / d["var"] - 1)))})
    return rows


def batch_norm_check(state, ds, pre, crop_padding: int, batch_size: int, seed: int,
                     batches: int = 128) -> dict:
    """The running statistics against the training data's, and test accuracy with BN in
    train mode and with the statistics recomputed on the unshifted training images."""
    from jaxcnn.training import evaluate

    stats = stats_function(state)
    train_x = np.asarray(pre(ds.train.images))
    shifted = np.asarray(pre(shifted_copies(ds.train.images, crop_padding)))
    plain, whole = stats(train_x), stats(shifted)
    # What the running averages estimate: the mean over training batches of each batch's
    # statistics (each layer's input computed with the earlier layers normalised by the
    # batch's own statistics, as in training). Their sampling noise: the spread of one
    # batch's mean times sqrt((1 - m) / (1 + m)), the EMA's share of one sample's variance.
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(shifted))
    per_batch = [stats(shifted[order[i * batch_size:(i + 1) * batch_size]])
                 for i in range(min(batches, len(order) // batch_size))]
    target, noise = {}, {}
    for layer, w in whole.items():
        means = np.array([b[layer]["mean"] for b in per_batch])
        target[layer] = {"mean": means.mean(0),
                         "var": np.mean([b[layer]["var"] for b in per_batch], axis=0),
                         "momentum": w["momentum"]}
        m = w["momentum"]
        noise[layer] = (means.std(0) / np.sqrt(target[layer]["var"])
                        * np.sqrt((1 - m) / (1 + m)))
    layers = compare_statistics(_flat_stats(state.batch_stats), target, whole, plain, noise)
    recal = state.replace(batch_stats=_unflat_stats(
        {k: {"mean": v["mean"].astype(np.float32), "var": v["var"].astype(np.float32)}
         for k, v in plain.items()}))
    test_x = np.asarray(pre(ds.test.images))
    return {
        "bn_layers": layers,
        "bn_mean_err_max": max(r["mean_err_max"] for r in layers),
        "bn_mean_err_median": float(np.median([r["mean_err_median"] for r in layers])),
        "bn_var_err_median": float(np.median([r["var_err_median"] for r in layers])),
        "bn_expected_mean_noise_median": float(np.median(
            [r["expected_mean_noise_median"] for r in layers])),
        "bn_init_mean_err_median": float(np.median([r["init_mean_err_median"] for r in layers])),
        "test_accuracy_batch_stats_whole_split": batch_stat_accuracy(
            state, test_x, ds.test.labels, len(ds.test)),
        "test_accuracy_batch_stats_batches_of_8": batch_stat_accuracy(
            state, test_x, ds.test.labels, 8),
        "test_accuracy_recalibrated_unshifted": evaluate(recal, ds.test, pre, 500)["accuracy"],
    }


def run_one(label: str, overrides: dict, seed: int, args, ds, workdir: str) -> dict:
    from jaxcnn.config import override
    from jaxcnn.data import Preprocess, resolve_augment
    from jaxcnn.run import train_and_evaluate

    cfg = override(C.library_defaults(args), {**overrides, "train.seed": seed})
    pre = Preprocess.fit(ds.train.images, normalize=cfg.data.normalize)
    watch = _callback_class()(ds.test, pre)
    t0 = time.perf_counter()
    summary = train_and_evaluate(cfg, workdir, dataset=ds, progress=args.progress,
                                 callbacks=[watch])
    wall = time.perf_counter() - t0
    state = watch.state
    history = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
    row = {"label": label, "seed": seed, "test_accuracy": summary["test_accuracy"],
           "test_loss": summary["test_loss"], "train_seconds": summary["train_seconds"],
           "wall_seconds": wall, "params": summary["params"],
           "final_train_loss": history[-1]["loss"] if history else None,
           "test_accuracy_per_epoch": watch.test_accuracy,
           "has_batch_norm": bool(state.batch_stats)}
    if state.batch_stats:
        aug = resolve_augment(cfg.data.augment, ds.image_shape, cfg.data.crop_padding,
                              cfg.data.flip)
        row |= batch_norm_check(state, ds, pre, aug.crop_padding if aug else 0,
                                cfg.data.batch_size, seed)
    return row


def main(argv=None):
    p = C.parser(__doc__, epochs=15, seeds=3)
    p.add_argument("--variants", default=",".join(SHORT),
                   help=f"comma-separated models to run (default all: {','.join(SHORT)})")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in SHORT]
    if unknown or not names:
        p.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(SHORT)}")
    labels = [SHORT[v] for v in names]
    from jaxcnn import compilation_cache
    from jaxcnn.data import load_dataset

    compilation_cache.enable_compilation_cache()  # as the jaxcnn command does
    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            overrides = VARIANTS[label]
            for seed in range(args.seeds):
                workdir = os.path.join(tmp, f"{re.sub(r'[^a-z]+', '_', label)}-s{seed}")
                row = run_one(label, overrides, seed, args, ds, workdir)
                extra = (f", running means within {row['bn_mean_err_median']:.3f} std "
                         f"(median) of the data's" if row["has_batch_norm"] else "")
                print(f"{label} seed {seed}: test {100 * row['test_accuracy']:.2f} %, "
                      f"{row['wall_seconds']:.1f} s{extra}", flush=True)
                rows.append(row)
    total = time.perf_counter() - t0
    write_results(args, rows, total)


def _mean_std(values):
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def write_results(args, rows: list[dict], total_seconds: float) -> None:
    name = "resnet_digits"
    os.makedirs(args.out, exist_ok=True)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    summary = {}
    for label in labels:
        cells = [r for r in rows if r["label"] == label]
        s = {"n": len(cells)}
        for key in ("test_accuracy", "test_accuracy_recalibrated_unshifted",
                    "test_accuracy_batch_stats_whole_split",
                    "test_accuracy_batch_stats_batches_of_8", "train_seconds", "wall_seconds",
                    "bn_mean_err_max", "bn_mean_err_median", "bn_var_err_median",
                    "bn_expected_mean_noise_median", "bn_init_mean_err_median"):
            vals = [c[key] for c in cells if c.get(key) is not None]
            if vals:
                s[f"{key}_mean"], s[f"{key}_std"] = _mean_std(vals)
                s[f"{key}_min"], s[f"{key}_max"] = float(min(vals)), float(max(vals))
        s["params"] = cells[0]["params"]
        summary[label] = s
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump({"name": name,
                   "description": "a small ResNet with and without BatchNorm on digits; "
                                  "running statistics against the training data's",
                   "command": " ".join(["experiments/resnet_digits.py", *sys.argv[1:]]),
                   "dataset": args.dataset, "epochs": args.epochs, "seeds": args.seeds,
                   "variants": {label: VARIANTS[label] for label in labels},
                   "config": C.library_defaults(args).to_dict(),
                   "summary": summary, "rows": rows, "total_seconds": total_seconds,
                   "versions": C.provenance.versions(), "device": C.provenance.device_info()},
                  f, indent=1, default=float)
        f.write("\n")
    keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (list, dict))))
    with open(os.path.join(args.out, f"{name}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def pct(s, key):
        if f"{key}_mean" not in s:
            return "-"
        return f"{100 * s[f'{key}_mean']:.2f} ± {100 * s[f'{key}_std']:.2f}"

    table = []
    for label, s in summary.items():
        per_seed = ", ".join(f"{100 * r['test_accuracy']:.1f}" for r in rows if r["label"] == label)
        table.append([label, f"{s['params']:,}", s["n"], pct(s, "test_accuracy"), per_seed,
                      pct(s, "test_accuracy_recalibrated_unshifted"),
                      pct(s, "test_accuracy_batch_stats_whole_split"),
                      pct(s, "test_accuracy_batch_stats_batches_of_8"),
                      f"{s['train_seconds_mean']:.1f}"])
    layer_table = []

    def mean_of(per, key, digits=3):
        return f"{np.mean([x[key] for x in per]):.{digits}f}"

    for label in labels:
        bn_rows = [r for r in rows if r["label"] == label and r.get("bn_layers")]
        for i, layer in enumerate(bn_rows[0]["bn_layers"] if bn_rows else []):
            per = [r["bn_layers"][i] for r in bn_rows]
            layer_table.append(
                f"| {label} | {layer['layer']} | {layer['channels']} | {layer['momentum']:.2f} | "
                f"{mean_of(per, 'mean_err_median')} | {max(x['mean_err_max'] for x in per):.3f} | "
                f"{mean_of(per, 'expected_mean_noise_median')} | "
                f"{mean_of(per, 'var_err_median')} | "
                f"{mean_of(per, 'whole_batch_mean_err_median')} | "
                f"{mean_of(per, 'unshifted_mean_err_median')} | "
                f"{mean_of(per, 'unshifted_var_err_median')} | "
                f"{mean_of(per, 'init_mean_err_median')} | {mean_of(per, 'init_var_err_median')} |")
    note = (f"{args.dataset}, {args.epochs} epochs, seeds 0-{args.seeds - 1}, the default recipe "
            f"(Adam 1e-3, batch 32, 1-pixel shifts, label smoothing 0.1; constant learning rate, "
            f"or with 'cosine decay' a cosine decay to 0 over the run); test accuracy % as mean "
            f"± std over seeds. Running stats: evaluation mode, the real test accuracy. "
            f"Recalibrated: evaluation mode with each batch norm's statistics recomputed on the "
            f"unshifted training images. Batch stats: batch norm in train mode on the test "
            f"images (the whole 360-image split as one batch, or batches of 8). Train s: "
            f"training time per run on a machine shared with other jobs; whole study "
            f"{total_seconds:.0f} s; " + C.environment_line())
    if layer_table:
        note += ("\n\nRunning statistics of each batch norm layer of the resnet at the end of "
                 "training against what they estimate: the average, over 128 batches of 32 "
                 "drawn from the training distribution the running averages saw (the 1,437 "
                 "training images at each of the 9 one-pixel shifts of the augmentation), of "
                 "each batch's statistics of that layer's input (train mode, final "
                 "parameters). Averaged over seeds (max: the largest over seeds and channels). "
                 "Mean err: |running - target mean| / target std per channel, median over the "
                 "layer's channels; expected noise: the median spread of a running mean from "
                 "sampling alone (std of one batch's mean x sqrt((1 - m) / (1 + m))); var err: "
                 "|running / target variance - 1|, median over channels; whole split: the mean "
                 "err against all shifted images as one batch (earlier layers then normalised "
                 "by whole-set statistics, not per batch); unshifted: against the unshifted "
                 "training images as one batch; init: the initial statistics (mean 0, variance "
                 "1) against the target, for scale.\n\n"
                 "| model | layer | channels | momentum | mean err | mean err (max) | "
                 "expected noise | "
                 "var err | whole split mean err | unshifted mean err | unshifted var err | "
                 "init mean err | init var err |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
                 + "\n".join(layer_table))
    C.write_table(name, args, ["model", "params", "seeds", "test accuracy % (running stats)",
                               "per seed", "recalibrated %", "batch stats, whole split %",
                               "batch stats, batches of 8 %", "train s / run"], table, note=note)

    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, label in enumerate(labels):
        curves = np.array([r["test_accuracy_per_epoch"] for r in rows if r["label"] == label])
        epochs = np.arange(1, curves.shape[1] + 1)
        for c in curves:
            ax.plot(epochs, 100 * c, color=f"C{i}", alpha=0.35, lw=1)
        ax.plot(epochs, 100 * curves.mean(0), color=f"C{i}", lw=2, label=f"{label} (mean)")
    ax.set(xlabel="epoch", ylabel="test accuracy % (eval mode)", ylim=(80, 100),
           title=f"{args.dataset}: ResNet with and without BatchNorm, seeds 0-{args.seeds - 1}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    C.save(fig, args, f"{name}.png")


if __name__ == "__main__":
    main()
