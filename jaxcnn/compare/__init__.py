"""The same model in other frameworks, for ``jaxcnn bench --compare``.

Each framework runs in a subprocess of its own (Keras chooses its backend
once, at import; separate processes also keep the frameworks' thread pools
from competing with each other). The parent sends a JSON request on stdin
describing the architecture layer by layer, the batch sizes and the timing
plan; the child builds the model, checks that its parameter count equals
jaxcnn's, times it with the same :func:`time_calls` loop jaxcnn uses, and
answers with one JSON object on stdout.

Nothing here imports a framework at module level: torch, TensorFlow and Keras
are imported only inside the child process that uses them, so jaxcnn never
needs them installed.

Frameworks (names for ``--compare``):

* ``torch``: PyTorch, eager with channels_last on CPU, ``torch.compile`` on GPU.
* ``keras-tensorflow``, ``keras-jax``: Keras 3 on each backend;
  ``keras`` means both.

Example:
  >>> parse_frameworks("torch,keras")
  ['torch', 'keras-tensorflow', 'keras-jax']
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from jaxcnn.errors import JaxcnnError


class ComparisonError(JaxcnnError):
    """A comparison that cannot run fairly (different parameter counts, an
    unsupported layer, a framework that failed or is not installed).

    Example:
      >>> try:
      ...     check_param_counts(100, {"torch": 90})
      ... except ComparisonError as e:
      ...     print(str(e).split(";")[0])
      parameter counts differ: jaxcnn has 100, torch has 90
    """


FRAMEWORKS: dict[str, dict[str, Any]] = {
    "torch": {"module": "jaxcnn.compare.torch_impl", "env": {}, "import": "torch"},
    "keras-tensorflow": {"module": "jaxcnn.compare.keras_impl",
                         "env": {"KERAS_BACKEND": "tensorflow"}, "import": "keras"},
    "keras-jax": {"module": "jaxcnn.compare.keras_impl",
                  "env": {"KERAS_BACKEND": "jax"}, "import": "keras"},
}
_GROUPS = {"keras": ["keras-tensorflow", "keras-jax"], "pytorch": ["torch"],
           "keras-tf": ["keras-tensorflow"]}


def parse_frameworks(text: str | Sequence[str] | None) -> list[str]:
    """Parses ``--compare`` into framework names (``keras`` means both backends).

    Args:
      text: comma-separated names, a list of names, or None/"" for none.

    Returns:
      Framework names in :data:`FRAMEWORKS`, in order, without repeats.

    Raises:
      ComparisonError: for an unknown name.

    Example:
      >>> parse_frameworks("keras-jax, torch")
      ['keras-jax', 'torch']
    """
    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        name = item.strip().lower()
        if not name:
            continue
        names = _GROUPS.get(name, [name])
        for n in names:
            if n not in FRAMEWORKS:
                raise ComparisonError(
                    f"unknown framework {item.strip()!r} for --compare; use any of "
                    f"{', '.join(sorted([*FRAMEWORKS, 'keras']))}, comma-separated")
            if n not in out:
                out.append(n)
    return out


def check_param_counts(expected: int, counts: dict[str, int]) -> None:
    """Refuses a comparison whose models do not have the same parameter count.

    A different count means a different architecture (a missing bias, another
    padding, a wrong flatten size), and its timings would compare different
    work.

    Args:
      expected: jaxcnn's parameter count.
      counts: framework name -> the parameter count of its model.

    Raises:
      ComparisonError: naming every framework whose count differs.

    Example:
      >>> check_param_counts(34826, {"torch": 34826, "keras-jax": 34826})
    """
    bad = {name: n for name, n in counts.items() if int(n) != int(expected)}
    if bad:
        detail = ", ".join(f"{name} has {n}" for name, n in bad.items())
        raise ComparisonError(
            f"parameter counts differ: jaxcnn has {expected}, {detail}; the models are not the "
            "same architecture, so the comparison will not run. Use layers every framework "
            "builds identically (conv, maxpool, avgpool, gap, dropout, flatten, dense, softmax) "
            "or leave out --compare")


def time_calls(call: Callable[[int], Any], *, calls: int, repeats: int,
               warmup: int) -> tuple[float, list[float]]:
    """Times a function that runs ``n`` steps and waits for their results.

    The first call is timed on its own (it includes any tracing, compiling or
    allocation the framework does lazily), then ``warmup`` untimed calls run,
    then ``repeats`` timed rounds of ``calls`` calls each. ``call(n)`` must
    block until the last result is ready (``block_until_ready`` in JAX,
    ``torch.cuda.synchronize`` on a GPU), or the clock would read dispatch
    time only.

    Args:
      call: ``call(n)`` runs ``n`` calls and returns when they are done.
      calls: calls per timed round.
      repeats: timed rounds.
      warmup: untimed calls after the first.

    Returns:
      ``(first_call_seconds, [seconds per call of each round])``.

    Example:
      >>> first, rounds = time_calls(lambda n: sum(range(1000 * n)), calls=3, repeats=4, warmup=1)
      >>> len(rounds), all(t > 0 for t in rounds)
      (4, True)
    """
    start = time.perf_counter()
    call(1)
    first = time.perf_counter() - start
    if warmup > 0:
        call(warmup)
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(calls)
        per_call.append((time.perf_counter() - start) / calls)
    return first, per_call


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of timings.

    Example:
      >>> spread([3.0, 1.0, 2.0])
      {'median': 2.0, 'min': 1.0, 'max': 3.0}
    """
    return {"median": float(statistics.median(values)), "min": float(min(values)),
            "max": float(max(values))}


def is_oom_message(text: str) -> bool:
    """True when an error message reports exhausted memory (any framework).

    Example:
      >>> is_oom_message("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
      True
    """
    low = text.lower()
    return any(s in low for s in ("resource_exhausted", "out of memory", "outofmemory",
                                  "oom when allocating", "failed to allocate",
                                  "cannot allocate memory"))


def request_layers(model, input_shape: Sequence[int]) -> list[dict[str, Any]]:
    """Describes a jaxcnn model layer by layer for another framework.

    Args:
      model: a :class:`jaxcnn.models.Sequential`.
      input_shape: ``(H, W, C)``.

    Returns:
      One dict per layer: ``kind`` and ``args`` (the :class:`LayerSpec`),
      ``input_shape`` and ``output_shape`` (per image, HWC) and ``params``.

    Example:
      >>> from jaxcnn.models import build_model
      >>> layers = request_layers(build_model("conv(4, 3) flatten softmax", 3), (6, 6, 1))
      >>> [(l["kind"], l["output_shape"], l["params"]) for l in layers]
      [('Conv2D', [4, 4, 4], 40), ('Flatten', [64], 0), ('SoftmaxOutput', [3], 195)]
      >>> layers[0]["args"]["activation"], layers[0]["args"]["padding"]
      ('relu', 'valid')
    """
    import dataclasses

    from jaxcnn.models import LAYER_TYPES, summary

    s = summary(model, input_shape)
    shape = list(s.input_shape)
    out = []
    for spec, row in zip(model.layers, s.rows):
        # Every argument is spelled out (defaults included), so an adapter
        # never has to know jaxcnn's defaults, e.g. that Conv2D applies ReLU.
        args = {f.name: f.default for f in dataclasses.fields(LAYER_TYPES[spec.kind])
                if f.name in _ARCH_ARGS and f.default is not dataclasses.MISSING}
        args.update(spec.args)
        out.append({"kind": spec.kind,
                    "args": {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()},
                    "input_shape": shape, "output_shape": list(row.output_shape),
                    "params": row.params})
        shape = list(row.output_shape)
    return out


_ARCH_ARGS = ("filters", "kernel_size", "strides", "padding", "activation", "use_bias",
              "pool_size", "rate", "units", "num_classes")


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow/Keras ``'same'`` padding of one axis: ``(before, after)``.

    The extra pixel, when the total is odd, goes after (bottom/right), as in
    XLA and Keras; other frameworks need it spelled out.

    Example:
      >>> same_padding(28, 3, 1), same_padding(28, 2, 2), same_padding(5, 2, 2)
      ((1, 1), (0, 0), (0, 1))
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def pair(value) -> tuple[int, int]:
    """``k`` or ``(kh, kw)`` as a pair.

    Example:
      >>> pair(3), pair([2, 1])
      ((3, 3), (2, 1))
    """
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def run_framework(framework: str, request: dict[str, Any], *, python: str | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
    """Runs one framework's benchmark in a subprocess and returns its answer.

    Args:
      framework: a name in :data:`FRAMEWORKS`.
      request: the JSON request (see :mod:`jaxcnn.compare.torch_impl`).
      python: the interpreter to run it with (default: this one); point it
        at a virtual environment that has the framework installed.
      timeout: seconds before the child is stopped.

    Returns:
      The child's answer: ``{"framework", "framework_version", "params",
      "device", "rows": [...]}``.

    Raises:
      ComparisonError: when the framework is not installed, refuses the model
        (a parameter count that differs, a layer it cannot build) or fails.

    Example:
      >>> run_framework("torch", {}, python="/no/such/python")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxcnn.compare.ComparisonError: cannot start /no/such/python ...
    """
    info = FRAMEWORKS[framework]
    python = python or sys.executable
    env = dict(os.environ)
    env.update(info["env"])
    # The child must import this very jaxcnn, whichever interpreter runs it.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        proc = subprocess.run([python, "-m", info["module"]], input=json.dumps(request),
                              capture_output=True, text=True, env=env, timeout=timeout)
    except OSError as e:
        raise ComparisonError(f"cannot start {python} for {framework}: {e.strerror}; pass "
                              "--compare-python with an interpreter that has it "
                              "installed") from None
    except subprocess.TimeoutExpired:
        raise ComparisonError(f"{framework} took longer than {timeout:.0f}s; use fewer "
                              "--steps/--repeats or smaller batches") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ComparisonError(f"{framework} failed (exit {proc.returncode}) with no answer; "
                              f"its last output:\n{tail}")
    answer = json.loads(lines[-1])
    if answer.get("error"):
        raise ComparisonError(f"{framework}: {answer['error']}")
    return answer


def child_main(bench: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """The body of a framework subprocess: request on stdin, answer on stdout.

    A :class:`JaxcnnError` or a missing framework becomes ``{"error": ...}``
    (the parent turns it into a :class:`ComparisonError`).

    Args:
      bench: the framework's ``bench(request) -> answer`` function.

    Returns:
      The exit code.
    """
    request = json.loads(sys.stdin.read())
    # The parent reads the last stdout line; frameworks print on stdout too.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        answer = bench(request)
        code = 0
    except ImportError as e:
        answer, code = {"error": f"not installed here ({e}); install the 'compare' extra "
                        "(pip install 'jaxcnn[compare]') in the interpreter given to "
                        "--compare-python"}, 0
    except JaxcnnError as e:
        answer, code = {"error": str(e)}, 0
    finally:
        sys.stdout = real_stdout
    real_stdout.write(json.dumps(answer) + "\n")
    real_stdout.flush()
    return code
