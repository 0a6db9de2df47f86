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
  ``train_seconds``, ...).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import json
import logging
import os
import re
import time

from jaxcnn import _fs, provenance, sharding as shd
from jaxcnn.host_memory import host_memory_state, reuse_host_memory
from jaxcnn.config import Config
from jaxcnn.data import Dataset, Preprocess, fit_options, load_dataset
from jaxcnn.errors import ConfigError, JaxcnnError, NonFiniteLossError
from jaxcnn.models import Sequential, build_model, summary, to_spec
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
      (40, 'digits')
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
    summary(model, dataset.image_shape)  # raises ShapeError naming the layer that does not fit
    mesh = shd.make_mesh(config.train.num_devices)
    shd.check_batch_size(config.data.batch_size, mesh)
    # A bad micro-batch or host-memory setting fails here, before any data moves.
    policy = resolve_policy(config.data.batch_size, impl=config.model.impl,
                            micro_batches=config.train.micro_batches,
                            host_memory=config.train.reuse_host_memory,
                            num_devices=mesh.devices.size)
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


def default_workdir(config: Config, root: str = "runs") -> str:
    """``runs/<dataset>-<model>-<UTC time>``; spec text is named ``custom``.

    Example:
      >>> default_workdir(Config()).startswith("runs/digits-seed_cnn-")
      True
    """
    model = config.model.name if re.fullmatch(r"\w+", config.model.name) else "custom"
    data = re.sub(r"[^\w.-]+", "_", config.data.dataset)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
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
      ``images_per_s``, ``workdir``, and ``val_accuracy`` with validation data.

    Example:
      >>> import tempfile
      >>> from jaxcnn.config import override
      >>> cfg = override(Config(), {"train.epochs": 1, "train.num_devices": 1})
      >>> out = train_and_evaluate(cfg, tempfile.mkdtemp(), progress=False)
      >>> 0.0 <= out["test_accuracy"] <= 1.0
      True
    """
    with contextlib.ExitStack() as lock:  # the run directory's lock, held to the end
        return _train_and_evaluate(config, workdir, dataset, progress, callbacks, force_new,
                                   lock)


def _train_and_evaluate(config, workdir, dataset, progress, callbacks, force_new,
                        lock: contextlib.ExitStack) -> dict:
    t_start = time.perf_counter()
    run = prepare(config, dataset)
    workdir = workdir or default_workdir(config)
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
            lock.enter_context(_fs.DirectoryLock(workdir))
        _write_json(os.path.join(workdir, "config.json"), config.to_dict())
        meta = run.meta()
        _write_json(os.path.join(workdir, "meta.json"), meta)
        log.info("model %s: %s parameters; data %s: %s", config.model.name,
                 f"{meta['model']['params']:,}", run.dataset.name, meta["dataset"]["splits"])
        if config.checkpoint.enabled:
            guard = stack.enter_context(ckpt.PreemptionGuard())
            saver = ckpt.CheckpointCallback(
                ckpts, {"config": config.to_dict(), **meta}, steps_per_epoch=run.steps_per_epoch,
                every_steps=config.checkpoint.every_steps,
                every_epochs=config.checkpoint.every_epochs, history=history, guard=guard)
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
                policy=run.policy,
                **fit_options(config.data, run.dataset.image_shape))
        except NonFiniteLossError as e:
            # Say which checkpoint is on disk (the in-memory state dies with the process).
            from jaxcnn.checkpoint import explain_divergence

            raise explain_divergence(e, saver.checkpoints if saver else None) from None
    # Leaving the block waited for the last checkpoint write (and raised if it failed).
    train_seconds = time.perf_counter() - t_fit
    if saver is not None and saver.preempted_step is not None:
        write_history(workdir, saver.history)
        raise ckpt.Preempted(step=saver.preempted_step, workdir=workdir,
                             signal_name=guard.requested)
    write_history(workdir, result.history)

    test = evaluate(result.state, run.dataset.test, run.preprocess,
                    config.data.eval_batch_size, run.mesh)
    history = result.history
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
    _write_json(os.path.join(workdir, "summary.json"), out)
    if history:
        from jaxcnn.plots import learning_curves

        learning_curves(history, os.path.join(workdir, "learning_curves.png"),
                        title=f"{config.model.name} on {run.dataset.name}")
    log.info("test accuracy %.4f, test loss %.4f, %.1fs training; wrote %s",
             test["accuracy"], test["loss"], train_seconds, workdir)
    return out


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
    "Run", "default_workdir", "prepare", "train_and_evaluate", "write_history",
]
