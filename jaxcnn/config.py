"""Typed, frozen run configuration that round-trips through JSON.

A run is described by one :class:`Config` holding five sections: ``model``,
``optimizer``, ``data``, ``train`` and ``checkpoint``. Every value is checked when the config
is made; unknown keys are refused with the list of valid ones.

Example:
  >>> cfg = Config()
  >>> cfg = override(cfg, {"optimizer.learning_rate": "3e-4", "train.epochs": 5})
  >>> cfg.optimizer.learning_rate, cfg.train.epochs
  (0.0003, 5)
  >>> Config.from_json(cfg.to_json()) == cfg
  True
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Mapping

from jaxcnn import host_memory
from jaxcnn.errors import ConfigError, did_you_mean

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")
SCHEDULES = ("constant", "warmup_cosine", "step", "linear", "one_cycle")
# Optimisers that use ``optimizer.weight_decay`` (decoupled; ``optimizer.l2`` is for all).
DECAY_OPTIMIZERS = ("adamw",)
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")


# The largest seed: jax.random.key and NumPy's generators take 0 ... 2**63 - 1.
MAX_SEED = 2**63 - 1
# The largest count (epochs, steps, batch sizes, ...): the training step counter is an int32.
MAX_COUNT = 2**31 - 1
# Ints that may exceed MAX_COUNT (checked to fit in an int64 instead).
_BIG_INTS = {"memory_budget_bytes"}


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-12:]} ({len(text)} characters)"


def _check_numbers(section: Any, name: str) -> None:
    """Refuses non-finite floats, ints out of range and NUL characters in a config section.

    Runs before the section's own checks, so they compare ordinary numbers.
    """
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, str) and "\x00" in v:  # no path or name holds one
                raise ConfigError(f"{name}.{f.name} must not contain a NUL character; got "
                                  f"{_show(v)}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{name}.{f.name} must be a finite number; got {v!r}")
            if (isinstance(v, int) and not isinstance(v, bool) and "int" in str(f.type)
                    and f.name != "seed"):  # the seed has a range of its own
                top = MAX_SEED if f.name in _BIG_INTS else MAX_COUNT
                _check(-top - 1 <= v <= top,
                       f"{name}.{f.name} must be at most {top}; got {_show(v)}"
                       if v > 0 else f"{name}.{f.name} is out of range; got {_show(v)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model to build.

    Attributes:
      name: a zoo name (``seed_cnn``, ``keras_convnet``, ``flax_cnn``) or spec
        text (see :mod:`jaxcnn.models`).
      dtype: computation dtype: ``float32`` or ``bfloat16`` (parameters stay float32).
      impl: convolution/pooling implementation: ``auto``, ``xla`` or ``fast``.

    Example:
      >>> ModelConfig(name="conv(16,3) maxpool(2) flatten softmax").dtype
      'float32'
    """

    name: str = "seed_cnn"
    dtype: str = "float32"
    impl: str = "auto"

    def __post_init__(self):
        _check_numbers(self, "model")
        _check(isinstance(self.name, str) and self.name.strip() != "",
               "model.name must be a zoo name or spec text")
        _check(self.dtype in ("float32", "bfloat16", "float16"),
               f"model.dtype must be float32, bfloat16 or float16; got {self.dtype!r}")
        _check(self.impl in ("auto", "xla", "fast"),
               f"model.impl must be auto, xla or fast; got {self.impl!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser and its learning-rate schedule.

    Attributes:
      name: ``adam`` (default), ``adamw``, ``sgd``, ``rmsprop`` or ``adagrad``.
      learning_rate: peak learning rate (> 0).
      b1, b2, eps: Adam's decay rates of the first and second moment
        estimates and its denominator constant.
      momentum: momentum for ``sgd`` and ``rmsprop`` (0 for none). The Adam
        family has its own (``b1``): a non-zero momentum with ``adam``,
        ``adamw`` or ``adagrad`` is refused rather than ignored.
      nesterov: Nesterov momentum for ``sgd``; needs ``momentum > 0`` (without
        momentum it means nothing, so it is refused).
      rho: decay rate of ``rmsprop``'s squared-gradient average.
      weight_decay: decoupled weight decay of ``adamw`` (Loshchilov and
        Hutter; optax's ``adamw``): each step subtracts
        ``learning_rate * weight_decay * w`` beside the Adam step, so the
        decay follows the schedule. It applies to kernels only (parameters
        with 2 or more dimensions: conv and dense kernels), never to biases or
        normalisation scales and offsets. Other optimisers ignore it; they
        take ``l2``.
      l2: an L2 penalty on kernels for any optimiser (0: none):
        ``l2 * w`` is added to the gradient before the optimiser, so it goes
        through momentum and Adam's moment estimates ("coupled" decay). This
        is what the ``weight_decay`` argument of ``torch.optim.SGD`` and
        ``torch.optim.Adam`` does, so PyTorch recipes' values carry over
        (e.g. ``--optimizer sgd --momentum 0.9 --nesterov --l2 5e-4``). Kernels
        only, like ``weight_decay``.
      schedule: ``constant``, ``warmup_cosine`` (linear warm-up from 0 for
        ``warmup_steps`` then cosine decay to ``end_factor * learning_rate`` at
        the end of training), ``linear`` (linear warm-up from 0 for
        ``warmup_steps`` then linear decay to ``end_factor * learning_rate`` at
        the end: the triangular schedule of fast CIFAR-10 recipes such as
        airbench), ``one_cycle`` (Smith's one-cycle, as optax's
        ``cosine_onecycle_schedule``: a cosine rise from ``learning_rate / 25``
        over ``warmup_steps``, then a cosine fall to ``end_factor *
        learning_rate``; pick ``warmup_steps`` near 0.3 of the run's steps, the
        usual choice) or ``step`` (multiply by ``step_factor`` at each
        fraction of training in ``step_boundaries``). With ``warmup_steps=0``
        the warm-up schedules start at the peak rate.
      warmup_steps: steps of warm-up (``warmup_cosine``, ``linear``,
        ``one_cycle``); capped at the run's steps minus one.
      end_factor: the final rate as a fraction of ``learning_rate``
        (``warmup_cosine``, ``linear``, ``one_cycle``).
      grad_clip_norm: clip gradients to this global norm (None: no clipping).

    Example:
      >>> OptimizerConfig(learning_rate=3e-4, schedule="warmup_cosine", warmup_steps=100).name
      'adam'
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False
    rho: float = 0.9
    weight_decay: float = 1e-4
    l2: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    end_factor: float = 0.0
    step_boundaries: tuple[float, ...] = (0.5, 0.75)
    step_factor: float = 0.1
    grad_clip_norm: float | None = None

    def __post_init__(self):
        _check_numbers(self, "optimizer")
        _check(self.name in OPTIMIZERS,
               f"optimizer.name must be one of {', '.join(OPTIMIZERS)}; got {self.name!r}")
        _check(isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0,
               f"optimizer.learning_rate must be > 0; got {self.learning_rate!r}. "
               "Adam's usual value is 1e-3 (--lr 1e-3).")
        _check(0 <= self.b1 < 1 and 0 <= self.b2 < 1,
               f"optimizer.b1 and b2 must be in [0, 1); got {self.b1}, {self.b2}")
        _check(self.eps > 0, f"optimizer.eps must be > 0; got {self.eps}")
        _check(0 <= self.momentum < 1, f"optimizer.momentum must be in [0, 1); got {self.momentum}")
        _check(0 < self.rho < 1, f"optimizer.rho must be in (0, 1); got {self.rho}")
        _check(self.weight_decay >= 0, f"optimizer.weight_decay must be >= 0; got "
               f"{self.weight_decay}")
        _check(self.l2 >= 0, f"optimizer.l2 must be >= 0 (0: none); got {self.l2}")
        _check(self.momentum == 0 or self.name in MOMENTUM_OPTIMIZERS,
               f"optimizer.momentum applies to {' and '.join(MOMENTUM_OPTIMIZERS)}, not "
               f"{self.name}; got momentum {self.momentum}. Adam's momentum is optimizer.b1 "
               f"(--set optimizer.b1=0.9); drop --momentum or use --optimizer sgd")
        _check(not self.nesterov or (self.name == "sgd" and self.momentum > 0),
               "optimizer.nesterov needs optimizer.name sgd and optimizer.momentum > 0 "
               f"(Nesterov is a kind of momentum); got name {self.name}, momentum "
               f"{self.momentum}. Use it with --optimizer sgd --momentum 0.9, or drop --nesterov")
        _check(self.schedule in SCHEDULES,
               f"optimizer.schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        _check(self.warmup_steps >= 0, "optimizer.warmup_steps must be >= 0")
        _check(all(0 < b < 1 for b in self.step_boundaries),
               "optimizer.step_boundaries are fractions of training in (0, 1)")
        _check(self.step_factor > 0, "optimizer.step_factor must be > 0")
        _check(self.grad_clip_norm is None or self.grad_clip_norm > 0,
               "optimizer.grad_clip_norm must be > 0 or None")
        _check(self.end_factor >= 0, f"optimizer.end_factor must be >= 0; got {self.end_factor}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data to train on and how to batch it.

    Attributes:
      dataset: ``digits`` (embedded, offline), ``synthetic:HxWxC:K`` or another
        registered name (see :func:`jaxcnn.data.load_dataset`).
      batch_size: training batch size (the last partial batch of an epoch is
        dropped; every epoch reshuffles, so every example is still used).
      eval_batch_size: evaluation batch size (every example is evaluated
        exactly once: the last batch is padded and masked).
      validation_fraction: fraction of the training split held out for
        per-epoch validation when the dataset has no validation split (0: none).
        The default 0 trains on the whole training split: the default recipe
        fixes its epoch count, so it needs no validation data to choose one
        (docs/experiments.md, "The default recipe"). Set 0.1 for per-epoch
        validation, early stopping and a best checkpoint chosen by it.
      normalize: standardise each channel with the training split's mean and std.
      data_dir: where prepared tfds datasets live (None: ``$TFDS_DATA_DIR``, else
        ``~/tensorflow_datasets``).
      train_split: tfds split (syntax ``train``, ``train[:90%]``) to train on.
      validation_split: tfds split for validation (None: the dataset's
        ``validation`` split when ``validation_fraction`` > 0 and it has one,
        else ``validation_fraction`` of train).
      test_split: tfds split for the final evaluation.
      pipeline: ``auto`` (put the training split on the device when it fits the
        memory budget, else stream), ``device`` or ``stream`` (host batches
        prefetched to the device by a background thread).
      device_memory_fraction: share of the device's memory the training split
        may take on the device (accelerators that report their memory).
      memory_budget_bytes: the budget in bytes (used on devices that do not
        report their memory, such as the CPU; None: 2 GiB there).
      prefetch: batches the streaming path keeps in flight on the device.
      augment: random shifts (a crop after ``crop_padding`` pixels of zero
        padding) and horizontal flips on the device inside the compiled step;
        None: on for colour images of at least 24x24 (CIFAR/SVHN-like) and
        grey images below 24x24 (the 8x8 digits), off otherwise (MNIST-like);
        see :func:`jaxcnn.data.default_augment`.
      crop_padding: pixels of zero padding around each image before the
        random crop (0: no crop; None: by shape, 4 for CIFAR-size colour, 1
        on 8x8 grey; see :func:`jaxcnn.data.shape_augment`).
      flip: include the random horizontal flip when augmenting (None: for
        colour images only; a mirrored digit can be another class).

    Example:
      >>> DataConfig(batch_size=64).dataset
      'digits'
    """

    dataset: str = "digits"
    batch_size: int = 32
    eval_batch_size: int = 500
    validation_fraction: float = 0.0
    normalize: bool = True
    data_dir: str | None = None
    train_split: str = "train"
    validation_split: str | None = None
    test_split: str = "test"
    pipeline: str = "auto"
    device_memory_fraction: float = 0.25
    memory_budget_bytes: int | None = None
    prefetch: int = 2
    augment: bool | None = None
    crop_padding: int | None = None
    flip: bool | None = None

    def __post_init__(self):
        _check_numbers(self, "data")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1,
               f"data.batch_size must be a positive int; got {self.batch_size!r}")
        _check(isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1,
               f"data.eval_batch_size must be a positive int; got {self.eval_batch_size!r}")
        _check(0 <= self.validation_fraction < 1,
               f"data.validation_fraction must be in [0, 1); got {self.validation_fraction}")
        _check(self.pipeline in ("auto", "device", "stream"),
               f"data.pipeline must be auto, device or stream; got {self.pipeline!r}")
        _check(0 < self.device_memory_fraction <= 1,
               "data.device_memory_fraction must be in (0, 1]; got "
               f"{self.device_memory_fraction}")
        _check(self.memory_budget_bytes is None or self.memory_budget_bytes >= 0,
               f"data.memory_budget_bytes must be >= 0 or None; got {self.memory_budget_bytes}")
        _check(isinstance(self.prefetch, int) and self.prefetch >= 1,
               f"data.prefetch must be an int >= 1; got {self.prefetch!r}")
        _check(self.crop_padding is None or (
            isinstance(self.crop_padding, int) and self.crop_padding >= 0),
            f"data.crop_padding must be an int >= 0 or None (by image shape); got "
            f"{self.crop_padding!r}")
        _check(bool(self.train_split) and bool(self.test_split),
               "data.train_split and data.test_split must be split names, e.g. train, test")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and how to train.

    Attributes:
      epochs: passes over the training split.
      seed: the root seed; it is split into init, data-order and dropout keys.
      label_smoothing: train against targets ``(1 - s) * one_hot + s / K``
        (0: plain one-hot; see :func:`jaxcnn.training.cross_entropy`). Only
        the training loss is smoothed; validation and test losses are not,
        so a well-fit model's training loss stays near ``s * log(K)`` plus
        the targets' entropy (about 0.5 for 0.1 and 10 classes) while its
        test loss goes towards 0. The default 0.1 raised the default
        recipe's worst seed on digits (docs/experiments.md).
      early_stopping_patience: stop after this many epochs without improvement
        of ``early_stopping_metric`` (0: off; needs validation data).
      early_stopping_metric: ``val_loss`` (lower is better) or ``val_accuracy``.
      restore_best: with early stopping, end on the best epoch's parameters.
      log_every_seconds: how often the progress bar pulls metrics from the
        device (a device sync); epochs always end with one.
      num_devices: devices to shard each batch over (None: all local devices).
      micro_batches: ``auto`` or how many micro-batches each step runs as,
        one after the other, with one update from their summed gradients
        (1: the whole batch in one pass). ``auto`` splits batches of 64 to
        256 images into micro-batches of 32-64 images on the CPU fast path,
        where that ran faster (:func:`jaxcnn.training.resolve_micro_batches`).
      reuse_host_memory: keep freed host memory in the process for reuse
        (:func:`jaxcnn.host_memory.reuse_host_memory`, process-wide). ``auto``: when
        the compiled CPU step's temporary buffer is 32-64 MiB, which glibc
        would otherwise map afresh and page-fault through every step
        (:func:`jaxcnn.host_memory.reuse_host_memory_for`).
      steps_per_call: ``auto`` or how many optimiser steps one compiled call
        runs (a ``lax.scan``; results as one step per call).
        ``auto`` is 1 (:func:`jaxcnn.training.resolve_steps_per_call`).

    Example:
      >>> TrainConfig(epochs=3).seed
      0
    """

    epochs: int = 40
    seed: int = 0
    label_smoothing: float = 0.1
    early_stopping_patience: int = 0
    early_stopping_metric: str = "val_loss"
    restore_best: bool = True
    log_every_seconds: float = 1.0
    num_devices: int | None = None
    micro_batches: int | str = "auto"
    reuse_host_memory: bool | str = "auto"
    steps_per_call: int | str = "auto"

    def __post_init__(self):
        _check_numbers(self, "train")
        _check(isinstance(self.epochs, int) and self.epochs >= 1,
               f"train.epochs must be a positive int; got {self.epochs!r}")
        _check(isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED,
               f"train.seed must be an int from 0 to {MAX_SEED} (2**63 - 1); got "
               f"{_show(self.seed)}")
        _check(isinstance(self.label_smoothing, (int, float)) and not isinstance(
            self.label_smoothing, bool) and 0 <= self.label_smoothing < 1,
            f"train.label_smoothing must be in [0, 1) (0.1 is usual; 0: none); got "
            f"{self.label_smoothing!r}")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience must be >= 0")
        _check(self.early_stopping_metric in ("val_loss", "val_accuracy"),
               "train.early_stopping_metric must be val_loss or val_accuracy")
        _check(self.log_every_seconds > 0, "train.log_every_seconds must be > 0")
        _check(self.num_devices is None or self.num_devices >= 1,
               "train.num_devices must be >= 1 or None")
        _check(self.micro_batches == "auto" or (
            isinstance(self.micro_batches, int) and not isinstance(self.micro_batches, bool)
            and self.micro_batches >= 1),
            f"train.micro_batches must be 'auto' or an int >= 1 (1: the whole batch in one "
            f"pass); got {self.micro_batches!r}")
        _check(host_memory.is_host_memory_setting(self.reuse_host_memory),
               f"train.reuse_host_memory must be auto, true or false; got "
               f"{self.reuse_host_memory!r}")
        _check(self.steps_per_call == "auto" or (
            isinstance(self.steps_per_call, int) and not isinstance(self.steps_per_call, bool)
            and self.steps_per_call >= 1),
            f"train.steps_per_call must be 'auto' or an int >= 1 (1: one step per compiled "
            f"call); got {self.steps_per_call!r}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save checkpoints of a training run and which to keep.

    Checkpoints live in ``<workdir>/checkpoints``; running the same command on
    the same workdir again resumes from the latest one (see
    :mod:`jaxcnn.checkpoint`). The final state, and the state at a SIGTERM or
    SIGINT, are always saved while ``enabled``.

    Attributes:
      enabled: save checkpoints and resume from them.
      every_steps: also save every this many steps (0: off).
      every_epochs: save at the end of every this many epochs (0: off).
      min_interval_seconds: skip an epoch-end save when the last save is
        less than this many seconds old, unless the epoch improves
        ``best_metric`` (0: save every due epoch). For short epochs: the
        default run's 0.2 s epochs spent about a fifth of their time saving.
        A SIGKILL loses at most this long (or one epoch, if longer); a
        SIGTERM or Ctrl-C, and the end of training, always save.
      keep: how many of the most recent checkpoints to keep (>= 1).
      keep_best: also keep this many best checkpoints by ``best_metric`` (0: none).
      best_metric: ``val_accuracy``, ``val_loss``, ``accuracy`` or ``loss`` of
        the epoch's history record (``*loss`` is better when lower). Saves
        without that metric (mid-epoch, or no validation data) never count as
        best; with none at all, the best is the latest.
      async_save: write checkpoints in a background thread while training
        goes on (training only waits for the copy off the device).

    Example:
      >>> CheckpointConfig(every_steps=100, keep=2).best_metric
      'val_accuracy'
    """

    enabled: bool = True
    every_steps: int = 0
    every_epochs: int = 1
    min_interval_seconds: float = 10.0
    keep: int = 3
    keep_best: int = 1
    best_metric: str = "val_accuracy"
    async_save: bool = True

    def __post_init__(self):
        _check_numbers(self, "checkpoint")
        _check(isinstance(self.every_steps, int) and self.every_steps >= 0,
               f"checkpoint.every_steps must be an int >= 0 (0: off); got {self.every_steps!r}")
        _check(isinstance(self.every_epochs, int) and self.every_epochs >= 0,
               f"checkpoint.every_epochs must be an int >= 0 (0: off); got {self.every_epochs!r}")
        _check(isinstance(self.min_interval_seconds, (int, float))
               and not isinstance(self.min_interval_seconds, bool)
               and self.min_interval_seconds >= 0,
               f"checkpoint.min_interval_seconds must be a number >= 0 (0: save every due "
               f"epoch); got {self.min_interval_seconds!r}")
        _check(isinstance(self.keep, int) and self.keep >= 1,
               f"checkpoint.keep must be an int >= 1 (the latest checkpoint is needed to "
               f"resume); got {self.keep!r}")
        _check(isinstance(self.keep_best, int) and self.keep_best >= 0,
               f"checkpoint.keep_best must be an int >= 0; got {self.keep_best!r}")
        _check(self.best_metric in BEST_METRICS,
               f"checkpoint.best_metric must be one of {', '.join(BEST_METRICS)}; "
               f"got {self.best_metric!r}")


BEST_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")


def improves(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of a history metric beats ``best`` (None: nothing yet).

    The one rule for every "best so far": a ``*loss`` is better when lower,
    anything else (accuracies) when higher. Used by early stopping, the
    checkpoint saver and the best-checkpoint ranking.

    Example:
      >>> improves("val_loss", 0.1, 0.2), improves("val_accuracy", 0.9, 0.95), improves("loss", 1.0, None)
      (True, False, True)
    """
    if best is None:
        return True
    return value < best if metric.endswith("loss") else value > best


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run: model, optimiser, data, training and checkpoint settings.

    Example:
      >>> Config().model.name
      'seed_cnn'
      >>> Config.from_dict({"train": {"epochs": 2}}).train.epochs
      2
    """

    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (tuples become lists)."""
        return json.loads(self.to_json())

    def to_json(self, indent: int | None = 2) -> str:
        """The config as JSON text."""
        return json.dumps(dataclasses.asdict(self), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Config":
        """Builds a config from nested dicts; missing keys take defaults.

        Raises:
          ConfigError: for an unknown key (the message lists the valid ones)
            or a value of the wrong type.
        """
        return _from_dict(cls, d, "")

    @classmethod
    def from_json(cls, text: str | bytes) -> "Config":
        """Builds a config from JSON text (see :meth:`from_dict`).

        Raises:
          ConfigError: for text that is not UTF-8 JSON, nests too deeply,
            repeats a key, or is not an object; and as :meth:`from_dict`.

        Example:
          >>> Config.from_json('{"train": {"epochs": 2}}').train.epochs
          2
          >>> try:
          ...     Config.from_json('[1, 2]')
          ... except ConfigError as e:
          ...     print(e)
          config must be a mapping (a JSON object); got [1, 2]
        """
        return cls.from_dict(parse_json(text))


def parse_json(text: str | bytes) -> Any:
    """Parses config JSON, refusing what :meth:`Config.from_json` refuses (before building).

    Example:
      >>> parse_json('{"a": 1}')
      {'a': 1}
      >>> try:
      ...     parse_json('{"a": 1, "a": 2}')
      ... except ConfigError as e:
      ...     print(e)
      the key 'a' appears twice in one object
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError(f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset "
                              f"{e.start}; save the file as UTF-8 JSON") from None
    if not isinstance(text, str):
        raise ConfigError(f"config JSON must be text; got {type(text).__name__}")

    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise ConfigError(f"the key {_show(key)} appears twice in one object")
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError("not valid config JSON: nested too deeply (a config is an object of "
                          "objects, two levels deep)") from None
    except ValueError as e:  # JSONDecodeError, or an int of more digits than int() takes
        raise ConfigError(f"not valid JSON: {str(e)[:200]}") from None


def _from_dict(cls, d: Mapping[str, Any], prefix: str):
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping (a JSON object); "
                          f"got {_show(d)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(d) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(prefix + k for k in unknown)}; valid keys: "
            f"{', '.join(prefix + k for k in fields)}."
            + next(filter(None, (_key_hint(prefix + k) for k in unknown)), "")
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Converts JSON/CLI values to the field's type (str -> number, list -> tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {_show(value)}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list; got {_show(value)}")
        return tuple(_coerce(v, args[0], key) for v in value)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}; got "
                          f"{_show(value)}") from None
    return value


def override(config: Config, updates: Mapping[str, Any]) -> Config:
    """Returns ``config`` with dotted-key updates applied (``"train.epochs": 5``).

    Values may be strings (as from the command line); they are converted to
    the field's type. Unknown keys are refused with the valid ones listed.

    Args:
      config: the base config.
      updates: ``{"section.field": value}``.

    Returns:
      A new, validated :class:`Config`.

    Example:
      >>> override(Config(), {"data.batch_size": "64"}).data.batch_size
      64
    """
    d = config.to_dict()
    for key, value in updates.items():
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in d:
            raise ConfigError(
                f"unknown config key {key!r}; keys look like section.field with section one of "
                f"{', '.join(d)}." + _key_hint(key)
            )
        section, field = parts
        if field not in d[section]:
            raise ConfigError(
                f"unknown config key {key!r}; valid keys: "
                f"{', '.join(f'{section}.{k}' for k in d[section])}." + _key_hint(key)
            )
        d[section][field] = value
    return Config.from_dict(d)


# Names people give config keys that are too far from the key for a close match.
_KEY_HINTS = {
    "lr": "optimizer.learning_rate", "learning-rate": "optimizer.learning_rate",
    "bs": "data.batch_size", "batch": "data.batch_size", "epoch": "train.epochs",
    "model": "model.name", "optimizer": "optimizer.name", "dataset": "data.dataset",
    "patience": "train.early_stopping_patience", "wd": "optimizer.weight_decay",
    "clip": "optimizer.grad_clip_norm",
}


def _key_hint(key: str) -> str:
    """The ``" Did you mean 'section.field'?"`` hint for an unknown config key, or "".

    Matches the key against every ``section.field``, every section, every field
    name that only one section has, and the hand-written :data:`_KEY_HINTS`
    (alone or after any section, e.g. ``optimizer.lr``).

    Example:
      >>> _key_hint("train.epoch")
      " Did you mean 'train.epochs'?"
      >>> _key_hint("optimizer.lr")
      " Did you mean 'optimizer.learning_rate'?"
      >>> _key_hint("trian")
      " Did you mean 'train'?"
    """
    sections = {s.name: dataclasses.fields(s.default) for s in dataclasses.fields(Config)}
    keys = [f"{s}.{f.name}" for s, fields in sections.items() for f in fields]
    owners: dict[str, list[str]] = {}
    for k in keys:
        owners.setdefault(k.split(".", 1)[1], []).append(k)
    candidates = {s: s for s in sections} | {k: k for k in keys}
    candidates |= {field: ks[0] for field, ks in owners.items() if len(ks) == 1}
    candidates |= _KEY_HINTS | {f"{s}.{alias}": target for s in sections
                                for alias, target in _KEY_HINTS.items()}
    return did_you_mean(key, candidates)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Parses ``["train.epochs=5", ...]`` into a dict for :func:`override`.

    Example:
      >>> parse_overrides(["train.epochs=5", "optimizer.name=sgd"])
      {'train.epochs': '5', 'optimizer.name': 'sgd'}
    """
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. train.epochs=5); got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


__all__ = [
    "BEST_METRICS", "improves", "CheckpointConfig", "Config", "DataConfig",
    "DECAY_OPTIMIZERS", "MOMENTUM_OPTIMIZERS", "ModelConfig", "OPTIMIZERS",
    "OptimizerConfig", "SCHEDULES", "TrainConfig", "MAX_COUNT", "MAX_SEED",
    "override", "parse_json", "parse_overrides",
]
