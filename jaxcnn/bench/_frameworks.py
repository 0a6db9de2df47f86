"""Other frameworks beside jaxcnn: the request their subprocess gets, and its answer
turned into rows like jaxcnn's (the subprocesses themselves: :mod:`jaxcnn.compare`)."""

from __future__ import annotations

import datetime
from typing import Any, Sequence

import jax

from jaxcnn.bench._config import BenchConfig
from jaxcnn.bench._peaks import Peak
from jaxcnn.bench._rows import _analytical_flops, _environment, _finish, _row_base
from jaxcnn.compare import check_param_counts, request_layers
from jaxcnn.models import build_model, summary, to_spec


def compare_request(config: BenchConfig, jax_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The request a framework subprocess gets (:mod:`jaxcnn.compare`).

    Batches that jaxcnn found too large for memory before running are
    skipped there too on the CPU, where an allocation failure may kill the
    process instead of raising.

    Args:
      config: the benchmark config.
      jax_rows: jaxcnn's rows for the same round (for params and skips).

    Returns:
      A JSON-ready dict.

    Example:
      >>> cfg = BenchConfig(model="conv(4, 3) flatten softmax", input_shape=(6, 6, 1),
      ...                   num_classes=3, batch_sizes=(4,))
      >>> req = compare_request(cfg, [])
      >>> req["expected_params"], [l["kind"] for l in req["layers"]]
      (235, ['Conv2D', 'Flatten', 'SoftmaxOutput'])
    """
    model = build_model(config.model, config.num_classes)
    layers = request_layers(model, config.input_shape)
    skip = {}
    if jax.default_backend() == "cpu":
        skip = {str(r["batch_size"]): f"skipped: {r['error']} (jaxcnn's estimate for this "
                                      "model and batch)"
                for r in jax_rows if r.get("status") == "oom"}
    return {
        "layers": layers, "input_shape": list(config.input_shape),
        "num_classes": config.num_classes, "batch_sizes": list(config.batch_sizes),
        "what": config.what, "dtype": config.dtype, "steps": config.steps,
        "repeats": config.repeats, "warmup": config.warmup,
        "learning_rate": config.learning_rate, "eps": 1e-8, "seed": config.seed,
        "expected_params": sum(layer["params"] for layer in layers), "skip": skip,
    }


def framework_rows(answer: dict[str, Any], config: BenchConfig,
                   jax_rows: Sequence[dict[str, Any]], peak: Peak,
                   round_index: int = 0) -> list[dict[str, Any]]:
    """Turns a framework subprocess's answer into result rows like jaxcnn's.

    The FLOPs per step are jaxcnn's for the same batch (the architecture is
    the same, checked by parameter count), so FLOP/s and utilisation are
    comparable across frameworks. ``compile_seconds`` is the framework's
    first call (tracing, compiling and one step).

    Args:
      answer: :func:`jaxcnn.compare.run_framework`'s answer.
      config: the benchmark config.
      jax_rows: jaxcnn's rows of the same round.
      peak: the device peak.
      round_index: recorded as ``round``.

    Returns:
      One row per batch size.

    Raises:
      ComparisonError: when the answer's parameter count differs from jaxcnn's.
    """
    model = build_model(config.model, config.num_classes)
    s = summary(model, config.input_shape)
    check_param_counts(s.params, {answer["framework"]: answer["params"]})
    by_batch = {r["batch_size"]: r for r in jax_rows}
    base_env = _environment(peak)
    rows = []
    for child in answer["rows"]:
        b = child["batch_size"]
        row = _row_base(config, b)
        row.update(base_env)
        row.update(framework=answer["framework"], framework_version=answer["framework_version"],
                   framework_detail=answer.get("detail"), spec=to_spec(model.layers),
                   params=answer["params"], mode="step", round=round_index,
                   timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds"),
                   analytical_flops_per_step=_analytical_flops(s.flops, b, config.what),
                   status=child["status"], error=child.get("error"))
        jr = by_batch.get(b, {})
        if jr.get("flops_per_step"):
            row.update(flops_per_step=jr["flops_per_step"],
                       flops_source=f"jaxcnn {jr['flops_source']} of the same model")
        else:
            row.update(flops_per_step=row["analytical_flops_per_step"],
                       flops_source="analytical (summary)")
        if child["status"] == "ok":
            row.update(compile_seconds=child["compile_seconds"],
                       first_call_seconds=child["compile_seconds"],
                       peak_memory_bytes=child.get("peak_memory_bytes"),
                       peak_memory_source=child.get("peak_memory_source"))
            _finish(row, child["step_seconds"], 1)
            row["host_peak_rss_bytes"] = child.get("host_peak_rss_bytes")
        rows.append(row)
    return rows


__all__ = ["compare_request", "framework_rows"]
