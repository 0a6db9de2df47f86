"""A whole training run from a :class:`~jaxcnn.config.Config`: what ``jaxcnn train`` does.

:func:`train_and_evaluate` follows one path: config -> dataset -> model ->
train state -> :func:`jaxcnn.training.fit` -> test evaluation -> run directory.
Every check on the user's input (spec, shapes, batch size, devices) happens
before the first step.

The run directory holds:

* ``config.json``: the resolved config;
* ``meta.json``: dataset metadata, the preprocessing statistics, the model
  spec and parameter count, versions and device;
* ``history.jsonl`` and ``history.csv``: one record per epoch;
* ``learning_curves.png``: loss and accuracy per epoch;
* ``summary.json``: the final metrics (``test_accuracy``, ``test_loss``,
  ``train_seconds``, ...), and the test metrics of both the ``final`` state
  and the ``best`` checkpoint, each with its step and epoch (see
  :func:`train_and_evaluate`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import time
from typing import Mapping, Sequence

from jaxcnn import _fs, distributed, provenance, sharding as shd
from jaxcnn.host_memory import host_memory_state, reuse_host_memory
from jaxcnn.config import Config
from jaxcnn.data import Dataset, Preprocess, fit_options, load_dataset
from jaxcnn.errors import ConfigError, JaxcnnError, NonFiniteLossError
from jaxcnn.models import Sequential, build_model, has_batch_norm, summary, to_spec
from jaxcnn.training import (ExecutionPolicy, FitResult, TrainState, build_state, evaluate, fit,
                             resolve_policy, split_keys)

log = logging.getLogger("jaxcnn")


@dataclasses.dataclass
class Run:
    """Everything a run is built from, before training starts.

    Attributes:
      config: the resolved config.
      dataset: the loaded data.
      preprocess: the input transform fitted on the training split.
      model: the model.
      state: the initial train state.
      keys: the run's keys.
      mesh: the device mesh.
      steps_per_epoch: training steps per epoch.
      schedule: the optimiser's learning-rate schedule.
      policy: how the training step is compiled and run.
    """

    config: Config
    dataset: Dataset
    preprocess: Preprocess
    model: Sequential
    state: TrainState
    keys: object
    mesh: object
    steps_per_epoch: int
    schedule: object = None
    policy: ExecutionPolicy | None = None

    def meta(self) -> dict:
        """JSON-ready description of the run (dataset, preprocessing, model, environment)."""
        s = summary(self.model, self.dataset.image_shape)
        return {
            "dataset": self.dataset.metadata(),
            "preprocess": self.preprocess.to_dict(),
            "train_images": _image_stats(self.dataset.train.images, self.preprocess.scale),
            "augment": _augment_meta(self.config, self.dataset.image_shape),
            "model": {"spec": to_spec(self.model.layers), "params": s.params,
                      "flops_per_image": s.flops},
            "steps_per_epoch": self.steps_per_epoch,
            "versions": provenance.versions(),
            "device": provenance.device_info(),
            "git_commit": provenance.git_commit(),
        }


def _augment_meta(config: Config, image_shape) -> dict | None:
    aug = fit_options(config.data, image_shape)["augment"]
    return dataclasses.asdict(aug) if aug is not None else None


def _image_stats(images, scale: float, sample: int = 2048) -> dict:
    """Value range and intensity of the training images as the model sees them before
    standardisation (times ``scale``), from at most ``sample`` evenly spaced images:
    what ``jaxcnn predict`` compares its inputs with (``jaxcnn.inference``).

    Example:
      >>> import numpy as np
      >>> _image_stats(np.full((3, 2, 2, 1), 51, np.uint8), 1 / 255)
      {'images': 3, 'min': 0.2, 'max': 0.2, 'mean': [0.2], 'image_std': 0.0}
    """
    import numpy as np

    n = len(images)
    index = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64))
    low, high, total, pixels, stds = np.inf, -np.inf, 0.0, 0, []
    for start in range(0, len(index), 64):  # chunks: no float copy of large images at once
        x = np.asarray(images[index[start:start + 64]]).astype(np.float32) * np.float32(scale)
        low, high = min(low, float(x.min())), max(high, float(x.max()))
        total = total + x.sum(axis=(0, 1, 2), dtype=np.float64)
        pixels += x.shape[0] * x.shape[1] * x.shape[2]
        stds.append(x.reshape(len(x), -1).std(axis=1, dtype=np.float64))
    return {"images": int(len(index)), "min": round(low, 6), "max": round(high, 6),
            "mean": [round(float(v), 6) for v in np.atleast_1d(total) / pixels],
            "image_std": round(float(np.median(np.concatenate(stds))), 6)}


def prepare(config: Config, dataset: Dataset | None = None) -> Run:
    """Loads the data, builds the model and checks that everything fits.

    Args:
      config: the run's config.
      dataset: use this dataset instead of ``config.data.dataset``.

    Returns:
      A :class:`Run`, ready for :func:`jaxcnn.training.fit`.

    Raises:
      JaxcnnError: a bad spec, a shape that does not fit, a batch size that
        does not fit the data or the devices, an unknown dataset.

    Example:
      >>> run = prepare(Config())
      >>> run.steps_per_epoch, run.dataset.name
      (44, 'digits')
    """
    if config.train.reuse_host_memory is True:
        # On from the start, for the data as well; "auto" waits for the compiled step (fit).
        reuse_host_memory()
    if dataset is None:
        dataset = load_dataset(config.data.dataset,
                               validation_fraction=config.data.validation_fraction,
                               seed=config.train.seed, data_dir=config.data.data_dir,
                               splits={"train": config.data.train_split,
                                       "validation": config.data.validation_split,
                                       "test": config.data.test_split})
    model = build_model(config.model.name, dataset.num_classes,
                        dtype=config.model.dtype, impl=config.model.impl)
    # Raises ShapeError naming the layer that does not fit and the smallest input that does.
    summary(model, dataset.image_shape, input_name=dataset.name)
    mesh = shd.make_mesh(config.train.num_devices)
    shd.check_batch_size(config.data.batch_size, mesh)
    # A bad micro-batch or host-memory setting fails here, before any data moves.
    policy = resolve_policy(config.data.batch_size, impl=config.model.impl,
                            micro_batches=config.train.micro_batches,
                            host_memory=config.train.reuse_host_memory,
                            num_devices=mesh.devices.size, batch_norm=has_batch_norm(model))
    summary(model, dataset.image_shape, batch_size=policy.images_per_call(  # memory for training
        config.data.batch_size) // policy.micro_batches // mesh.devices.size)
    steps_per_epoch = len(dataset.train) // config.data.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} is larger than the training split "
            f"({len(dataset.train)} examples); use --batch-size {len(dataset.train)} or less")
    if config.train.epochs * steps_per_epoch > 2**31 - 1:
        raise ConfigError(
            f"train.epochs={config.train.epochs} x {steps_per_epoch} steps per epoch is more "
            "than the step counter holds (2**31 - 1 steps); use fewer epochs or a larger batch")
    keys = split_keys(config.train.seed)
    built = build_state(config, dataset.image_shape, dataset.num_classes, steps_per_epoch,
                        key=keys.init)
    preprocess = Preprocess.fit(dataset.train.images, normalize=config.data.normalize)
    return Run(config, dataset, preprocess, built.model, built.state, keys, mesh,
               steps_per_epoch, built.schedule, policy)


def default_workdir(config: Config, root: str = "runs", timestamp: float | None = None) -> str:
    """``runs/<dataset>-<model>-<UTC time>``; spec text is named ``custom``.

    ``timestamp`` (seconds since the epoch; default now) names the time; the
    processes of a job use process 0's, so they share one directory.

    Example:
      >>> default_workdir(Config()).startswith("runs/digits-seed_cnn-")
      True
    """
    model = config.model.name if re.fullmatch(r"\w+", config.model.name) else "custom"
    data = re.sub(r"[^\w.-]+", "_", config.data.dataset)
    when = (datetime.datetime.now(datetime.timezone.utc) if timestamp is None else
            datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc))
    stamp = when.strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{data}-{model}-{stamp}")


def train_and_evaluate(
    config: Config,
    workdir: str | None = None,
    *,
    dataset: Dataset | None = None,
    progress: bool = True,
    callbacks=(),
    force_new: bool = False,
) -> dict:
    """Trains, evaluates on the test split and writes the run directory.

    With ``config.checkpoint.enabled`` (the default) checkpoints go to
    ``<workdir>/checkpoints`` and a workdir that already holds some resumes
    from the latest one (step, parameters, optimiser state, history and the
    stored preprocessing); the data order and dropout keys follow from the
    step. SIGTERM/SIGINT save and raise :class:`jaxcnn.checkpoint.Preempted`.
    The run holds an exclusive lock on ``workdir`` until it returns, so a second
    run on the same directory fails at once, naming the holder.

    In a multi-process job (:func:`jaxcnn.distributed.initialize`) every
    process calls this with the same config and ``workdir`` (on a file system
    they share): each reads only its rows of every batch, checkpoints are
    saved and restored by all of them together, and only process 0 holds the
    lock, shows progress and writes the run directory's files. Every process
    returns the same summary.

    Args:
      config: the run's config.
      workdir: the run directory (created; default :func:`default_workdir`).
      dataset: train on this dataset instead of ``config.data.dataset``.
      progress: show a progress bar on stderr.
      callbacks: extra :class:`~jaxcnn.training.Callback` hooks for ``fit``.
      force_new: when ``workdir`` holds checkpoints, start over in a new
        directory (``workdir-2``, ...) instead of resuming.

    Returns:
      The final metrics, also written to ``summary.json``: ``test_accuracy``,
      ``test_loss``, ``train_seconds``, ``epochs``, ``steps``, ``params``,
      ``images_per_s``, ``workdir``, and ``val_accuracy`` with validation data
      (the top-level ``test_*`` are the final state's), and:

      * ``final``: the state training ended with (the best epoch's when early
        stopping restored it): ``step``, ``epoch``, ``test_loss``,
        ``test_accuracy``, ``val_loss`` and ``val_accuracy`` when known,
        ``restored_by_early_stopping`` (and then ``early_stopping_metric``);
      * ``best``: the checkpoint ``jaxcnn eval`` uses by default, the best
        one on disk by ``checkpoint.best_metric``: ``step``, ``epoch``,
        ``metric`` and ``value`` (None when no checkpoint records the metric:
        then it is the latest, and ``note`` says why), ``test_loss``,
        ``test_accuracy``, ``same_as_final``, ``checkpoint``, ``why``.
        Evaluating it costs one more pass over the test split only when it
        differs from the final state. None when checkpoints are off
        (``best_note`` says so);
      * ``stop_reason``: why and when training stopped early (None: it ran
        all its epochs);
      * ``warnings``: sentences about the run, e.g. from :func:`loss_warning`
        (each is also logged once).

      :func:`result_lines` turns it into the lines ``jaxcnn train`` prints.

    Example:
      >>> import tempfile
      >>> from jaxcnn.config import override
      >>> cfg = override(Config(), {"train.epochs": 1, "train.num_devices": 1})
      >>> out = train_and_evaluate(cfg, tempfile.mkdtemp(), progress=False)
      >>> 0.0 <= out["test_accuracy"] <= 1.0
      True
      >>> out["final"]["step"] == out["steps"], out["final"]["epoch"], out["warnings"]
      (True, 1, [])
      >>> out["best"]["same_as_final"]  # one epoch, one checkpoint
      True
    """
    with contextlib.ExitStack() as lock:  # the run directory's lock, held to the end
        return _train_and_evaluate(config, workdir, dataset, progress, callbacks, force_new,
                                   lock)


def _train_and_evaluate(config, workdir, dataset, progress, callbacks, force_new,
                        lock: contextlib.ExitStack) -> dict:
    t_start = time.perf_counter()
    run = prepare(config, dataset)
    workdir = workdir or default_workdir(config, timestamp=distributed.agree(int(time.time())))
    primary = distributed.is_primary()
    progress = progress and primary
    with contextlib.ExitStack() as stack:
        saver, guard, history = None, None, []
        if config.checkpoint.enabled:
            from jaxcnn import checkpoint as ckpt

            if force_new and ckpt.has_checkpoints(workdir):
                new_workdir = ckpt.fresh_workdir(workdir)
                log.info("%s holds checkpoints of another run; starting over in %s",
                         workdir, new_workdir)
                workdir = new_workdir
            _make_workdir(workdir)
            # One writer per run directory: taken before Orbax cleans or writes anything.
            if primary:  # one writer per run directory; in a job, process 0 holds it
                lock.enter_context(ckpt.lock_workdir(workdir))
            ckpts = stack.enter_context(
                ckpt.from_config(ckpt.checkpoint_dir(workdir), config.checkpoint))
            # Restored directly onto this run's mesh, whatever layout saved it.
            resumed = ckpt.resume(ckpts, config, run.state, shd.replicated(run.mesh),
                                  dataset=run.dataset.metadata(),
                                  steps_per_epoch=run.steps_per_epoch)
            if resumed is not None:
                run = dataclasses.replace(
                    run, state=resumed.state,
                    preprocess=Preprocess.from_dict(resumed.meta["preprocess"]))
                history = resumed.history
                log.info("resuming from the checkpoint at step %d (epoch %d, batch %d) in %s",
                         resumed.step, *divmod(resumed.step, run.steps_per_epoch),
                         ckpts.step_path(resumed.step))
        else:
            _make_workdir(workdir)
            if primary:
                lock.enter_context(_fs.DirectoryLock(workdir))
        meta = run.meta()
        if primary:
            _write_json(os.path.join(workdir, "config.json"), config.to_dict())
            _write_json(os.path.join(workdir, "meta.json"), meta)
        log.info("model %s: %s parameters; data %s: %s", config.model.name,
                 f"{meta['model']['params']:,}", run.dataset.name, meta["dataset"]["splits"])
        if config.checkpoint.enabled:
            guard = stack.enter_context(ckpt.PreemptionGuard())
            saver = ckpt.CheckpointCallback(
                ckpts, {"config": config.to_dict(), **meta}, steps_per_epoch=run.steps_per_epoch,
                every_steps=config.checkpoint.every_steps,
                every_epochs=config.checkpoint.every_epochs,
                min_interval_seconds=config.checkpoint.min_interval_seconds,
                best_metric=config.checkpoint.best_metric, history=history, guard=guard)
            callbacks = [saver, *callbacks]

        t_fit = time.perf_counter()
        try:
            result: FitResult = fit(
                run.state, run.dataset, keys=run.keys, epochs=config.train.epochs,
                batch_size=config.data.batch_size, preprocess=run.preprocess,
                eval_batch_size=config.data.eval_batch_size, mesh=run.mesh,
                learning_rate=run.schedule,
                early_stopping_patience=config.train.early_stopping_patience,
                early_stopping_metric=config.train.early_stopping_metric,
                restore_best=config.train.restore_best,
                log_every_seconds=config.train.log_every_seconds,
                callbacks=callbacks, history=history, progress=progress,
                policy=run.policy, label_smoothing=config.train.label_smoothing,
                steps_per_call=config.train.steps_per_call,
                **fit_options(config.data, run.dataset.image_shape))
        except NonFiniteLossError as e:
            # Say which checkpoint is on disk (the in-memory state dies with the process).
            from jaxcnn.checkpoint import explain_divergence

            raise explain_divergence(e, saver.checkpoints if saver else None) from None
    # Leaving the block waited for the last checkpoint write (and raised if it failed).
    train_seconds = time.perf_counter() - t_fit
    if saver is not None and saver.preempted_step is not None:
        if primary:
            write_history(workdir, saver.history)
        raise ckpt.Preempted(step=saver.preempted_step, workdir=workdir,
                             signal_name=guard.requested)
    if primary:
        write_history(workdir, result.history)

    warnings = []
    diverging = loss_warning(result.history, run.dataset.num_classes,
                             config.optimizer.learning_rate, config.optimizer.name)
    if diverging:
        log.warning("warning: %s", diverging)
        warnings.append(diverging)
    test = evaluate(result.state, run.dataset.test, run.preprocess,
                    config.data.eval_batch_size, run.mesh)
    history = result.history
    final = _final_summary(result, test, run.steps_per_epoch,
                           config.train.early_stopping_metric)
    best, best_note = _best_summary(config, workdir, run, final, test)
    steps_done = history[-1]["step"] if history else 0
    out = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_examples": test["count"],
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "epochs": len(history),
        "steps": steps_done,
        "stopped_early": result.stopped_early,
        "params": meta["model"]["params"],
        "images_per_s": (sum(r["images_per_s"] * r["seconds"] for r in history)
                         / max(sum(r["seconds"] for r in history), 1e-9)) if history else 0.0,
        "model": config.model.name,
        "dataset": run.dataset.name,
        "seed": config.train.seed,
        # Whether freed host memory was kept for reuse (train.reuse_host_memory): CPU speed.
        "host_memory": host_memory_state(),
        "workdir": workdir,
    }
    if history and "val_accuracy" in history[-1]:
        out["val_accuracy"] = history[-1]["val_accuracy"]
        out["val_loss"] = history[-1]["val_loss"]
    out |= {"final": final, "best": best, "stop_reason": result.stop_reason,
            "warnings": warnings}
    if best is None:
        out["best_note"] = best_note
    if not primary:
        return out
    _write_json(os.path.join(workdir, "summary.json"), out)
    if history:
        from jaxcnn.plots import learning_curves

        learning_curves(history, os.path.join(workdir, "learning_curves.png"),
                        title=f"{config.model.name} on {run.dataset.name}")
    # The test metrics of the final state and the best checkpoint: result_lines(out)
    # (jaxcnn train prints them).
    log.info("%.1fs training; wrote %s", train_seconds, workdir)
    return out


def _epoch_of(step: int, steps_per_epoch: int) -> int | float:
    """The epoch ``step`` ends: whole at an epoch's end, else a fraction rounded to 0.01."""
    epoch = step / steps_per_epoch
    return int(epoch) if epoch.is_integer() else round(epoch, 2)


def _final_summary(result: FitResult, test: Mapping, steps_per_epoch: int,
                   early_stopping_metric: str) -> dict:
    """``summary["final"]``: the state ``fit`` returned and its test metrics."""
    step = int(result.state.step)
    record = next((r for r in reversed(result.history) if r.get("step") == step), None)
    final = {"step": step,
             "epoch": record["epoch"] if record else _epoch_of(step, steps_per_epoch),
             "test_loss": test["loss"], "test_accuracy": test["accuracy"],
             "restored_by_early_stopping": result.restored_epoch is not None}
    if result.restored_epoch is not None:
        final["early_stopping_metric"] = early_stopping_metric
    if record and "val_loss" in record:
        final |= {"val_loss": record["val_loss"], "val_accuracy": record["val_accuracy"]}
    return final


def _best_summary(config: Config, workdir: str, run: Run, final: Mapping,
                  final_test: Mapping) -> tuple[dict | None, str | None]:
    """``(summary["best"], summary["best_note"])``: the checkpoint ``jaxcnn eval`` uses by
    default, and its test metrics (evaluated only when it is not the final state)."""
    if not config.checkpoint.enabled:
        return None, "checkpoints are off: checkpoint.enabled=false, so none was kept"
    from jaxcnn import checkpoint as ckpt

    metric = config.checkpoint.best_metric
    try:
        r = ckpt.load(workdir, "best", shd.replicated(run.mesh), best_metric=metric)
    except ckpt.CheckpointError as e:  # training is done: report, do not lose the summary
        log.warning("warning: the best checkpoint could not be read: %s", e)
        return None, f"the best checkpoint could not be read: {e}"
    # A checkpoint of this run at the final state's step holds that very state.
    same = r.step == final["step"]
    test = final_test if same else evaluate(r.state, run.dataset.test, r.preprocess,
                                            config.data.eval_batch_size, run.mesh)
    best = {"step": r.step, "epoch": r.epoch,
            "metric": metric if r.metric_value is not None else None,
            "value": r.metric_value, "test_loss": test["loss"],
            "test_accuracy": test["accuracy"], "same_as_final": same, "checkpoint": r.path,
            "why": r.why}
    if r.metric_value is None:
        best["note"] = ("no validation split: nothing to choose the best by"
                        if metric.startswith("val_") and run.dataset.validation is None
                        else f"no checkpoint on disk records {metric}")
    return best, None


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def result_lines(summary: Mapping) -> list[str]:
    """The lines ``jaxcnn train`` prints: the test metrics of the final state and of the
    best checkpoint (the one ``jaxcnn eval`` uses), each with its step and epoch.

    Args:
      summary: what :func:`train_and_evaluate` returns (``summary.json``).

    Example:
      >>> final = {"step": 1600, "epoch": 40, "test_loss": 0.05, "test_accuracy": 0.9861,
      ...          "restored_by_early_stopping": False}
      >>> best = {"step": 1240, "epoch": 31, "metric": "val_accuracy", "value": 0.993,
      ...         "test_loss": 0.04, "test_accuracy": 0.9889, "same_as_final": False}
      >>> print("\\n".join(result_lines({"final": final, "best": best})))
      test accuracy 98.61%, loss 0.0500 (final, step 1600, epoch 40)
      test accuracy 98.89%, loss 0.0400 (best val_accuracy checkpoint, step 1240, epoch 31;
      val_accuracy 0.9930)
      >>> best = dict(final, metric=None, value=None, same_as_final=True,
      ...             note="no validation split: nothing to choose the best by")
      >>> result_lines({"final": final, "best": best})[1]
      'best = final (no validation split: nothing to choose the best by)'
    """
    final, best = summary["final"], summary.get("best")
    what = "final"
    if final.get("restored_by_early_stopping"):
        what = f"final = epoch {final['epoch']}'s parameters, restored by early stopping"
        if final.get("early_stopping_metric"):
            what += f" on {final['early_stopping_metric']}"
    lines = [f"test accuracy {_percent(final['test_accuracy'])}, loss {final['test_loss']:.4f} "
             f"({what}, step {final['step']}, epoch {final['epoch']})"]
    if best is None:
        lines.append(f"best: none ({summary.get('best_note') or 'no checkpoints'})")
        return lines
    metric, value = best.get("metric"), best.get("value")
    if best.get("same_as_final"):
        lines.append(f"best = final ({best.get('note')})" if metric is None else
                     f"best = final (step {best['step']} is also the best {metric} checkpoint; "
                     f"{metric} {value:.4f})")
        return lines
    where = (f"best {metric} checkpoint" if metric is not None
             else f"best checkpoint = the latest: {best.get('note')}")
    extra = f"; {metric} {value:.4f}" if metric is not None else ""
    lines.append(f"test accuracy {_percent(best['test_accuracy'])}, loss "
                 f"{best['test_loss']:.4f} ({where}, step {best['step']}, epoch "
                 f"{best['epoch']}{extra})")
    return lines


# What each optimiser is usually run at: the advice of loss_warning.
_USUAL_LEARNING_RATE = {"adam": ("1e-3", "Adam"), "adamw": ("1e-3", "AdamW"),
                        "rmsprop": ("1e-3", "RMSprop"), "sgd": ("1e-2", "SGD"),
                        "adagrad": ("1e-2", "Adagrad")}


def loss_warning(history: Sequence[Mapping], num_classes: int,
                 learning_rate: float | None = None, optimizer: str = "adam") -> str | None:
    """A warning when training left the loss far above where it started; None otherwise.

    The rule compares the last epoch's mean training loss with two references:
    the first epoch's mean, and ``chance = ln(num_classes)``, the loss of a
    uniform guess, which is about where a freshly initialised classifier
    starts. It warns when

    1. the last epoch's loss is more than twice the first epoch's and above
       ``chance / 2`` (the loss grew; the floor keeps small losses that wobble,
       0.01 to 0.03, out), or
    2. the last epoch's loss is more than ``2 * chance`` (the model ends
       confidently wrong, far worse than guessing; one epoch is enough), or
    3. some epoch's loss went above ``10 * chance`` (it exploded) and the last
       is still above ``0.9 * chance`` (it never recovered: the model learned
       nothing).

    A run that learns trips none of them: its epoch means fall from about
    ``chance``. Dropout raises the training loss by tens of percent, not 2x;
    label smoothing raises the lowest reachable loss, but a uniform guess still
    scores exactly ``chance``, so a smoothed loss stays below it once anything
    is learned. A NaN or Inf loss never gets here: ``fit`` stops with an error.

    Args:
      history: the epoch records of :func:`jaxcnn.training.fit` (``epoch``, ``loss``).
      num_classes: classes of the dataset.
      learning_rate: the (peak) learning rate, to name it in the advice.
      optimizer: the optimiser's name, for its usual learning rate.

    Returns:
      One sentence naming the symptom, the likely cause and the fix, or None.

    Example:
      >>> loss_warning([{"epoch": 1, "loss": 1.2}, {"epoch": 2, "loss": 0.3}], 10) is None
      True
      >>> print(loss_warning([{"epoch": 1, "loss": 53496016.0}], 10, 10.0, "adam"))
      the training loss ended at 5.35e+07 in epoch 1, more than twice that of a uniform guess
      over 10 classes (2.303): the learning rate 10 is probably too high; try --lr 1e-3
      (Adam's usual value)
    """
    losses = [(r.get("epoch", i + 1), float(r["loss"])) for i, r in enumerate(history)
              if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if not losses:
        return None
    chance = math.log(max(int(num_classes), 2))
    (first_epoch, first), (last_epoch, last) = losses[0], losses[-1]
    peak_epoch, peak = max(losses, key=lambda e: e[1])
    guess = f"a uniform guess over {num_classes} classes ({chance:.4g})"
    if len(losses) > 1 and last > 2 * first and last > chance / 2:
        symptom = (f"the training loss rose from {first:.4g} in epoch {first_epoch} to "
                   f"{last:.4g} in epoch {last_epoch}")
    elif last > 2 * chance:
        symptom = (f"the training loss ended at {last:.4g} in epoch {last_epoch}, more than "
                   f"twice that of {guess}")
    elif peak > 10 * chance and last > 0.9 * chance:
        symptom = (f"the training loss exploded to {peak:.4g} in epoch {peak_epoch} and ended "
                   f"at {last:.4g} in epoch {last_epoch}, no better than {guess}")
    else:
        return None
    usual, name = _USUAL_LEARNING_RATE.get(optimizer, (None, optimizer))
    if learning_rate is None:
        advice = "the learning rate is probably too high; lower it (--lr)"
    elif usual is not None and learning_rate > float(usual):
        advice = (f"the learning rate {learning_rate:g} is probably too high; try --lr "
                  f"{usual} ({name}'s usual value)")
    else:
        advice = (f"the learning rate {learning_rate:g} is probably too high for this model; "
                  f"try --lr {learning_rate / 10:g}, or clip gradients "
                  "(--set optimizer.grad_clip_norm=1.0)")
    return f"{symptom}: {advice}"


def _make_workdir(workdir: str) -> None:
    problem = _fs.writable_dir_problem(workdir)
    if problem:
        raise JaxcnnError(f"cannot write to the run directory {workdir!r}: {problem}; "
                          "choose another --workdir")


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_history(workdir: str, history: list[dict]) -> None:
    """Writes ``history.jsonl`` and ``history.csv`` (one row per epoch).

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> write_history(d, [{"epoch": 1, "loss": 0.5}])
      >>> open(os.path.join(d, "history.csv")).read().splitlines()
      ['epoch,loss', '1,0.5']
    """
    with open(os.path.join(workdir, "history.jsonl"), "w") as f:
        for record in history:
            f.write(json.dumps(record) + "\n")
    keys: list[str] = []
    for record in history:
        keys += [k for k in record if k not in keys]
    with open(os.path.join(workdir, "history.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


__all__ = [
    "Run", "default_workdir", "loss_warning", "prepare", "result_lines", "train_and_evaluate",
    "write_history",
]
