"""Helpers for the framework subprocesses (``torch_impl``, ``keras_impl``).

The standard library, :mod:`jaxcnn.errors` and the install hint of
``_frameworks`` only: a child imports its own framework, never JAX.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

from jaxcnn.compare._frameworks import INSTALL_HINT
from jaxcnn.errors import JaxcnnError


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
        answer, code = {"error": f"not installed in {sys.executable} ({e}); {INSTALL_HINT}"}, 0
    except JaxcnnError as e:
        answer, code = {"error": str(e)}, 0
    finally:
        sys.stdout = real_stdout
    real_stdout.write(json.dumps(answer) + "\n")
    real_stdout.flush()
    return code


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


def window_coverage(size: int, window: int, stride: int, before: int, out: int) -> list[float]:
    """Per output position of one axis: the fraction of its pooling window inside the input.

    An average pool over zero-padded input, divided by this (per axis, the
    product of the two), is the average over the real positions only, which
    jaxcnn (and XLA's 'same' average pool) takes; frameworks whose own pool
    cannot leave such padding out rebuild it that way.

    Args:
      size: the input's length on this axis.
      window, stride: the pool's on this axis.
      before: the padding before the first element.
      out: the number of output positions.

    Example:
      >>> window_coverage(4, 3, 2, 1, 2)  # windows [-1, 2) and [1, 4)
      [0.6666666666666666, 1.0]
    """
    fractions = []
    for i in range(out):
        start = i * stride - before
        inside = min(start + window, size) - max(start, 0)
        fractions.append(max(inside, 0) / window)
    return fractions
