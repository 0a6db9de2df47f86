"""What the experiment scripts share: arguments, the sweep call, tables and plots.

Each script describes its study (the variants, the epochs, the seeds) and
calls :func:`sweep`; the training itself is :func:`jaxcnn.experiment.run_sweep`.
Results go to ``<out>/<name>.json`` (config, seeds, versions, every cell and the
per-variant mean and std), ``<name>.csv``, ``<name>.md`` (the table quoted in
``docs/experiments.md``) and ``<name>*.png``. ``<out>`` is a fresh directory,
``runs/experiments/<name>-<YYYYmmdd-HHMMSS>/``, unless ``--out`` names one: the
committed results are regenerated with ``--out docs/experiments``, so that
trying a script out never overwrites them. The run directories of the cells go
to ``runs/experiments/<name>/``, so an interrupted study resumes where it
stopped.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from jaxcnn import provenance  # noqa: E402
from jaxcnn.config import Config, override  # noqa: E402
from jaxcnn.experiment import SweepResult, run_sweep  # noqa: E402

# The committed results: a script writes here only when given --out docs/experiments.
OUT = os.path.join(ROOT, "docs", "experiments")
RUNS = os.path.join(ROOT, "runs", "experiments")

# The seed model's layers with each choice an ablation varies made a parameter.
SEED_SPEC = ("conv({f1},{k},same) {pool1} dropout({d1}) conv({f2},{k},same) {pool2} "
             "dropout({d1}) {head} {dense} dropout({d2}) softmax")


def seed_spec(f1=32, f2=64, k=3, pool1="maxpool(2)", pool2="maxpool(2)", d1=0.25, d2=0.5,
              head="flatten", dense="dense(128,relu)") -> str:
    """The default model (``seed_cnn``) as spec text, with one part replaced."""
    return SEED_SPEC.format(f1=f1, f2=f2, k=k, pool1=pool1, pool2=pool2, d1=d1, d2=d2, head=head,
                            dense=dense)


def fresh_out(name: str) -> str:
    """A new results directory for one run of a script: ``runs/experiments/<name>-<time>/``.

    The default ``--out`` of every script, so that only an explicit
    ``--out docs/experiments`` replaces the committed results.
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RUNS, f"{name}-{stamp}")
    n = 1
    while os.path.exists(path):  # two runs started within the same second
        n += 1
        path = os.path.join(RUNS, f"{name}-{stamp}-{n}")
    return path


def script_name() -> str:
    """The running script's name without ``.py`` (``ablate_lr``)."""
    return os.path.splitext(os.path.basename(sys.argv[0]))[0] or "experiment"


class _Parser(argparse.ArgumentParser):
    """Fills in the default ``--out`` (a fresh directory) and says where results go."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        if getattr(ns, "out", "") is None:
            ns.out = fresh_out(script_name())
        if getattr(ns, "out", None):
            os.makedirs(ns.out, exist_ok=True)
            where = os.path.relpath(os.path.abspath(ns.out), ROOT)
            hint = ("" if os.path.abspath(ns.out) == OUT else
                    " (pass --out docs/experiments to replace the committed results)")
            print(f"results go to {where}/{hint}", file=sys.stderr)
        return ns, rest


def out_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with only ``--out``, for scripts that train nothing (see :func:`parser`)."""
    p = _Parser(description=doc.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog=doc)
    p.add_argument("--out", default=None,
                   help="where results and plots go (default: a fresh directory "
                        "runs/experiments/<script>-<time>/; --out docs/experiments "
                        "replaces the committed results)")
    return p


def parser(doc: str, *, epochs: int, seeds: int = 3) -> argparse.ArgumentParser:
    """The arguments every study takes.

    ``--out`` defaults to :func:`fresh_out` (a new ``runs/experiments/<script>-<time>/``),
    chosen and printed when the arguments are parsed.
    """
    p = out_parser(doc)
    p.add_argument("--dataset", default="digits",
                   help="dataset name (default digits; any prepared dataset, e.g. mnist)")
    p.add_argument("--data-dir", default=None, help="where prepared datasets live")
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs per run (default {epochs})")
    p.add_argument("--seeds", type=int, default=seeds, help=f"seeds per variant (default {seeds})")
    p.add_argument("--runs", default=RUNS, help="run directories (resumable; default runs/experiments)")
    p.add_argument("--progress", action="store_true", help="show each run's progress bar")
    return p


def library_defaults(args) -> Config:
    """The library's own defaults (what ``jaxcnn train`` runs), on one device, without
    checkpoints, with the common arguments applied: the base of the default-recipe studies.
    """
    return override(Config(), {"data.dataset": args.dataset, "data.data_dir": args.data_dir,
                               "train.epochs": args.epochs, "train.num_devices": 1,
                               "checkpoint.enabled": False})


def base_config(args, **updates) -> Config:
    """The default config with the common arguments and ``updates`` applied."""
    # Pinned rather than inherited from the defaults, so a study means the same thing
    # whatever the library's defaults become.
    cfg = override(Config(), {"data.dataset": args.dataset, "data.data_dir": args.data_dir,
                              "train.epochs": args.epochs, "train.num_devices": 1,
                              "data.validation_fraction": 0.0, "data.batch_size": 32,
                              "optimizer.name": "adam", "optimizer.learning_rate": 1e-3,
                              "optimizer.schedule": "constant", "model.name": "seed_cnn",
                              # The studies predate the default recipe's shifts and label
                              # smoothing (docs/experiments.md, "The default recipe").
                              "data.augment": False, "train.label_smoothing": 0.0})
    if "checkpoint" in cfg.to_dict():
        # A study's runs are short and resumable per cell; checkpoints would only cost time.
        cfg = override(cfg, {"checkpoint.enabled": False})
    return override(cfg, {k.replace("__", "."): v for k, v in updates.items()})


def sweep(name: str, args, base: Config, variants: dict[str, dict], *,
          description: str, eval_train: bool = False, seeds: int | None = None,
          runs_name: str | None = None, dataset=None) -> tuple[SweepResult, list[dict]]:
    """Runs (or resumes) one study and writes its JSON and CSV.

    Args:
      name: the study's name (file names).
      args: the parsed arguments.
      base: the config every variant starts from.
      variants: label -> dotted-key overrides.
      description: one line for the JSON.
      eval_train: evaluate the training split without dropout each epoch.
      seeds: run seeds 0..seeds-1 (default ``args.seeds``).
      runs_name: the run directory's name under ``args.runs`` (default ``name``);
        studies sharing one reuse each other's finished cells.
      dataset: a loaded :class:`~jaxcnn.data.Dataset` to use instead of ``data.dataset``.

    Returns:
      The result and its aggregate rows, each with its ``label``.
    """
    log = logging.getLogger("jaxcnn")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    labels = list(variants)
    points = [variants[label] for label in labels]
    seeds = args.seeds if seeds is None else seeds
    result = run_sweep(base, points, list(range(seeds)), os.path.join(args.runs, runs_name or name),
                       progress=args.progress, eval_train=eval_train, dataset=dataset)
    agg = result.aggregate()
    for label, row in zip(labels, agg):
        row["label"] = label
    for row in result.rows:
        row["label"] = labels[points.index(row["point"])]
    os.makedirs(args.out, exist_ok=True)
    result.write_json(os.path.join(args.out, f"{name}.json"), name=name, description=description,
                      labels=labels, command=" ".join([os.path.relpath(sys.argv[0], ROOT)]
                                                      + sys.argv[1:]),
                      cell_seconds=sum(r.get("total_seconds", 0.0) for r in result.rows))
    result.write_csv(os.path.join(args.out, f"{name}.csv"))
    return result, agg


def add_to_json(args, name: str, **entries) -> None:
    """Adds top-level entries (e.g. extra measurements) to ``<name>.json``."""
    import json

    path = os.path.join(args.out, f"{name}.json")
    with open(path) as f:
        data = json.load(f)
    data.update(entries)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")


def fmt_pct(row, metric="test_accuracy") -> str:
    """``98.9 ± 0.3`` (percent, mean ± std over seeds); ``diverged`` when every seed did."""
    if f"{metric}_mean" not in row:
        return "diverged"
    return f"{100 * row[f'{metric}_mean']:.1f} ± {100 * row[f'{metric}_std']:.1f}"


def fmt_num(x, digits=3) -> str:
    """A number with thousands separators, or a short float."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)) or float(x).is_integer() and abs(x) >= 100:
        return f"{int(x):,}"
    return f"{x:.{digits}g}"


def write_table(name: str, args, header: list[str], rows: list[list[str]],
                note: str = "") -> str:
    """Writes ``<name>.md`` (a Markdown table) and prints it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    if note:
        text += "\n" + note + "\n"
    path = os.path.join(args.out, f"{name}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    return path


def pyplot():
    """matplotlib's pyplot, drawing off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, args, filename: str) -> str:
    """Saves a figure into the output directory and closes it."""
    path = os.path.join(args.out, filename)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    print("wrote", os.path.relpath(path, ROOT))
    return path


def mean_curve(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std over seeds of one per-epoch metric (NaN where a seed stopped)."""
    longest = max(len(r["history"]) for r in rows)
    values = np.full((len(rows), longest), np.nan)
    for i, r in enumerate(rows):
        for j, rec in enumerate(r["history"]):
            if rec.get(key) is not None:
                values[i, j] = rec[key]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.arange(1, longest + 1), np.nanmean(values, 0), np.nanstd(values, 0)


def rows_of(result: SweepResult, label: str) -> list[dict]:
    """The cells of one variant."""
    return [r for r in result.rows if r["label"] == label]


def environment_line() -> str:
    """``jax 0.x, flax 0.x, optax 0.x on cpu (N cores)``, for the tables."""
    v, d = provenance.versions(), provenance.device_info()
    return (f"jax {v['jax']}, flax {v['flax']}, optax {v['optax']}; {d['backend']} "
            f"({d['device_kind']}, {d['cpu_count']} cores)")


def time_steps(specs: dict[str, "str | tuple[str, str]"], dataset: str, batch_size: int = 32,
               steps: int = 20, rounds: int = 7) -> dict[str, dict]:
    """Training throughput of each model, measured side by side in this process.

    ``specs`` maps a label to spec text, or to ``(spec text, impl)`` to pick the
    convolution/pooling implementation (see jaxcnn.ops). Each model's jitted
    train step is compiled and warmed up first; then every
    round times ``steps`` steps of each model in turn (interleaved, so a burst of
    load from other jobs hits all of them), waiting for the device before reading
    the clock. Returns the median and the quartiles of images/s over rounds.
    """
    import time

    import jax
    import numpy as np

    import jaxcnn
    from jaxcnn.training import make_optimizer, split_keys, train_step

    ds = jaxcnn.load_dataset(dataset)
    pre = jaxcnn.Preprocess.fit(ds.train.images)
    batch = {"image": pre(ds.train.images[:batch_size]), "label": ds.train.labels[:batch_size]}
    batch = jax.device_put(batch)
    keys = split_keys(0)
    runs = {}
    for label, spec in specs.items():
        spec, impl = spec if isinstance(spec, tuple) else (spec, "auto")
        state = jaxcnn.create_train_state(jaxcnn.build_model(spec, ds.num_classes, impl=impl),
                                          ds.image_shape,
                                          make_optimizer(jaxcnn.OptimizerConfig(), 1000),
                                          keys.init)
        step = jax.jit(train_step, donate_argnums=0,
                       compiler_options=jaxcnn.ops.compiler_options(impl))
        for _ in range(3):  # compile and warm up
            state, m = step(state, batch, keys.dropout)
        jax.block_until_ready(state)
        runs[label] = [step, state, []]
    for _ in range(rounds):
        for label, run in runs.items():
            step, state, rates = run
            t0 = time.perf_counter()
            for _ in range(steps):
                state, m = step(state, batch, keys.dropout)
            jax.block_until_ready(state)
            rates.append(steps * batch_size / (time.perf_counter() - t0))
            run[1] = state
    return {label: {"median": float(np.median(r)), "q1": float(np.percentile(r, 25)),
                    "q3": float(np.percentile(r, 75)), "rounds": rounds, "steps": steps,
                    "batch_size": batch_size}
            for label, (_, _, r) in runs.items()}


def save_figure(fig, path: str) -> str:
    """Lays out, saves (110 dpi) and closes a matplotlib figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
