"""The peak FLOP/s utilisation is measured against: a table of published peaks, or
a matmul measured on the spot."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time

import jax


@dataclasses.dataclass(frozen=True)
class Peak:
    """The peak FLOP/s that utilisation is measured against, and where it came from.

    Attributes:
      flop_per_s: the peak, or None when unknown.
      source: ``"table"`` (published), ``"measured"`` (a matmul timed here),
        ``"given"`` (by the caller) or ``"unknown"``.
      detail: one sentence saying which figure was used and why.

    Example:
      >>> Peak(989.4e12, "table", "H100 SXM").flop_per_s
      989400000000000.0
    """

    flop_per_s: float | None
    source: str
    detail: str


# Published dense (no structured sparsity) peak FLOP/s per chip. Patterns are
# matched, in order, against jax's device_kind (e.g. "NVIDIA H100 80GB HBM3",
# "NVIDIA A100-SXM4-40GB", "TPU v5 lite"). "tf32" is the tensor-core rate that
# XLA uses for float32 convolutions and matmuls on NVIDIA GPUs since Ampere at
# JAX's default matmul precision.
DEVICE_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (r"H100.*PCIe", "NVIDIA H100 PCIe",
     {"float32": 51.2e12, "tf32": 378e12, "bfloat16": 756e12}),
    (r"H100.*NVL", "NVIDIA H100 NVL",
     {"float32": 60e12, "tf32": 417.5e12, "bfloat16": 835.5e12}),
    (r"H200|GH200", "NVIDIA H200",
     {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12}),
    (r"H100", "NVIDIA H100 SXM",
     {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12}),
    (r"A100", "NVIDIA A100",
     {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12}),
    (r"V100S", "NVIDIA V100S PCIe", {"float32": 16.4e12}),
    (r"V100.*PCIE", "NVIDIA V100 PCIe", {"float32": 14e12}),
    (r"V100", "NVIDIA V100 SXM2", {"float32": 15.7e12}),
    (r"\bL4\b", "NVIDIA L4", {"float32": 30.3e12, "tf32": 60e12, "bfloat16": 121e12}),
    (r"TPU v4", "TPU v4", {"bfloat16": 275e12}),
    (r"TPU v5 ?lite|TPU v5e", "TPU v5e", {"bfloat16": 197e12}),
    (r"TPU v5p|TPU v5$", "TPU v5p", {"bfloat16": 459e12}),
    (r"TPU v6 ?lite|TPU v6e|TPU7x|Trillium", "TPU v6e", {"bfloat16": 918e12}),
)


def lookup_peak(device_kind: str, dtype: str = "float32", *,
                matmul_precision: str | None = None) -> Peak | None:
    """The published peak of a device kind from :data:`DEVICE_PEAKS`, or None.

    Args:
      device_kind: ``jax.devices()[0].device_kind``.
      dtype: ``"float32"`` or ``"bfloat16"``.
      matmul_precision: JAX's ``jax_default_matmul_precision`` (None: default).
        At the default precision, float32 runs on TF32 tensor cores on NVIDIA
        GPUs (Ampere and later) and as bfloat16 passes on TPUs, so those
        rates are the peak; ``"highest"``/``"float32"`` use the float32 rate.

    Returns:
      A :class:`Peak` with source ``"table"``, or None for a kind not in the
      table (or with no figure for that dtype, e.g. bfloat16 on a V100).

    Example:
      >>> lookup_peak("NVIDIA H100 80GB HBM3", "bfloat16").flop_per_s
      989400000000000.0
      >>> lookup_peak("NVIDIA A100-SXM4-40GB", "float32").flop_per_s  # TF32
      156000000000000.0
      >>> lookup_peak("Quantum Abacus 9000") is None
      True
    """
    exact_f32 = str(matmul_precision).lower() in ("highest", "float32")
    for pattern, name, peaks in DEVICE_PEAKS:
        if not re.search(pattern, device_kind, flags=re.IGNORECASE):
            continue
        if dtype == "float32" and not exact_f32 and "tf32" in peaks:
            return Peak(peaks["tf32"], "table",
                        f"{name} published dense TF32 peak (XLA runs float32 convolutions "
                        "and matmuls on TF32 tensor cores at JAX's default precision)")
        if dtype == "float32" and "float32" not in peaks and "bfloat16" in peaks \
                and not exact_f32:
            return Peak(peaks["bfloat16"], "table",
                        f"{name} published dense bfloat16 peak (float32 matmuls run as "
                        "bfloat16 passes at JAX's default precision)")
        if dtype in peaks:
            return Peak(peaks[dtype], "table", f"{name} published dense {dtype} peak")
        return None
    return None


def measure_matmul_peak(dtype: str = "float32", *, device=None, repeats: int = 10,
                        max_size: int | None = None) -> tuple[float, int]:
    """FLOP/s of the fastest of several large square matmuls on a device.

    The size doubles from 256 until one matmul takes at least 0.2 s (or
    ``max_size``), so the figure is not dominated by call overhead; the best
    of ``repeats`` timed runs is returned, as peaks are best cases (and on a
    shared machine the best run is the one least disturbed).

    Args:
      dtype: ``"float32"`` or ``"bfloat16"``.
      device: a JAX device (default: the first).
      repeats: timed runs at the final size.
      max_size: largest matrix side (default 4096 on CPU, 16384 elsewhere).

    Returns:
      ``(flop_per_s, size)``.

    Example:
      >>> flops, n = measure_matmul_peak(max_size=256, repeats=2)
      >>> flops > 0, n
      (True, 256)
    """
    device = device or jax.devices()[0]
    max_size = max_size or (4096 if device.platform == "cpu" else 16384)
    matmul = jax.jit(lambda a, b: a @ b)
    n = min(256, max_size)
    while True:
        key_a, key_b = jax.random.split(jax.random.key(n))
        a = jax.device_put(jax.random.normal(key_a, (n, n), dtype), device)
        b = jax.device_put(jax.random.normal(key_b, (n, n), dtype), device)
        matmul(a, b).block_until_ready()
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        elapsed = time.perf_counter() - start
        if elapsed >= 0.2 or n * 2 > max_size:
            break
        n *= 2
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best, n


@functools.lru_cache(maxsize=None)
def _measured_peak(device_kind: str, platform: str, dtype: str) -> tuple[float, int]:
    del device_kind, platform  # cache keys: the measurement is per device kind and dtype
    return measure_matmul_peak(dtype)


def device_peak(dtype: str = "float32", device=None, *, measure: bool = True) -> Peak:
    """The peak FLOP/s to measure utilisation against, saying where it came from.

    GPUs and TPUs in :data:`DEVICE_PEAKS` get their published dense peak. CPUs
    (no table can know a CPU's cores, clock and vector width) and device
    kinds not in the table get a peak measured on the spot with a large
    matmul (:func:`measure_matmul_peak`, cached per process); with
    ``measure=False`` they get an unknown peak.

    Args:
      dtype: ``"float32"`` or ``"bfloat16"``.
      device: a JAX device (default: the first).
      measure: allow measuring.

    Returns:
      A :class:`Peak`.

    Example:
      >>> device_peak(measure=False).source in ("table", "unknown")
      True
    """
    device = device or jax.devices()[0]
    kind = device.device_kind
    if device.platform != "cpu":
        peak = lookup_peak(kind, dtype, matmul_precision=jax.config.jax_default_matmul_precision)
        if peak is not None:
            return peak
        why = (f"device kind {kind!r} has no {dtype} entry in the peak table "
               "(jaxcnn.bench.DEVICE_PEAKS)")
    else:
        why = f"CPU ({kind}): no published peak applies"
    if not measure:
        return Peak(None, "unknown", f"{why}; utilisation is not reported")
    try:
        flops, n = _measured_peak(kind, device.platform, dtype)
    except Exception as e:  # noqa: BLE001 - any failure leaves the peak unknown, not the run
        return Peak(None, "unknown", f"{why}, and measuring a matmul failed ({e})")
    return Peak(flops, "measured", f"{why}; measured here as the best of 10 {dtype} {n}x{n} "
                                   f"matmuls ({flops / 1e9:.1f} GFLOP/s)")


__all__ = ["DEVICE_PEAKS", "Peak", "device_peak", "lookup_peak", "measure_matmul_peak"]
