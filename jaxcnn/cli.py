"""The ``jaxcnn`` command (also ``python -m jaxcnn``).

The only module that parses arguments. Each subcommand is a thin driver over
the library: ``train`` calls :func:`jaxcnn.run.train_and_evaluate`,
``summary`` calls :func:`jaxcnn.models.summary`.

Exit codes: 0 success; 2 bad input (a one-line message on stderr, no
traceback); 3 training diverged (NaN/Inf loss); 75 training preempted by
SIGTERM/SIGINT after saving a checkpoint (run the same command again to
resume; 75 is EX_TEMPFAIL, "try again later"); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from jaxcnn.compilation_cache import enable_compilation_cache
from jaxcnn.errors import JaxcnnError, NonFiniteLossError

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3
EXIT_PREEMPTED = 75

log = logging.getLogger("jaxcnn")


def _print_json(obj) -> None:
    """Prints one JSON object as the last line of stdout (for scripts)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# help: every option shows its real default


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to an option's help, except where the help already
    says its default, the default is None or empty (the help then says what
    happens without the option), or the option is a switch (``--json``)."""

    def _get_help_string(self, action):
        text = action.help or ""
        late = getattr(action, "late_default", None)  # computed only when the help is shown
        if late is not None:
            return f"{text} (default: {late()})".replace("%", "%%")
        if ("(default" in text or action.default is None or action.default == []
                or action.nargs == 0):
            return text
        return super()._get_help_string(action)


def _config_default(key: str, shown: dict | None = None) -> str:
    """``(default: VALUE, KEY)`` for a help line: config key ``KEY``'s default in
    :class:`~jaxcnn.config.Config` (read when the parser is built, never written
    down twice). ``shown`` spells a value the way its flag takes it.

    Example:
      >>> from jaxcnn.config import Config
      >>> _config_default("train.epochs") == f"(default: {Config().train.epochs}, train.epochs)"
      True
      >>> _config_default("train.num_devices", {None: "all local devices"})
      '(default: all local devices, train.num_devices)'
    """
    from jaxcnn.config import Config

    section, field = key.split(".")
    value = getattr(getattr(Config(), section), field)
    if shown and value in shown:
        value = shown[value]
    # Help text goes through %-formatting.
    return f"(default: {value}, {key})".replace("%", "%%")


def _version() -> str:
    """``jaxcnn X.Y.Z`` and the versions it runs on, for ``jaxcnn --version``.

    The installed distribution's version (``importlib.metadata``); from a source
    checkout that is not installed, the version in its ``pyproject.toml``.
    """
    import importlib.metadata
    import os
    import platform
    import re

    import jax

    try:
        version = importlib.metadata.version("jaxcnn")
        where = ""
    except importlib.metadata.PackageNotFoundError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        version = None
        try:
            with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
                m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
            version = m.group(1) if m else None
        except OSError:
            pass
        if version is None:
            from jaxcnn import __version__ as version
        where = f" (not installed; source at {root})"
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        jaxlib = "unknown"
    return (f"jaxcnn {version}{where}\njax {jax.__version__}, jaxlib {jaxlib}, "
            f"Python {platform.python_version()}")


class _VersionAction(argparse.Action):
    """``--version``: prints :func:`_version` and exits 0 (JAX is not started)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


# ---------------------------------------------------------------------------
# train


def _add_model_args(p: argparse.ArgumentParser, default: str) -> None:
    """``--model`` or ``--spec``; ``default`` is the help's ``(default: ...)``."""
    from jaxcnn.models import ZOO

    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", metavar="NAME",
                   help=f"zoo model: {', '.join(ZOO)} {default}")
    g.add_argument("--spec", metavar="TEXT",
                   help="model spec text, e.g. 'conv(32,3) maxpool(2) flatten softmax' "
                        "(grammar: docs/models.md)")


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    """The multi-process flags (docs/distributed.md); each has a ``JAXCNN_*`` variable."""
    g = p.add_argument_group(
        "multi-process (one jaxcnn process per host or GPU, on jax.distributed; "
        "docs/distributed.md)")
    g.add_argument("--distributed", choices=("auto", "on", "off"),
                   help="start JAX's distributed runtime: auto does when --coordinator or a "
                        "multi-process SLURM, Open MPI or Cloud TPU job is found; on always "
                        "(JAX detects the cluster); off never (default: auto; "
                        "$JAXCNN_DISTRIBUTED)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="process 0's address, the same on every process (default: none; "
                        "$JAXCNN_COORDINATOR)")
    g.add_argument("--num-processes", type=int, metavar="N",
                   help="processes in the job (default: 1; $JAXCNN_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I",
                   help="this process's index, 0 to N-1 (default: 0; $JAXCNN_PROCESS_ID)")
    g.add_argument("--distributed-timeout", type=float, metavar="SECONDS",
                   help="how long to wait for the coordinator and every process to join "
                        "(default: 120; $JAXCNN_DISTRIBUTED_TIMEOUT)")


def _start_processes(args: argparse.Namespace):
    """Joins the job the multi-process flags describe (before any device is touched)."""
    from jaxcnn import distributed

    info = distributed.initialize(
        getattr(args, "distributed", None), coordinator=getattr(args, "coordinator", None),
        num_processes=getattr(args, "num_processes", None),
        process_id=getattr(args, "process_id", None),
        timeout_seconds=getattr(args, "distributed_timeout", None))
    if info.process_id != 0:  # process 0 speaks for the job; the others only warn
        logging.getLogger("jaxcnn").setLevel(logging.WARNING)
    return info


def _primary() -> bool:
    from jaxcnn.distributed import is_primary

    return is_primary()


def _add_train_parser(sub) -> None:
    from jaxcnn.config import OPTIMIZERS, SCHEDULES, Config

    d = _config_default
    p = sub.add_parser(
        "train", help="train a model and evaluate it on the test split",
        description=f"Train a CNN. With no arguments: the default model "
                    f"({Config().model.name}) on the default dataset ({Config().data.dataset}). "
                    "Writes a run directory with the config, history (JSONL, CSV), learning "
                    "curves (PNG) and summary.json. Settings come from, lowest first: the "
                    "built-in defaults (shown below with their config keys), --config FILE, "
                    "then --set and the flags. A flag and a --set of the same key must agree.",
        formatter_class=_HelpFormatter)
    _add_model_args(p, d("model.name"))
    p.add_argument("--dataset", metavar="NAME",
                   help="dataset name: digits or digits28 (embedded, offline; digits28 is "
                   "digits upsampled to 28x28), synthetic:HxWxC:K, a "
                   "tensorflow-datasets name (mnist, cifar10, ...; prepared with 'jaxcnn data "
                   "prepare'), idx:DIR (MNIST-format files) or npz:FILE " + d("data.dataset"))
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory of prepared tfds datasets (default: $TFDS_DATA_DIR, "
                        "else ~/tensorflow_datasets; data.data_dir)")
    p.add_argument("--augment", choices=("auto", "on", "off"),
                   help="random shifts (a crop after zero padding), and flips for colour "
                        "images, on the device (auto: on for colour images of 24x24 and up "
                        "and grey images below 24x24, such as digits; off for MNIST-size "
                        "grey images) "
                        + d("data.augment", {None: "auto", True: "on", False: "off"}))
    p.add_argument("--epochs", type=int, metavar="N",
                   help="training epochs " + d("train.epochs"))
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="training batch size " + d("data.batch_size"))
    p.add_argument("--lr", type=float, help="peak learning rate " + d("optimizer.learning_rate"))
    p.add_argument("--optimizer", metavar="NAME",
                   help=f"{', '.join(OPTIMIZERS)} " + d("optimizer.name"))
    p.add_argument("--schedule", metavar="NAME",
                   help=f"learning-rate schedule: {', '.join(SCHEDULES)} "
                        + d("optimizer.schedule"))
    p.add_argument("--warmup-steps", type=int, metavar="N",
                   help="steps of linear (one_cycle: cosine) warm-up for the warmup_cosine, "
                        "linear and one_cycle schedules " + d("optimizer.warmup_steps"))
    p.add_argument("--momentum", type=float, metavar="M",
                   help="momentum for sgd and rmsprop (0: none) " + d("optimizer.momentum"))
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum for sgd (needs --momentum) "
                        + d("optimizer.nesterov", {False: "off", True: "on"}))
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help="adamw's decoupled weight decay, on kernels only (not biases or "
                        "normalisation parameters) " + d("optimizer.weight_decay"))
    p.add_argument("--l2", type=float, metavar="L2",
                   help="L2 penalty on kernels for any optimiser: L2 * w added to the gradient "
                        "(PyTorch's weight_decay of SGD and Adam) " + d("optimizer.l2"))
    p.add_argument("--label-smoothing", type=float, metavar="S",
                   help="smooth the training targets' one-hot labels by S (0: none) "
                        + d("train.label_smoothing"))
    p.add_argument("--seed", type=int, help="root random seed " + d("train.seed"))
    p.add_argument("--validation", type=float, metavar="FRACTION",
                   help="fraction of train held out for per-epoch validation "
                        + d("data.validation_fraction"))
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without val_loss improvement (0: off) "
                        + d("train.early_stopping_patience"))
    p.add_argument("--num-devices", type=int, metavar="N",
                   help="devices to shard each batch over "
                        + d("train.num_devices", {None: "all local devices"}))
    p.add_argument("--dtype", help="computation dtype: float32 or bfloat16 " + d("model.dtype"))
    p.add_argument("--impl", help="conv/pool implementation: auto, xla, fast "
                   + d("model.impl"))
    p.add_argument("--micro-batches", metavar="K",
                   help="run each step as K micro-batches, one update (auto: 32-64 images "
                        "each on the CPU fast path; 1: off) " + d("train.micro_batches"))
    p.add_argument("--steps-per-call", metavar="K",
                   help="run K optimiser steps per compiled call (lax.scan; same results as "
                        "one per call; auto: 1) " + d("train.steps_per_call"))
    p.add_argument("--reuse-host-memory", choices=("auto", "on", "off"),
                   help="keep freed host memory for the next step (glibc; auto: for a CPU "
                        "step with 32-64 MiB of temporaries) "
                        + d("train.reuse_host_memory", {"auto": "auto", True: "on",
                                                        False: "off"}))
    p.add_argument("--config", metavar="FILE",
                   help="a config JSON file; --set and the flags override its values "
                        "(default: none, the built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set optimizer.b2=0.99 (repeatable; "
                        "overrides --config; a flag for the same key must give the same value)")
    p.add_argument("--workdir", help="run directory (default: runs/<dataset>-<model>-<time>); "
                   "one holding checkpoints resumes from the latest")
    p.add_argument("--force-new", action="store_true",
                   help="if --workdir holds checkpoints, start over in a new directory "
                        "(WORKDIR-2, ...) instead of resuming")
    p.add_argument("--json", action="store_true",
                   help="print the final metrics as one JSON object on the last line of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    _add_distributed_args(p)
    p.set_defaults(func=_cmd_train)


# A config file is a JSON object of a few KB; a larger file is refused before it is read whole.
CONFIG_MAX_BYTES = 1 << 20


def _read_config(path: str):
    """The :class:`~jaxcnn.config.Config` of a ``--config`` file; errors name the file."""
    from jaxcnn.config import Config
    from jaxcnn.errors import ConfigError

    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read --config {path!r}: {e.strerror or e}") from None
    if len(data) > CONFIG_MAX_BYTES:
        raise ConfigError(f"--config {path!r} is larger than {CONFIG_MAX_BYTES // 2**20} MiB; a "
                          "config file is a JSON object of a few KB")
    try:
        return Config.from_json(data)
    except ConfigError as e:
        text = str(e)
        raise ConfigError(f"--config {path!r} is {text}" if text.startswith("not ")
                          else f"--config {path!r}: {text}") from None


def config_from_args(args: argparse.Namespace):
    """Builds the run :class:`~jaxcnn.config.Config` from parsed ``train`` arguments.

    Precedence, lowest first: the built-in defaults, ``--config FILE``, then
    ``--set`` and the flags. A flag and a ``--set`` of the same key (or two
    ``--set`` of one key) with different values raise
    :class:`~jaxcnn.errors.ConfigError` naming both, rather than one winning
    silently. ``--weight-decay`` (adamw's decoupled decay) with another
    optimiser is refused with a pointer to ``--l2``; the config field alone
    is ignored there, as every config stores it.

    Example:
      >>> args = build_parser().parse_args(["train", "--optimizer", "sgd", "--momentum", "0.9",
      ...                                   "--nesterov", "--l2", "5e-4"])
      >>> o = config_from_args(args).optimizer
      >>> (o.name, o.momentum, o.nesterov, o.l2)
      ('sgd', 0.9, True, 0.0005)
    """
    import shlex

    from jaxcnn.config import DECAY_OPTIMIZERS, Config, override, parse_overrides
    from jaxcnn.errors import ConfigError

    config = _read_config(args.config) if args.config else Config()
    flags = {
        "model.name": args.model or args.spec,
        "data.dataset": args.dataset,
        "data.data_dir": args.data_dir,
        "data.augment": {"on": True, "off": False, "auto": "none"}.get(args.augment),
        "train.epochs": args.epochs,
        "data.batch_size": args.batch_size,
        "optimizer.learning_rate": args.lr,
        "optimizer.name": args.optimizer,
        "optimizer.schedule": args.schedule,
        "optimizer.warmup_steps": getattr(args, "warmup_steps", None),
        "optimizer.momentum": getattr(args, "momentum", None),
        "optimizer.nesterov": getattr(args, "nesterov", None),
        "optimizer.weight_decay": getattr(args, "weight_decay", None),
        "optimizer.l2": getattr(args, "l2", None),
        "train.label_smoothing": getattr(args, "label_smoothing", None),
        "train.seed": args.seed,
        "data.validation_fraction": args.validation,
        "train.early_stopping_patience": args.early_stopping,
        "train.num_devices": args.num_devices,
        "model.dtype": args.dtype,
        "model.impl": args.impl,
        "train.micro_batches": getattr(args, "micro_batches", None),
        "train.steps_per_call": getattr(args, "steps_per_call", None),
        "train.reuse_host_memory": _HOST_MEMORY.get(getattr(args, "reuse_host_memory", None)),
    }
    updates = {k: v for k, v in flags.items() if v is not None}
    sets: dict = {}
    for item in args.set:
        (key, value), = parse_overrides([item]).items()
        if key in sets and not _same_value(config, key, sets[key], value, {**updates, **sets}):
            raise ConfigError(f"{key} is set twice with different values: --set "
                              f"{shlex.quote(f'{key}={sets[key]}')} and --set "
                              f"{shlex.quote(f'{key}={value}')}; give it once")
        sets[key] = value
    for key in sorted(updates.keys() & sets.keys()):
        if not _same_value(config, key, updates[key], sets[key], {**updates, **sets}):
            dest = ("model" if args.model else "spec") if key == "model.name" else _FLAG_DEST[key]
            value = getattr(args, dest)
            flag = (f"--{'' if value else 'no-'}{dest}" if isinstance(value, bool)
                    else f"--{dest.replace('_', '-')} {shlex.quote(str(value))}")
            raise ConfigError(f"{key} is given twice with different values: {flag} and --set "
                              f"{shlex.quote(f'{key}={sets[key]}')}; give one of them (drop the "
                              "flag or the --set)")
    updates.update(sets)
    config = override(config, updates)
    if (getattr(args, "weight_decay", None) is not None
            and config.optimizer.name not in DECAY_OPTIMIZERS):
        raise ConfigError(f"--weight-decay is adamw's decoupled weight decay, not "
                          f"{config.optimizer.name}'s; use --optimizer adamw, or --l2 for an L2 "
                          f"penalty with {config.optimizer.name} (PyTorch's weight_decay)")
    return config


# The train flag that sets each config key (its attribute in the parsed arguments).
_FLAG_DEST = {
    "data.dataset": "dataset", "data.data_dir": "data_dir", "data.augment": "augment",
    "train.epochs": "epochs", "data.batch_size": "batch_size", "optimizer.learning_rate": "lr",
    "optimizer.name": "optimizer", "optimizer.schedule": "schedule", "train.seed": "seed",
    "data.validation_fraction": "validation", "train.early_stopping_patience": "early_stopping",
    "train.num_devices": "num_devices", "model.dtype": "dtype", "model.impl": "impl",
    "train.micro_batches": "micro_batches", "train.reuse_host_memory": "reuse_host_memory",
    "train.steps_per_call": "steps_per_call", "optimizer.warmup_steps": "warmup_steps", "optimizer.momentum": "momentum",
    "optimizer.nesterov": "nesterov", "optimizer.weight_decay": "weight_decay",
    "optimizer.l2": "l2",
    "train.label_smoothing": "label_smoothing",
}


def _same_value(config, key: str, a, b, context: dict | None = None) -> bool:
    """Whether two values for config ``key`` mean the same (``3`` and ``"3"``, ``1e-3`` and
    ``"0.001"``), compared after the config's own conversion.

    ``context`` holds the other updates of the command: checks across fields
    (``optimizer.nesterov`` needs ``optimizer.name=sgd`` and momentum) see the
    values they will be checked with."""
    from jaxcnn.config import override

    section, field = key.split(".")
    context = dict(context or {})
    return (getattr(getattr(override(config, {**context, key: a}), section), field)
            == getattr(getattr(override(config, {**context, key: b}), section), field))


def _cmd_train(args: argparse.Namespace) -> int:
    from jaxcnn.run import result_lines, train_and_evaluate

    from jaxcnn.checkpoint import Preempted

    config = config_from_args(args)
    try:
        out = train_and_evaluate(config, args.workdir, progress=not args.quiet,
                                 force_new=args.force_new)
    except Preempted as e:
        if _primary():
            print(f"jaxcnn: preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    if not _primary():  # process 0 prints the job's results
        return EXIT_OK
    # The final state's and the best checkpoint's test metrics, each labelled; with --json
    # the same lines go to stderr and stdout holds only the JSON (same fields, "final"/"best").
    lines = result_lines(out)
    if args.json:
        print("\n".join(lines), file=sys.stderr)
        _print_json(out)
    else:
        print("\n".join(lines))
        print(f"test_accuracy={out['test_accuracy']:.4f} workdir={out['workdir']}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# summary


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise JaxcnnError(f"--input-shape must look like 28x28x1 (HxWxC); got {text!r}")
    return shape


def _dataset_input(name: str) -> tuple[tuple[int, ...], int]:
    """The image shape and class count of dataset ``name``, loading as little as it can.

    A ``synthetic:HxWxC:K`` dataset is made with one example; any other is
    loaded (the embedded ones are small; a tfds or file dataset is read).
    """
    from jaxcnn import data

    parts = name.split(":")
    if parts[0] == "synthetic" and len(parts) in (3, 4):
        try:
            ds = data.load_dataset(":".join(parts[:3]) + ":1")
            return tuple(ds.image_shape), int(ds.num_classes)
        except JaxcnnError:
            pass  # the error below names the dataset as given
    ds = data.load_dataset(name)
    return tuple(ds.image_shape), int(ds.num_classes)


def _show_shape(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def _input_of(args: argparse.Namespace, *, dataset: str | None = None,
              shape: tuple[int, ...] | None = None, classes: int | None = None):
    """``(input shape, classes, where the shape came from)`` of ``summary`` or ``bench``.

    ``--dataset`` gives both (and excludes ``--input-shape``/``--classes``); each
    of those not given comes from ``dataset`` (the default dataset) if there is
    one, else from ``shape``/``classes``. The third item names the dataset the
    shape came from, or None when it was given or a fixed default.
    """
    if args.dataset and (args.input_shape is not None or args.classes is not None):
        raise JaxcnnError("--dataset sets the input shape and classes; give either --dataset "
                          "or --input-shape/--classes, not both")
    given_shape = _parse_shape(args.input_shape) if args.input_shape is not None else None
    given_classes = args.classes
    name = args.dataset or dataset
    if name and (given_shape is None or given_classes is None):
        ds_shape, ds_classes = _dataset_input(name)
        where = f"--dataset {name}" if args.dataset else f"the default dataset {name}"
        return (given_shape or ds_shape, ds_classes if given_classes is None else given_classes,
                None if given_shape else where)
    return (given_shape or shape, classes if given_classes is None else given_classes,
            "the default --input-shape" if given_shape is None else None)


def _late_dataset_default(name: str, what: str):
    """A help default read from dataset ``name`` only when the help is shown."""
    cache: dict = {}

    def text() -> str:
        if "v" not in cache:
            try:
                cache["v"] = _dataset_input(name)
            except JaxcnnError:
                cache["v"] = None
        if cache["v"] is None:
            return f"that of --dataset, else of the default dataset {name}"
        value = _show_shape(cache["v"][0]) if what == "shape" else cache["v"][1]
        return f"that of --dataset, else {value}, from the default dataset {name}"
    return text


def _add_summary_parser(sub) -> None:
    from jaxcnn.config import Config

    default = Config()
    p = sub.add_parser("summary", help="print a model's layers, shapes, parameters and FLOPs",
                       description="Print a Keras-like summary table of a model. With no "
                                   "arguments: the default model of jaxcnn train on the image "
                                   "shape and classes of the default dataset.",
                       formatter_class=_HelpFormatter)
    _add_model_args(p, f"(default: {default.model.name}, model.name)")
    p.add_argument("--dataset", metavar="NAME",
                   help="take the input shape and classes from this dataset (e.g. digits, "
                        f"synthetic:32x32x3:10; default: {default.data.dataset}, data.dataset)")
    shape = p.add_argument("--input-shape", metavar="HxWxC", help="HxWxC of one image")
    shape.late_default = _late_dataset_default(default.data.dataset, "shape")
    classes = p.add_argument("--classes", type=int, metavar="N", help="number of classes")
    classes.late_default = _late_dataset_default(default.data.dataset, "classes")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> int:
    from jaxcnn.config import Config
    from jaxcnn.errors import ShapeError
    from jaxcnn.models import build_model, summary

    default = Config()
    shape, classes, where = _input_of(args, dataset=default.data.dataset)
    model = build_model(args.model or args.spec or default.model.name, classes)
    try:
        s = summary(model, shape)
    except ShapeError as e:
        if where is None:
            raise
        raise ShapeError(f"input {_show_shape(shape)} from {where}: {e}") from None
    if args.json:
        _print_json(s.to_dict())
    else:
        print(s)
    return EXIT_OK


# ---------------------------------------------------------------------------
# eval and predict (from a run directory's checkpoints)


def _add_checkpoint_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="run directory written by jaxcnn train")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--step", type=int, help="use the checkpoint of this step")
    g.add_argument("--latest", action="store_true",
                   help="use the latest checkpoint (default: the best by checkpoint.best_metric)")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object on the last line of stdout")


def _which(args: argparse.Namespace):
    return args.step if args.step is not None else ("latest" if args.latest else "best")


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on the test split",
                       description="Restore a run's checkpoint (the best by default) onto this "
                                   "machine's devices and evaluate it on the test split of "
                                   "the run's dataset, with the stored preprocessing.")
    _add_checkpoint_choice(p)
    _add_distributed_args(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from jaxcnn.checkpoint import load
    from jaxcnn.data import load_dataset
    from jaxcnn.training import evaluate

    import jax

    from jaxcnn import sharding as shd

    # In a job the test split is sharded over every process; alone, one device.
    mesh = shd.make_mesh() if jax.process_count() > 1 else None
    r = load(args.workdir, _which(args), shd.replicated(mesh) if mesh is not None else None)
    c = r.config
    dataset = load_dataset(c.data.dataset, validation_fraction=c.data.validation_fraction,
                           seed=c.train.seed, data_dir=c.data.data_dir)
    m = evaluate(r.state, dataset.test, r.preprocess, c.data.eval_batch_size, mesh)
    if not _primary():
        return EXIT_OK
    out = {"test_accuracy": m["accuracy"], "test_loss": m["loss"], "test_examples": m["count"],
           "step": r.step, "epoch": r.epoch, "checkpoint": r.path,
           "which": r.which, "best_metric": r.best_metric, "metric_value": r.metric_value,
           "why": r.why, "model": c.model.name, "dataset": dataset.name}
    line = (f"test accuracy {100 * m['accuracy']:.2f}%, loss {m['loss']:.4f} "
            f"({_eval_label(r)})")
    print(f"{m['count']} test examples; checkpoint {r.path}", file=sys.stderr)
    if args.json:
        print(line, file=sys.stderr)
        _print_json(out)
    else:
        print(line)
        print(f"test_accuracy={m['accuracy']:.4f} step={r.step}")
    return EXIT_OK


def _eval_label(r) -> str:
    """Which checkpoint ``eval`` used and why, as ``jaxcnn train`` labels its lines:
    ``best val_accuracy checkpoint, step 1240, epoch 31; val_accuracy 0.9930``."""
    where = f"step {r.step}" + (f", epoch {r.epoch}" if r.epoch is not None else "")
    if r.which == "best" and r.metric_value is not None:
        return (f"best {r.best_metric} checkpoint, {where}; {r.best_metric} "
                f"{r.metric_value:.4f}")
    if r.which == "best":  # no checkpoint records the metric: the latest, and why
        return f"{r.why}; {where}"
    if r.which == "latest":
        return f"latest checkpoint (--latest), {where}"
    return f"checkpoint chosen with --step, {where}"


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a trained run",
                       description="Classify PNG/JPEG images or .npy arrays with a run's "
                                   "checkpoint (the best by default), applying the stored "
                                   "preprocessing; prints the top-k classes and probabilities, "
                                   "and on stderr what was done to each input to fit the model "
                                   "(resize, rescale, channels) and warnings about inputs that "
                                   "look unlike the training images (e.g. inverted).")
    p.add_argument("files", nargs="+", metavar="FILE", help="PNG/JPEG image or .npy array")
    _add_checkpoint_choice(p)
    p.add_argument("--top-k", type=int, default=3, help="classes to show per input")
    p.add_argument("--invert", action="store_true",
                   help="flip every input's intensities (x -> 1 - x on a [0, 1] scale) before "
                        "predicting: for dark-on-light images when the training images are "
                        "light on dark, or the reverse (predict warns when an input looks "
                        "inverted)")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from jaxcnn._fs import printable
    from jaxcnn.inference import predict_files, report_lines

    if args.top_k < 1:
        raise JaxcnnError(f"--top-k must be >= 1; got {args.top_k}")
    out = predict_files(args.workdir, args.files, which=_which(args), k=args.top_k,
                        invert=args.invert)
    # What was done to the inputs (resize, rescale, channels) and any warning, on stderr.
    for line in report_lines(out):
        print(line, file=sys.stderr)
    if args.json:
        _print_json(out)
    else:
        # File and class names come from files: control characters are shown escaped.
        for p in out["predictions"]:
            print(printable(p["input"]) + ": " + ", ".join(
                f"{printable(t['class'])} {t['probability']:.4f}" for t in p["top_k"]))
    return EXIT_OK


# ---------------------------------------------------------------------------
# data


def _add_data_parser(sub) -> None:
    p = sub.add_parser(
        "data", help="prepare tensorflow-datasets data and list what is prepared",
        description="Prepare tfds datasets (download + write ArrayRecord, needs a network) and "
                    "list the datasets prepared in a data directory. Prepared data is read "
                    "without TensorFlow and without a network: copy the directory to the "
                    "training machine and pass --data-dir (or set TFDS_DATA_DIR).")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = dsub.add_parser("prepare", help="download a tfds dataset and write it as ArrayRecord")
    prep.add_argument("name", help="tfds name, e.g. mnist, cifar10, emnist/digits")
    prep.add_argument("--data-dir", metavar="DIR",
                      help="where to write it (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    prep.add_argument("--json", action="store_true", help="print the result as JSON")
    prep.set_defaults(func=_cmd_data_prepare)
    lst = dsub.add_parser("list", help="list the tfds datasets prepared in a data directory")
    lst.add_argument("--data-dir", metavar="DIR",
                     help="directory to list (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    lst.add_argument("--json", action="store_true", help="print the list as JSON")
    lst.set_defaults(func=_cmd_data_list)


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from jaxcnn.data import prepare_tfds as prepare

    out = prepare(args.name, args.data_dir)
    print(f"prepared {out['name']} in {out['path']}: "
          + ", ".join(f"{k} {v:,}" for k, v in out["splits"].items()), file=sys.stderr)
    if args.json:
        _print_json(out)
    return EXIT_OK


def _cmd_data_list(args: argparse.Namespace) -> int:
    from jaxcnn.data import default_data_dir, list_prepared

    root = default_data_dir(args.data_dir)
    found = list_prepared(root)
    if args.json:
        _print_json({"data_dir": root, "datasets": found})
        return EXIT_OK
    if not found:
        print(f"no prepared datasets in {root}; prepare one with: "
              f"jaxcnn data prepare mnist --data-dir {root}")
        return EXIT_OK
    print(f"prepared datasets in {root}:")
    for d in found:
        splits = ", ".join(f"{k} {v:,}" for k, v in d["splits"].items())
        note = "" if d["readable"] else "  (not ArrayRecord: re-prepare with jaxcnn data prepare)"
        print(f"  {d['name']:<24} {d['version']:<8} {d['file_format']:<12} {splits}{note}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# bench


def _parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise JaxcnnError(f"--batch-sizes must be positive ints separated by commas, e.g. "
                          f"32,128,512; got {text!r}")
    return sizes


_HOST_MEMORY = {"auto": "auto", "on": True, "off": False}


def _add_bench_parser(sub) -> None:
    from jaxcnn.bench import BenchConfig
    from jaxcnn.config import Config

    d, train = BenchConfig(), Config()
    p = sub.add_parser(
        "bench", help="benchmark compile time, throughput, FLOP/s, utilisation and memory",
        description="Benchmark a model on the default JAX device (CPU, GPU or TPU) at several "
                    "batch sizes: compile time, step time (median/min/max), images/s, FLOPs "
                    "per step (XLA cost analysis), achieved FLOP/s, utilisation of the "
                    "device's peak and peak memory; optionally the same model in PyTorch and "
                    "Keras side by side. Prints a table; --out writes JSON lines. "
                    "See docs/benchmarks.md. The model is checked against the input shape, "
                    "and the --compare frameworks against --compare-python, before anything "
                    "is measured.",
        formatter_class=_HelpFormatter)
    shape = _show_shape(d.input_shape)
    _add_model_args(p, f"(default: {d.model}, sized for the default {shape} input; with "
                       "--dataset, choose a model that fits its images, e.g. --model "
                       f"{train.model.name} for {train.data.dataset}, as jaxcnn train does)")
    p.add_argument("--input-shape", metavar="HxWxC",
                   help=f"HxWxC of one image (default: {shape})")
    p.add_argument("--classes", type=int, metavar="N",
                   help=f"number of classes (default: {d.num_classes})")
    p.add_argument("--dataset", metavar="NAME",
                   help="take the input shape and classes from this dataset (e.g. "
                        f"{train.data.dataset}, mnist, synthetic:32x32x3:10) instead of "
                        "--input-shape and --classes (default: none)")
    p.add_argument("--batch-sizes", default=",".join(map(str, d.batch_sizes)),
                   help="comma-separated batch sizes")
    p.add_argument("--dtype", default=d.dtype, choices=("float32", "bfloat16"),
                   help="compute dtype (bfloat16: float32 parameters, bfloat16 compute)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="steps per timed round (step mode) or per compiled call (scan mode)")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help="timed rounds (median/min/max)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls after the first")
    p.add_argument("--mode", default=d.mode, choices=("step", "scan"),
                   help="one compiled call per step, or --steps steps per call (lax.scan)")
    p.add_argument("--what", default=d.what, choices=("train", "infer", "eval"),
                   help="training step, inference (forward) or evaluation (forward + loss)")
    p.add_argument("--impl", default=d.impl, choices=("auto", "xla", "fast"),
                   help="conv/pool implementation (auto: the fast CPU path on CPU)")
    p.add_argument("--micro-batches", default=str(d.micro_batches), metavar="K",
                   help="run each training step as K micro-batches, as `jaxcnn train` does "
                        "(auto: 32-64 images each on the CPU fast path; 1: off)")
    p.add_argument("--steps-per-call", type=int, default=d.steps_per_call, metavar="K",
                   help="training steps per compiled call, as `jaxcnn train --steps-per-call` "
                        "runs them (lax.scan); times are per step")
    p.add_argument("--reuse-host-memory", default="auto", choices=("auto", "on", "off"),
                   help="keep freed host memory for the next step, as `jaxcnn train` does "
                        "(glibc; auto: for a CPU step with 32-64 MiB of temporaries; "
                        "jaxcnn.host_memory.reuse_host_memory)")
    p.add_argument("--lr", type=float, default=d.learning_rate,
                   help="Adam learning rate (all frameworks)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of parameters and batch")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sweep, frameworks interleaved (for noisy machines)")
    p.add_argument("--first-round", type=int, default=0,
                   help="number the rounds from here (when several commands make up the rounds)")
    p.add_argument("--compare", metavar="LIST",
                   help="other frameworks to run beside jaxcnn: torch, keras (= keras-tensorflow"
                        ",keras-jax), keras-tensorflow, keras-jax (default: none). They are "
                        "not jaxcnn dependencies: pip install 'jaxcnn[compare]', or "
                        "pip install -e '.[compare]' in a clone")
    p.add_argument("--compare-python", metavar="PYTHON",
                   help="interpreter with the other frameworks installed (default: this one, "
                        f"{sys.executable})".replace("%", "%%"))
    p.add_argument("--peak-flops", type=float, metavar="FLOP/S",
                   help="the device's peak FLOP/s for utilisation (default: the published "
                        "table for GPUs/TPUs, a matmul measured on the spot for CPUs)")
    p.add_argument("--keep-compilation-cache", action="store_true",
                   help="leave the persistent compilation cache on while timing compilation")
    p.add_argument("--out", metavar="FILE.jsonl", help="write one JSON line per result")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    p.add_argument("--plot", metavar="FILE.jsonl", nargs="+",
                   help="instead of benchmarking, draw images/s against batch size per "
                        "framework from these JSON lines files")
    p.add_argument("--png", metavar="FILE.png",
                   help="where --plot writes (default: the first file with .png)")
    p.add_argument("--json", action="store_true",
                   help="print the merged results as one JSON object on the last line")
    p.add_argument("--num-devices", type=int, metavar="N",
                   help="time data-parallel training over N devices (the batch sizes are "
                        "global), with the gradient all-reduce's share of the step; in a "
                        "multi-process job the mesh is every device of every process "
                        "(default: one device)")
    _add_distributed_args(p)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    import os

    from jaxcnn import bench

    # Where results go is checked before any work, so a typo does not cost a benchmark.
    if args.plot:
        png = args.png or os.path.splitext(args.plot[0])[0] + ".png"
        problem = bench.output_problem(png, create_dirs=True)  # plot_throughput makes dirs
        if problem:
            raise bench.BenchError(f"cannot write the plot to {png!r}: {problem}; choose "
                                   "another --png")
    elif args.out:
        problem = bench.output_problem(args.out)
        if problem:
            raise bench.BenchError(f"cannot write the results to {args.out!r}: {problem}; "
                                   "create the directory or choose another --out")
    if args.plot:
        rows = [row for path in args.plot for row in bench.read_jsonl(path)]
        bench.plot_throughput(rows, png)
        print(bench.format_table(rows))
        print(f"plot: {png}", file=sys.stderr)
        if args.json:
            _print_json({"png": png, "results": bench.aggregate(rows)})
        return EXIT_OK
    from jaxcnn.compare import check_installed, parse_frameworks
    from jaxcnn.errors import ShapeError

    default = bench.BenchConfig()
    input_shape, classes, where = _input_of(args, shape=default.input_shape,
                                            classes=default.num_classes)
    config = bench.BenchConfig(
        model=args.model or args.spec or default.model, input_shape=input_shape,
        num_classes=classes, batch_sizes=_parse_batch_sizes(args.batch_sizes),
        dtype=args.dtype, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
        mode=args.mode, what=args.what, impl=args.impl,
        # An int where the text is one; BenchConfig refuses anything else but "auto".
        micro_batches=int(args.micro_batches) if args.micro_batches.isdigit()
        else args.micro_batches, learning_rate=args.lr, seed=args.seed,
        steps_per_call=args.steps_per_call, compilation_cache=args.keep_compilation_cache,
        reuse_host_memory=_HOST_MEMORY[args.reuse_host_memory])
    # Everything that can fail is checked before the peak is measured and anything is
    # compiled or timed: the model against the input shape, the frameworks against the
    # interpreter that will run them.
    try:
        bench.check_model(config)
    except ShapeError as e:
        given = where or "--input-shape"
        raise ShapeError(f"cannot benchmark {config.model} on {_show_shape(config.input_shape)} "
                         f"images ({given}): {e}") from None
    check_installed(parse_frameworks(args.compare), python=args.compare_python)
    import jax

    if args.num_devices is not None or jax.process_count() > 1:
        return _bench_job(args, config)
    if args.peak_flops is not None:
        if args.peak_flops <= 0:
            raise JaxcnnError(f"--peak-flops must be > 0 (FLOP/s, e.g. 1.9e11); got "
                              f"{args.peak_flops}")
        peak = bench.Peak(args.peak_flops, "given", f"given with --peak-flops "
                                                    f"({args.peak_flops:.4g} FLOP/s)")
    else:
        peak = bench.device_peak(config.dtype)
    print(f"peak: {peak.detail}", file=sys.stderr)
    try:
        out = open(args.out, "a" if args.append else "w") if args.out else None
    except OSError as e:
        raise bench.BenchError(f"cannot write the results to {args.out!r}: "
                               f"{e.strerror or e}; choose another --out") from None

    def on_row(row):
        if out is not None:  # written as measured, so an interrupted sweep keeps its rows
            try:
                out.write(json.dumps(row, default=str) + "\n")
                out.flush()
            except OSError as e:
                raise bench.BenchError(
                    f"cannot write the results to {args.out!r}: {e.strerror or e}; the rows "
                    "written before this one are in it. Free disk space or choose another "
                    "--out") from None
        speed = ("out of memory" if row["status"] == "oom"
                 else f"{row['images_per_s']:,.0f} images/s")
        print(f"  {row['framework']:<16} round {row['round']} batch {row['batch_size']:>5}: "
              f"{speed}", file=sys.stderr)

    try:
        rows = bench.run(config, compare=args.compare, rounds=args.rounds,
                         compare_python=args.compare_python, peak=peak, on_row=on_row,
                         first_round=args.first_round)
    finally:
        if out is not None:
            try:
                out.close()
            except OSError:
                pass  # a full disk: on_row has already said so
    print(bench.format_table(rows))
    if args.out:
        print(f"results: {args.out}", file=sys.stderr)
    if args.json:
        _print_json({"out": args.out, "peak": peak.detail, "results": bench.aggregate(rows)})
    return EXIT_OK


def _bench_job(args: argparse.Namespace, config) -> int:
    """``jaxcnn bench`` over a mesh of devices (and processes): data-parallel rows."""
    from jaxcnn import bench

    if args.compare:
        raise bench.BenchError("--compare runs other frameworks on one device; leave it out "
                               "with --num-devices or in a multi-process job")
    rows = []
    for _ in range(max(args.rounds, 1)):
        for b in config.batch_sizes:
            row = bench.bench_job(config, b, args.num_devices)
            rows.append(row)
            if _primary():
                print(f"  {row['processes']} process(es), {row['devices']} devices, batch {b}: "
                      f"{row['images_per_s']:,.0f} images/s", file=sys.stderr)
    if not _primary():
        return EXIT_OK
    if args.out:
        with open(args.out, "a" if args.append else "w") as f:
            for row in rows:
                f.write(json.dumps(row, default=str) + "\n")
        print(f"results: {args.out}", file=sys.stderr)
    print(bench.format_job_rows(rows))
    if args.json:
        _print_json({"out": args.out, "results": rows})
    return EXIT_OK


# ---------------------------------------------------------------------------
# main

# Each entry adds one subcommand's parser; subcommands of later features append here.
SUBCOMMANDS: list[Callable] = [_add_train_parser, _add_summary_parser]
SUBCOMMANDS += [_add_eval_parser, _add_predict_parser]
SUBCOMMANDS += [_add_data_parser]
SUBCOMMANDS += [_add_bench_parser]


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxcnn`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="jaxcnn",
        description="Train, study and benchmark convolutional image classifiers in JAX.",
        epilog="Run 'jaxcnn COMMAND --help' for a command's options. "
               "Start with 'jaxcnn train'.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of jaxcnn, JAX and Python, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxcnn`` command; returns the exit code.

    Example:
      >>> main(["summary", "--model", "keras_convnet", "--input-shape", "28x28x1",
      ...       "--classes", "10", "--json"])  # doctest: +ELLIPSIS
      {"input_shape": [28, 28, 1], "params": 34826, ...}
      0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax", "jax._src.xla_bridge", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    # Process-wide settings the command makes, visibly here: JAX's persistent
    # compilation cache (JAXCNN_COMPILATION_CACHE=off opts out). `jaxcnn bench`
    # turns it off around the compilations it times.
    enable_compilation_cache()
    from jaxcnn.distributed import FailureWatch

    if hasattr(args, "distributed"):
        try:
            _start_processes(args)
        except JaxcnnError as e:
            print(f"jaxcnn: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    # In a multi-process job a failing process stops the others, with its exit code.
    with FailureWatch() as watch:
        code, message = _run(args)
        if code not in (EXIT_OK, EXIT_PREEMPTED):
            watch.fail(code, message)
        return code


def _run(args: argparse.Namespace) -> tuple[int, str]:
    """Runs the subcommand; returns its exit code and, on failure, the one-line message
    it printed."""
    def failed(code: int, message: str) -> tuple[int, str]:
        print(f"jaxcnn: {message}", file=sys.stderr)
        return code, message

    try:
        return args.func(args), ""
    except NonFiniteLossError as e:
        return failed(EXIT_DIVERGED, f"error: {e}")
    except JaxcnnError as e:
        return failed(EXIT_BAD_INPUT, f"error: {e}")
    except KeyboardInterrupt:
        return failed(130, "interrupted")
    except MemoryError:
        return failed(EXIT_BAD_INPUT, "error: out of host memory; use a smaller model, batch "
                      "size or dataset (the last saved checkpoint, if any, is unchanged)")
    except OSError as e:
        # A file-system failure that no check caught (disk full, permissions changed under
        # the run): one line with the path and the reason, never a traceback.
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return failed(EXIT_ERROR, f"error: {e.strerror or e}{where}; free space or fix "
                      "permissions and run again (checkpoints already written are kept)")
    except Exception as e:  # noqa: BLE001 - reported to the job's other processes
        from jaxcnn.distributed import current

        if current().num_processes == 1:
            raise
        # In a job: report it to the other processes (they would wait for this one in
        # their next collective), with the traceback here.
        import traceback

        traceback.print_exc()
        return failed(EXIT_ERROR, f"error: {type(e).__name__}: {e}")


def entry_point() -> None:
    """Console-script wrapper around :func:`main`."""
    sys.exit(main())


__all__ = [
    "EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_ERROR", "EXIT_OK", "EXIT_PREEMPTED", "build_parser",
    "config_from_args", "entry_point", "main",
]
