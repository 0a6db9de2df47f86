"""The sweep: every batch size, every round, jaxcnn and the other frameworks interleaved."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from jaxcnn.bench._config import BenchConfig, BenchError
from jaxcnn.bench._frameworks import compare_request, framework_rows
from jaxcnn.bench._measure import bench_one, check_model
from jaxcnn.bench._peaks import Peak, device_peak
from jaxcnn.compare import check_installed, parse_frameworks, run_framework


def run(config: BenchConfig, *, compare: str | Sequence[str] | None = None, rounds: int = 1,
        compare_python: str | None = None, peak: Peak | None = None,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        first_round: int = 0) -> list[dict[str, Any]]:
    """Benchmarks every batch size, and the other frameworks beside jaxcnn.

    With ``rounds > 1`` the whole sweep repeats, frameworks interleaved
    (jaxcnn, then each framework, then jaxcnn again, ...), so a slow spell of
    a shared machine hits every framework rather than one; each row records
    its ``round``.

    Args:
      config: the :class:`BenchConfig`.
      compare: frameworks (:func:`jaxcnn.compare.parse_frameworks`), e.g.
        ``"torch,keras"``.
      rounds: interleaved repetitions of the whole sweep.
      compare_python: the interpreter that runs the other frameworks.
      peak: the device peak (default :func:`device_peak`).
      on_row: called with each row as soon as it is measured.
      first_round: the ``round`` of the first repetition (when separate
        invocations, e.g. of several models in turn, make up the rounds).

    Returns:
      All rows, in the order measured.

    Raises:
      ShapeError: the model does not fit ``config.input_shape`` (checked first).
      ComparisonError: when a framework is missing from ``compare_python``
        (checked before anything is measured), fails or builds a model with a
        different parameter count.

    Example:
      >>> cfg = BenchConfig(model="flatten softmax", input_shape=(4, 4, 1), num_classes=2,
      ...                   batch_sizes=(2, 4), steps=1, repeats=1, warmup=0)
      >>> [r["batch_size"] for r in run(cfg, peak=Peak(None, "unknown", "example"))]
      [2, 4]
    """
    frameworks = parse_frameworks(compare)
    if int(rounds) < 1:
        raise BenchError(f"rounds must be >= 1; got {rounds}")
    # What can fail is checked before the peak is measured or anything is compiled.
    check_model(config)
    check_installed(frameworks, python=compare_python)
    peak = peak or device_peak(config.dtype)
    on_row = on_row or (lambda row: None)
    rows: list[dict[str, Any]] = []
    for r in range(int(first_round), int(first_round) + int(rounds)):
        jax_rows = []
        for batch_size in config.batch_sizes:
            row = bench_one(config, batch_size, peak=peak, round_index=r)
            jax_rows.append(row)
            rows.append(row)
            on_row(row)
        for name in frameworks:
            answer = run_framework(name, compare_request(config, jax_rows),
                                   python=compare_python)
            for row in framework_rows(answer, config, jax_rows, peak, r):
                rows.append(row)
                on_row(row)
    return rows


__all__ = ["run"]
