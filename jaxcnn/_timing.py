"""Timing and statistics helpers shared by ``jaxcnn bench`` and its framework children.

The bottom of the package, beside :mod:`jaxcnn.errors`: the standard library
only, no JAX, so the PyTorch and Keras subprocesses of
:mod:`jaxcnn.compare` time their steps with the very loop jaxcnn uses.

Example:
  >>> first, rounds = time_calls(lambda n: None, calls=2, repeats=3, warmup=0)
  >>> spread([2.0, 1.0, 3.0])["median"], len(rounds)
  (2.0, 3)
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence


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


__all__ = ["is_oom_message", "spread", "time_calls"]
