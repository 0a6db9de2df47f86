"""What to benchmark: :class:`BenchConfig`, its choices and :class:`BenchError`."""

from __future__ import annotations

import dataclasses

from jaxcnn import host_memory
from jaxcnn.config import TrainConfig
from jaxcnn.errors import JaxcnnError


WHATS = ("train", "infer", "eval")
MODES = ("step", "scan")
DTYPES = ("float32", "bfloat16")


class BenchError(JaxcnnError):
    """A benchmark request that cannot run as given.

    Example:
      >>> try:
      ...     BenchConfig(what="fly")
      ... except BenchError as e:
      ...     print(str(e).split(";")[0])
      what must be one of train, infer, eval
    """

    __module__ = "jaxcnn.bench"  # its public home, as tracebacks name it


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to benchmark and how.

    Attributes:
      model: a zoo name or spec text (:func:`jaxcnn.models.build_model`).
      input_shape: ``(H, W, C)`` of one image.
      num_classes: classes of the output layer.
      batch_sizes: the batch sizes to sweep.
      dtype: ``"float32"``, or ``"bfloat16"`` (bfloat16 compute, float32
        parameters and logits).
      steps: steps per timed round (``mode="step"``), or steps per compiled
        call (``mode="scan"``).
      repeats: timed rounds; the median, min and max over them are reported.
      warmup: untimed calls after the first one.
      mode: ``"step"``: one compiled call per step. ``"scan"``: ``steps``
        steps per compiled call (``lax.scan``), which removes per-step
        dispatch but is slow on XLA's CPU backend for convolutions.
      what: ``"train"`` (forward, backward, Adam update), ``"infer"`` (forward
        to logits) or ``"eval"`` (forward, loss and accuracy).
      impl: conv/pool implementation, ``"auto"``, ``"xla"`` or ``"fast"``
        (:mod:`jaxcnn.ops`).
      micro_batches: ``"auto"`` or how many micro-batches a training step
        runs as, resolved into the same :class:`~jaxcnn.training.ExecutionPolicy`
        as ``jaxcnn train`` resolves (:func:`jaxcnn.training.resolve_policy`;
        1: one pass in one call).
      learning_rate: Adam's learning rate (every framework uses it).
      label_smoothing: the training loss's label smoothing (default: that of
        ``jaxcnn train``, so the benchmark times its step).
      steps_per_call: training steps per compiled call of ``jaxcnn train``'s
        program (``lax.scan``, :class:`~jaxcnn.training.TrainProgram`); times
        are reported per step. 1: one call per step.
      seed: seed of the parameters and the random batch.
      compilation_cache: keep JAX's persistent compilation cache on while
        compiling (the compile time may then be a cache read).
      reuse_host_memory: ``"auto"``, True or False (default: False, the
        library leaves the allocator alone; ``jaxcnn bench`` passes ``auto``,
        as ``jaxcnn train`` applies it): :mod:`jaxcnn.host_memory`. Process-wide,
        so once on it stays on for later measurements in the process.

    Example:
      >>> BenchConfig(batch_sizes=(32, 128)).batch_sizes
      (32, 128)
    """

    model: str = "keras_convnet"
    input_shape: tuple[int, ...] = (28, 28, 1)
    num_classes: int = 10
    batch_sizes: tuple[int, ...] = (32, 128, 512)
    dtype: str = "float32"
    steps: int = 10
    repeats: int = 5
    warmup: int = 2
    mode: str = "step"
    what: str = "train"
    impl: str = "auto"
    micro_batches: int | str = "auto"
    learning_rate: float = 1e-3
    label_smoothing: float = TrainConfig.label_smoothing
    steps_per_call: int = 1
    seed: int = 0
    compilation_cache: bool = False
    reuse_host_memory: bool | str = False

    def __post_init__(self):
        shape = tuple(int(d) for d in self.input_shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or min(shape) < 1:
            raise BenchError(f"input_shape must be (H, W, C); got {self.input_shape!r}. "
                             "Pass e.g. --input-shape 28x28x1")
        object.__setattr__(self, "input_shape", shape)
        sizes = tuple(self.batch_sizes)
        if not sizes or not all(isinstance(b, int) and b >= 1 for b in sizes):
            raise BenchError(f"batch_sizes must be positive ints; got {self.batch_sizes!r}. "
                             "Pass e.g. --batch-sizes 32,128,512")
        object.__setattr__(self, "batch_sizes", sizes)
        checks = (
            (self.what in WHATS, f"what must be one of {', '.join(WHATS)}; got {self.what!r}"),
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}; got {self.mode!r}"),
            (self.dtype in DTYPES,
             f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}"),
            (self.impl in ("auto", "xla", "fast"),
             f"impl must be auto, xla or fast; got {self.impl!r}"),
            (self.micro_batches == "auto" or (isinstance(self.micro_batches, int)
                                              and self.micro_batches >= 1),
             f"micro_batches must be auto or an int >= 1; got {self.micro_batches!r}"),
            (host_memory.is_host_memory_setting(self.reuse_host_memory),
             f"reuse_host_memory must be auto, True or False; got {self.reuse_host_memory!r}"),
            (int(self.num_classes) >= 2, f"num_classes must be >= 2; got {self.num_classes}"),
            (int(self.steps) >= 1, f"steps must be >= 1; got {self.steps}"),
            (isinstance(self.steps_per_call, int) and self.steps_per_call >= 1,
             f"steps_per_call must be an int >= 1; got {self.steps_per_call!r}"),
            (self.steps_per_call == 1 or (self.what == "train" and self.mode == "step"),
             "steps_per_call > 1 times training steps (--what train, --mode step); "
             "--mode scan already runs --steps steps per call"),
            (int(self.repeats) >= 1, f"repeats must be >= 1; got {self.repeats}"),
            (int(self.warmup) >= 0, f"warmup must be >= 0; got {self.warmup}"),
            (float(self.learning_rate) > 0, f"learning_rate must be > 0; got "
                                            f"{self.learning_rate}"),
        )
        for ok, message in checks:
            if not ok:
                raise BenchError(message + "; see `jaxcnn bench --help`")


__all__ = ["DTYPES", "MODES", "WHATS", "BenchConfig", "BenchError"]
