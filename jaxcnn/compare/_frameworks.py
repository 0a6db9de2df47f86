"""The parent's side of a comparison: the frameworks, the request, running a child.

Nothing here imports a framework (or JAX): the children import theirs, and
:func:`request_layers` imports :mod:`jaxcnn.models` only when called.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any, Sequence

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

    __module__ = "jaxcnn.compare"  # its public home, as tracebacks name it


FRAMEWORKS: dict[str, dict[str, Any]] = {
    "torch": {"module": "jaxcnn.compare.torch_impl", "env": {}, "import": "torch"},
    "keras-tensorflow": {"module": "jaxcnn.compare.keras_impl",
                         "env": {"KERAS_BACKEND": "tensorflow"}, "import": "keras"},
    "keras-jax": {"module": "jaxcnn.compare.keras_impl",
                  "env": {"KERAS_BACKEND": "jax"}, "import": "keras"},
}
_GROUPS = {"keras": ["keras-tensorflow", "keras-jax"], "pytorch": ["torch"],
           "keras-tf": ["keras-tensorflow"]}
# The modules each framework's child needs (what check_installed looks for).
_REQUIRES = {"torch": ("torch",), "keras-tensorflow": ("keras", "tensorflow"),
             "keras-jax": ("keras", "jax")}

# How to install the other frameworks (the 'compare' extra of pyproject.toml).
INSTALL_HINT = ("install the 'compare' extra in that interpreter: pip install 'jaxcnn[compare]', "
                "or in a clone of jaxcnn: pip install -e '.[compare]' (docs/benchmarks.md "
                "suggests a separate environment, given with --compare-python)")

# Run by check_installed in the interpreter that will run the frameworks: prints the
# modules of argv that are not importable there, without importing any of them.
_FIND_MISSING = ("import importlib.util, json, sys; print(json.dumps("
                 "[m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))")


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


def check_installed(frameworks: Sequence[str], *, python: str | None = None,
                    timeout: float = 120.0) -> None:
    """Refuses frameworks that the interpreter which will run them cannot import.

    Runs before any benchmark, so a missing framework costs a fraction of a
    second rather than a whole jaxcnn sweep first. One quick subprocess of
    ``python`` looks the modules up (``importlib.util.find_spec``) without
    importing them.

    Args:
      frameworks: framework names, as :func:`parse_frameworks` takes them.
      python: the interpreter that will run them (default: this one).
      timeout: seconds before the lookup is given up.

    Raises:
      ComparisonError: naming the frameworks and modules that are missing, the
        interpreter, and how to install them; or when ``python`` cannot run.

    Example:
      >>> check_installed([])
      >>> check_installed(["torch"], python="/no/such/python")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxcnn.compare.ComparisonError: cannot start --compare-python /no/such/python: ...
    """
    frameworks = parse_frameworks(list(frameworks))  # groups ("keras") and unknown names
    if not frameworks:
        return
    exe = python or sys.executable
    which = f"--compare-python {exe}" if python else f"this interpreter ({exe})"
    modules = sorted({m for name in frameworks for m in _REQUIRES[name]})
    try:
        proc = subprocess.run([exe, "-c", _FIND_MISSING, *modules], capture_output=True,
                              text=True, timeout=timeout)
    except OSError as e:
        raise ComparisonError(f"cannot start --compare-python {exe}: {e.strerror or e}; give "
                              "the path of a Python interpreter that has the frameworks "
                              "installed") from None
    except subprocess.TimeoutExpired:
        raise ComparisonError(f"{which} did not answer within {timeout:.0f}s when asked which "
                              "frameworks it has; check that it runs") from None
    try:
        missing = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        tail = "\n".join(proc.stderr.strip().splitlines()[-4:])
        raise ComparisonError(f"{which} could not be asked which frameworks it has (exit "
                              f"{proc.returncode}); give a Python 3 interpreter with "
                              f"--compare-python. Its output:\n{tail}") from None
    bad = [name for name in frameworks if missing & set(_REQUIRES[name])]
    if bad:
        mods = sorted(m for m in missing if any(m in _REQUIRES[name] for name in bad))
        raise ComparisonError(
            f"--compare {','.join(bad)}: {', '.join(mods)} {'is' if len(mods) == 1 else 'are'} "
            f"not installed in {which}; {INSTALL_HINT}. Nothing was benchmarked")


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
            "builds identically (conv, maxpool, avgpool, gap, dropout, flatten, dense, bn, "
            "activations, residual, softmax) "
            "or leave out --compare")


def request_layers(model, input_shape: Sequence[int]) -> list[dict[str, Any]]:
    """Describes a jaxcnn model layer by layer for another framework.

    Every architectural argument is spelled out, defaults included, so an
    adapter never has to know jaxcnn's defaults (that Conv2D applies ReLU,
    that BatchNorm's momentum is Flax's 0.9, that the output has a bias).
    A :class:`~jaxcnn.models.Residual` block is described recursively: its
    dict has ``"body"`` (a list of layer dicts like these) and ``"shortcut"``
    (another list, or None for the identity), and empty ``args``.

    Args:
      model: a :class:`jaxcnn.models.Sequential`.
      input_shape: ``(H, W, C)``.

    Returns:
      One dict per layer: ``kind`` and ``args`` (the :class:`LayerSpec`),
      ``input_shape`` and ``output_shape`` (per image, HWC) and ``params``
      (trainable parameters only: batch statistics are not counted); plus
      ``body`` and ``shortcut`` for a residual block.

    Example:
      >>> from jaxcnn.models import build_model
      >>> layers = request_layers(build_model("conv(4, 3) flatten softmax", 3), (6, 6, 1))
      >>> [(l["kind"], l["output_shape"], l["params"]) for l in layers]
      [('Conv2D', [4, 4, 4], 40), ('Flatten', [64], 0), ('SoftmaxOutput', [3], 195)]
      >>> layers[0]["args"]["activation"], layers[0]["args"]["padding"]
      ('relu', 'valid')
      >>> block = request_layers(build_model("residual(conv(4, 1, none) bn) gap softmax", 2),
      ...                        (5, 5, 4))[0]
      >>> [(l["kind"], l["params"]) for l in block["body"]], block["shortcut"], block["params"]
      ([('Conv2D', 20), ('BatchNorm', 8)], None, 28)
      >>> sorted(block["body"][1]["args"].items())  # doctest: +NORMALIZE_WHITESPACE
      [('activation', None), ('epsilon', 1e-05), ('momentum', 0.9), ('use_bias', True),
       ('use_scale', True)]
    """
    from jaxcnn.models import summary

    s = summary(model, input_shape)
    return _describe(model.layers, s.rows, list(s.input_shape))


# The arguments that shape the computation (and so must be rebuilt identically);
# the rest (dtype, impl, initialisers) are jaxcnn's business.
_ARCH_ARGS = ("filters", "kernel_size", "strides", "padding", "activation", "use_bias",
              "pool_size", "rate", "units", "num_classes", "momentum", "epsilon", "use_scale",
              "scale")


def _describe(specs, rows, shape: list[int]) -> list[dict[str, Any]]:
    """The layer dicts of ``specs``, whose summary rows are ``rows``, from an input ``shape``.

    A residual block's row lists its body's rows and then its shortcut's as
    ``children``; both branches start from the block's input.
    """
    from jaxcnn.models import LAYER_TYPES

    out = []
    for spec, row in zip(specs, rows):
        entry: dict[str, Any] = {"kind": spec.kind, "args": {}, "input_shape": shape,
                                 "output_shape": list(row.output_shape), "params": row.params}
        if spec.kind == "Residual":
            kw = spec.kwargs()
            body, shortcut = tuple(kw["body"]), tuple(kw.get("shortcut") or ())
            children = tuple(row.children)
            if len(children) != len(body) + len(shortcut):
                raise ComparisonError(
                    f"the summary of residual block {row.name!r} has {len(children)} layers, "
                    f"its spec {len(body) + len(shortcut)}; cannot describe it")
            entry["body"] = _describe(body, children[:len(body)], shape)
            entry["shortcut"] = (_describe(shortcut, children[len(body):], shape)
                                 if shortcut else None)
        else:
            args = {f.name: f.default for f in dataclasses.fields(LAYER_TYPES[spec.kind])
                    if f.name in _ARCH_ARGS and f.default is not dataclasses.MISSING}
            args.update(spec.args)
            entry["args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
        out.append(entry)
        shape = list(row.output_shape)
    return out


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
