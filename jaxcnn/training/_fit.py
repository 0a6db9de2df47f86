"""``fit``: the training loop, built from a plan, a batch source, a program and callbacks.

Reading order, following one batch:

1. :func:`plan_fit` resolves everything once: steps per epoch, the pipeline
   (``device`` or ``stream``), the execution policy and where arrays live.
2. A batch source hands each step its data: the whole split on the device
   plus the epoch's permutation (:class:`_DeviceBatches`), or batches a
   background thread gathers and transfers ahead (:class:`_StreamBatches`).
3. The :class:`~jaxcnn.training.TrainProgram` runs the step as compiled
   call(s): gather, augment, forward, backward, update, metrics.
4. Metrics reach the host only at log points and at the end of each epoch,
   when the validation split is evaluated and callbacks (progress bar, early
   stopping, checkpoints) see the epoch's record.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import sharding as shd
from jaxcnn.data import (Augment, Dataset, Prefetcher, Preprocess, augment_key, choose_pipeline,
                         device_memory_budget)
from jaxcnn.errors import ConfigError, NonFiniteLossError
from jaxcnn.host_memory import reuse_host_memory_for
from jaxcnn.training._callbacks import Callback, EarlyStopping, ProgressBar
from jaxcnn.training._evaluate import evaluate
from jaxcnn.training._policy import ExecutionPolicy, resolve_policy, resolve_steps_per_call
from jaxcnn.training._program import TrainProgram
from jaxcnn.training._state import Keys, TrainState, model_impl

log = logging.getLogger("jaxcnn")


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      state: the final train state (the best one when early stopping restored it).
      history: one record per epoch (see :func:`fit`).
      stopped_early: whether early stopping or a callback ended training.
      pipeline: the input pipeline used: ``device`` or ``stream``.
      stop_reason: why and when training ended before its last epoch, as one
        sentence that also says which parameters ``state`` holds, e.g.
        ``"early stopping at epoch 12: val_loss has not improved for 3 epochs
        (best 0.041 at epoch 9); restored epoch 9's parameters"`` (None: it did
        not stop early). ``fit`` logs it once.
      program: the compiled step's :class:`~jaxcnn.training.TrainProgram`
        (its policy says how the step ran).
      restored_epoch: the epoch whose parameters early stopping restored into
        ``state`` (None: ``state`` is the last step's).
    """

    state: TrainState
    history: list[dict]
    stopped_early: bool = False
    pipeline: str = "device"
    stop_reason: str | None = None
    program: TrainProgram | None = None
    restored_epoch: int | None = None


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """Everything about a fit that is decided once, before the first step.

    Attributes:
      steps_per_epoch: full batches per epoch (the partial batch is dropped).
      pipeline: ``device`` or ``stream``.
      policy: the :class:`~jaxcnn.training.ExecutionPolicy` of the step.
      place: where the state and the split live (a device or a replicated sharding).
      batch_place: where a streamed batch goes.
      program: the step's :class:`~jaxcnn.training.TrainProgram`.
    """

    steps_per_epoch: int
    pipeline: str
    policy: ExecutionPolicy
    place: Any
    batch_place: Any
    program: TrainProgram


def plan_fit(state: TrainState, dataset: Dataset, *, batch_size: int, preprocess: Preprocess,
             mesh=None, pipeline: str = "auto", augment: Augment | None = None,
             memory_budget: int | None = None, micro_batches: int | str = "auto",
             reuse_host_memory: bool | str = False,
             policy: ExecutionPolicy | None = None, label_smoothing: float = 0.0,
             steps_per_call: int | str = "auto") -> FitPlan:
    """Resolves a fit's plan; bad settings fail here, before any data moves.

    Arguments as :func:`fit`; ``policy`` (optional) replaces the one
    :func:`~jaxcnn.training.resolve_policy` would resolve.

    Example:
      >>> import optax
      >>> from jaxcnn.data import load_dataset
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state
      >>> ds = load_dataset("digits")
      >>> s = create_train_state(build_model("seed_cnn", 10), ds.image_shape, optax.adam(1e-3),
      ...                        jax.random.key(0))
      >>> plan = plan_fit(s, ds, batch_size=64, preprocess=Preprocess.fit(ds.train.images))
      >>> plan.steps_per_epoch, plan.pipeline
      (22, 'device')
    """
    n = len(dataset.train)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch size {batch_size} is larger than the training split ({n} examples); "
            f"use a batch size of at most {n}")
    num_devices = mesh.devices.size if mesh is not None else 1
    if mesh is not None:
        shd.check_batch_size(batch_size, mesh)
    policy = policy or resolve_policy(batch_size, impl=model_impl(state),
                                      micro_batches=micro_batches, host_memory=reuse_host_memory,
                                      num_devices=num_devices,
                                      batch_norm=bool(state.batch_stats))
    nbytes = dataset.train.images.nbytes + dataset.train.labels.nbytes
    mode = choose_pipeline(pipeline, nbytes, memory_budget if memory_budget is not None
                           else device_memory_budget() if pipeline == "auto" else 0)
    place = shd.replicated(mesh) if mesh is not None else jax.devices()[0]
    sharding = shd.batch_sharding(mesh) if num_devices > 1 else None
    program = TrainProgram(policy, batch_size, preprocess,
                           steps_per_epoch if mode == "device" else None, augment, sharding,
                           float(label_smoothing),
                           resolve_steps_per_call(steps_per_call, steps_per_epoch))
    return FitPlan(steps_per_epoch, mode, policy, place, sharding or place, program)


def _permutation(key: jax.Array, epoch: int, n: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


_jit_permutation = jax.jit(_permutation, static_argnums=2)


class _DeviceBatches:
    """The whole training split on the device; each step gathers its batch there."""

    def __init__(self, dataset: Dataset, data_key, plan: FitPlan):
        self._key, self._place, self._n = data_key, plan.place, len(dataset.train)
        # np.asarray: images that a data source decodes on demand are read here, once.
        # Every process holds the whole split (each device gathers its rows of any batch).
        self._images = shd.put(np.asarray(dataset.train.images), plan.place)
        self._labels = shd.put(np.asarray(dataset.train.labels), plan.place)
        self._perm = None

    def start_epoch(self, epoch: int) -> None:
        # Committed placement for every argument: the compiled step then sees the same
        # shardings on every call and compiles once.
        self._perm = shd.put(_jit_permutation(self._key, epoch, self._n), self._place)

    def next(self) -> tuple:
        return self._images, self._labels, self._perm

    def next_many(self, k: int) -> tuple:
        return self.next()  # each step of a multi-step call gathers its own batch

    def close(self) -> None:
        pass


class _StreamBatches:
    """Host batches that a background thread gathers and puts on the device ahead."""

    def __init__(self, dataset: Dataset, data_key, plan: FitPlan, *, batch_size: int,
                 start_step: int, num_steps: int, prefetch: int):
        n = len(dataset.train)
        self._feeder = Prefetcher(
            dataset.train.images, dataset.train.labels,
            lambda e: jax.device_get(_jit_permutation(data_key, e, n)), batch_size,
            plan.steps_per_epoch, start_step, num_steps, plan.batch_place, prefetch)
        self._batches = iter(self._feeder)

    def start_epoch(self, epoch: int) -> None:
        pass

    def next(self) -> tuple:
        return next(self._batches)

    def next_many(self, k: int) -> tuple:
        """``k`` batches stacked on a new leading axis (for a multi-step call)."""
        batches = [next(self._batches) for _ in range(k)]
        return tuple(jnp.stack(parts) for parts in zip(*batches))

    def close(self) -> None:
        self._feeder.close()


def fit(
    state: TrainState,
    dataset: Dataset,
    *,
    keys: Keys,
    epochs: int,
    batch_size: int,
    preprocess: Preprocess,
    eval_batch_size: int = 500,
    mesh=None,
    learning_rate: Callable[[int], Any] | None = None,
    early_stopping_patience: int = 0,
    early_stopping_metric: str = "val_loss",
    restore_best: bool = True,
    log_every_seconds: float = 1.0,
    callbacks: Sequence[Callback] = (),
    history: list[dict] | None = None,
    progress: bool = True,
    pipeline: str = "auto",
    augment: Augment | None = None,
    memory_budget: int | None = None,
    prefetch: int = 2,
    micro_batches: int | str = "auto",
    reuse_host_memory: bool | str = False,
    policy: ExecutionPolicy | None = None,
    label_smoothing: float = 0.0,
    steps_per_call: int | str = "auto",
) -> FitResult:
    """Trains ``state`` on ``dataset.train`` for ``epochs`` epochs.

    When the training split fits the memory budget it is put on the
    device(s) once and each step gathers its batch there; otherwise a
    background thread streams host batches to the device ahead of the step
    (see :class:`jaxcnn.data.Prefetcher`). Either way each epoch draws a permutation
    from ``fold_in(keys.data, epoch)``; the trailing partial batch is dropped
    (a different one each epoch). Each step is one compiled call (augment,
    forward, backward, update, metrics; a large batch on CPU may be spread
    over a few calls, see :class:`~jaxcnn.training.ExecutionPolicy`);
    metrics reach the host only at log points and at the end of each epoch,
    when the validation split (if any) is evaluated.

    Training resumes where ``state.step`` says: epoch ``step //
    steps_per_epoch``, batch ``step % steps_per_epoch``.

    Each history record has ``epoch`` (1-based), ``step``, ``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy`` (with validation data),
    ``learning_rate``, ``seconds`` (training time of the epoch),
    ``eval_seconds`` and ``images_per_s``.

    Args:
      state: the initial (or restored) state.
      dataset: the data; ``dataset.validation`` is evaluated each epoch.
      keys: the run's keys (:func:`~jaxcnn.training.split_keys`).
      epochs: total epochs (counting epochs already done).
      batch_size: training batch size (a multiple of the mesh size).
      preprocess: the run's :class:`~jaxcnn.data.Preprocess`.
      eval_batch_size: validation batch size.
      mesh: a data mesh (:func:`jaxcnn.sharding.make_mesh`); None: one device.
      learning_rate: the schedule, to log the rate of each epoch.
      early_stopping_patience: epochs without improvement before stopping (0: off).
      early_stopping_metric: ``val_loss`` or ``val_accuracy``.
      restore_best: after early stopping, return the best epoch's state.
      log_every_seconds: how often to refresh the progress bar's metrics.
      callbacks: :class:`~jaxcnn.training.Callback` hooks.
      history: records of earlier epochs (when resuming).
      progress: show a progress bar on stderr (in a multi-process job, process 0 only).
      pipeline: ``auto``, ``device`` or ``stream`` (see
        :func:`jaxcnn.data.choose_pipeline`).
      augment: on-device augmentation (:class:`jaxcnn.data.Augment`), keyed
        by ``fold_in(augment_key(keys), step)``; None: none.
      memory_budget: bytes the training split may take on the device (None:
        :func:`jaxcnn.data.device_memory_budget`'s default).
      prefetch: batches in flight on the streaming path.
      micro_batches: ``"auto"`` or how many micro-batches each step runs as
        (:func:`~jaxcnn.training.resolve_policy`).
      reuse_host_memory: ``"auto"``, True or False (default): whether glibc
        keeps freed host memory for the next step, process-wide
        (:mod:`jaxcnn.host_memory`; ``auto`` decides from the compiled step's
        temporaries). Off by default: a library call does not change its
        host process unless asked.
      policy: an :class:`~jaxcnn.training.ExecutionPolicy` to use instead of
        the one resolved from ``micro_batches`` and ``reuse_host_memory``.
      label_smoothing: smooth the training loss's one-hot targets by this
        much (:func:`~jaxcnn.training.cross_entropy`; 0: none). Validation
        and test losses are never smoothed.
      steps_per_call: optimiser steps per compiled call (``lax.scan``; see
        :class:`~jaxcnn.training.TrainProgram`), or ``"auto"``
        (:func:`~jaxcnn.training.resolve_steps_per_call`). An epoch's last
        ``steps_per_epoch % steps_per_call`` steps run one per call; step
        callbacks run after each call, so every ``steps_per_call`` steps.

    Returns:
      A :class:`FitResult`.

    Raises:
      NonFiniteLossError: a loss was NaN or Inf; ``err.state`` is the last good state.

    Example:
      >>> import optax
      >>> from jaxcnn.data import load_dataset
      >>> from jaxcnn.models import build_model
      >>> from jaxcnn.training import create_train_state, split_keys
      >>> ds = load_dataset("digits")
      >>> keys = split_keys(0)
      >>> state = create_train_state(build_model("seed_cnn", 10), ds.image_shape,
      ...                            optax.adam(1e-3), keys.init)
      >>> result = fit(state, ds, keys=keys, epochs=1, batch_size=64,
      ...              preprocess=Preprocess.fit(ds.train.images), progress=False)
      >>> result.history[0]["epoch"], int(result.state.step)
      (1, 22)
    """
    if early_stopping_patience and dataset.validation is None:
        raise ConfigError("early stopping needs validation data; set data.validation_fraction "
                          "(e.g. 0.1) or turn early stopping off")
    plan = plan_fit(state, dataset, batch_size=batch_size, preprocess=preprocess, mesh=mesh,
                    pipeline=pipeline, augment=augment, memory_budget=memory_budget,
                    micro_batches=micro_batches, reuse_host_memory=reuse_host_memory,
                    policy=policy, label_smoothing=label_smoothing,
                    steps_per_call=steps_per_call)
    program, spe = plan.program, plan.steps_per_epoch
    single = dataclasses.replace(program, steps_per_call=1)
    history = list(history or [])
    state = shd.put(state, plan.place)
    dropout_key = shd.put(keys.dropout, plan.place)
    aug_key = shd.put(augment_key(keys), plan.place) if augment is not None else None
    step = int(jax.device_get(state.step))
    start_epoch, start_index = divmod(step, spe)
    if plan.pipeline == "device":
        source = _DeviceBatches(dataset, keys.data, plan)
    else:
        source = _StreamBatches(dataset, keys.data, plan, batch_size=batch_size,
                                start_step=step, num_steps=max(epochs * spe - step, 0),
                                prefetch=prefetch)

    carry = {}
    callbacks = list(callbacks)
    bar = None
    if progress and jax.process_index() == 0:  # in a multi-process job, process 0's bar
        bar = ProgressBar(epochs, batch_size, lambda: _host_metrics(carry["acc"], state),
                          log_every_seconds)
        callbacks.insert(0, bar)
    stopper = None
    if early_stopping_patience:
        stopper = EarlyStopping(early_stopping_metric, early_stopping_patience, restore_best,
                                history)
        callbacks.append(stopper)
    for cb in callbacks:
        cb.on_train_start(state)
    stopped, host_memory_pending = False, plan.policy.host_memory is not False
    try:
        for epoch in range(start_epoch, epochs):
            source.start_epoch(epoch)
            carry = program.init_carry(state, plan.place)
            first = start_index if epoch == start_epoch else 0
            for cb in callbacks:
                # Optional: callbacks written before this hook existed do not have it.
                if hasattr(cb, "on_epoch_start"):
                    cb.on_epoch_start(epoch, first, spe)
            t0 = time.perf_counter()
            index = first
            while index < spe:
                # K steps per call while K steps of the epoch remain, then one at a time.
                k = program.steps_per_call if spe - index >= program.steps_per_call else 1
                call = program if k == program.steps_per_call else single
                data = source.next_many(k) if k > 1 else source.next()
                if host_memory_pending:
                    # Compiles the step (the call below reuses it) to read its temporaries.
                    host_memory_pending = False
                    lowered = call.lower(state, carry, data, dropout_key, aug_key)
                    reuse_host_memory_for(lowered[0].compile(), plan.policy.host_memory)
                state, carry = call.step(state, carry, data, dropout_key, aug_key)
                del data
                step += k
                index += k
                if any([cb.on_step_end(state, step) for cb in callbacks]):
                    stopped = True
                    break
            m = _host_metrics(carry["acc"], state)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "step": step, "loss": m["loss"],
                      "accuracy": m["accuracy"]}
            if learning_rate is not None:
                record["learning_rate"] = float(learning_rate(step))
            t1 = time.perf_counter()
            if dataset.validation is not None:
                val = evaluate(state, dataset.validation, preprocess, eval_batch_size, mesh)
                record |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
            record |= {"seconds": seconds, "eval_seconds": time.perf_counter() - t1,
                       "images_per_s": m["steps"] * batch_size / max(seconds, 1e-9)}
            history.append(record)
            if any([cb.on_epoch_end(state, record) for cb in callbacks]):
                stopped = True
            if stopped:
                break
    finally:
        if bar is not None:
            bar.close()
        source.close()
    reason, restored = None, None
    if stopped:
        reason, state, restored = _stop_reason(stopper, restore_best, state, step, spe)
        log.info("%s", reason)
    for cb in callbacks:
        cb.on_train_end(state, history)
    return FitResult(state, history, stopped, plan.pipeline, reason, program, restored)


def _stop_reason(stopper: EarlyStopping | None, restore_best: bool, state: TrainState,
                 step: int, steps_per_epoch: int) -> tuple[str, TrainState, int | None]:
    """Why and when training stopped early, and which parameters ``fit`` returns.

    Returns ``(sentence, state, restored_epoch)``.

    Example:
      >>> print(_stop_reason(None, True, None, 31, 22)[0])
      training stopped at step 31 (epoch 2, batch 9): a callback asked to stop; kept the
      parameters of step 31
    """
    if stopper is None or not stopper.reason:
        epoch, batch = divmod(step, steps_per_epoch)
        where = (f"epoch {epoch}" if batch == 0 else f"epoch {epoch + 1}, batch {batch}")
        return (f"training stopped at step {step} ({where}): a callback asked to stop; kept "
                f"the parameters of step {step}", state, None)
    best = stopper.best_epoch
    if stopper.best_state is not None:
        return (f"{stopper.reason}; restored epoch {best}'s parameters", stopper.best_state,
                best)
    if restore_best:
        # The best epoch came before a resume: its state was never in this process.
        return (f"{stopper.reason}; kept the last epoch's parameters (epoch {best} was trained "
                f"before the run resumed, so its parameters are only in its checkpoint, if "
                "one was kept)", state, None)
    return (f"{stopper.reason}; kept the last epoch's parameters (train.restore_best is off)",
            state, None)


def _host_metrics(acc, state) -> dict[str, float]:
    """Pulls the epoch's running metrics to the host; raises on a non-finite loss."""
    a = jax.device_get(acc)
    if int(a["bad_step"]) >= 0:
        raise NonFiniteLossError(
            f"the training loss became NaN or Inf at step {int(a['bad_step'])}; training stopped "
            f"and the state from step {int(a['bad_step']) - 1} (the last good one) was kept. "
            "Lower the learning rate (e.g. --lr 1e-4), clip gradients "
            "(--set optimizer.grad_clip_norm=1.0), or check the inputs for NaN/Inf.",
            step=int(a["bad_step"]), state=state)
    steps = max(int(a["steps"]), 1)
    return {"loss": float(a["loss"]) / steps, "accuracy": float(a["accuracy"]) / steps,
            "steps": int(a["steps"])}
