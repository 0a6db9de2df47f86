"""The result row: its fields, the environment it records, the figures timings give.

Shared by jaxcnn's own measurement and the rows of other frameworks, so every
row has the same fields whichever framework produced it.
"""

from __future__ import annotations

import resource
from typing import Any

from jaxcnn import provenance
from jaxcnn._timing import spread
from jaxcnn.bench._config import BenchConfig
from jaxcnn.bench._peaks import Peak


def _row_base(config: BenchConfig, batch_size: int) -> dict[str, Any]:
    keys = ("framework", "framework_version", "framework_detail", "model", "spec", "what",
            "mode", "batch_size", "dtype", "impl", "impl_requested", "micro_batches", "chunks", "steps_per_call", "op_paths",
            "compiler_options", "host_memory", "input_shape",
            "num_classes", "params", "status", "error", "round", "steps", "repeats", "warmup",
            "compile_seconds", "lower_seconds", "compilation_cache", "first_call_seconds",
            "step_seconds", "step_seconds_median", "step_seconds_min", "step_seconds_max",
            "images_per_s", "flops_per_step", "flops_source", "analytical_flops_per_step",
            "flop_per_s", "peak_flop_per_s", "peak_source", "peak_detail", "utilisation",
            "peak_memory_bytes", "peak_memory_source", "compiled_memory_bytes",
            "memory_available_bytes", "host_peak_rss_bytes", "device_kind", "device",
            "versions", "git_commit", "timestamp")
    row: dict[str, Any] = dict.fromkeys(keys)
    row.update(model=config.model, what=config.what, mode=config.mode, batch_size=batch_size,
               dtype=config.dtype, input_shape=list(config.input_shape),
               num_classes=config.num_classes, steps=config.steps, repeats=config.repeats,
               warmup=config.warmup, steps_per_call=config.steps_per_call)
    return row


def _environment(peak: Peak) -> dict[str, Any]:
    info = provenance.device_info()
    return {"device_kind": info["device_kind"], "device": info, "versions": provenance.versions(),
            "git_commit": provenance.git_commit(), "peak_flop_per_s": peak.flop_per_s,
            "peak_source": peak.source, "peak_detail": peak.detail}


def _analytical_flops(forward_per_image: int, batch_size: int, what: str) -> float:
    # The backward pass costs about twice the forward (a gradient for the
    # activations and one for the weights), hence 3x for a training step.
    return float(forward_per_image) * batch_size * (3 if what == "train" else 1)


def _finish(row: dict[str, Any], per_call: list[float], steps_per_call: int) -> None:
    """Fills the timing-derived figures of a row from seconds per call."""
    per_step = [t / steps_per_call for t in per_call]
    s = spread(per_step)
    row.update(step_seconds=per_step, step_seconds_median=s["median"],
               step_seconds_min=s["min"], step_seconds_max=s["max"],
               images_per_s=row["batch_size"] / s["median"])
    if row.get("flops_per_step"):
        row["flop_per_s"] = row["flops_per_step"] / s["median"]
        if row.get("peak_flop_per_s"):
            row["utilisation"] = row["flop_per_s"] / row["peak_flop_per_s"]
    row["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
