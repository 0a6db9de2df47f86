"""Memory: what a device has left, what a compiled step needs, what it used."""

from __future__ import annotations

import jax

from jaxcnn import provenance


def available_memory_bytes(device=None) -> int | None:
    """Bytes a new computation can still allocate on a device (None if unknown).

    Accelerators report their allocator's limit and use; for the CPU it is the
    host's available memory (``MemAvailable``), capped by a cgroup limit.

    Example:
      >>> available_memory_bytes() is None or available_memory_bytes() > 0
      True
    """
    device = device or jax.devices()[0]
    stats = provenance.device_memory_stats(device)
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform != "cpu":
        return None
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if text != "max":
            limits.append(int(text) - used)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def compiled_memory_bytes(compiled) -> int | None:
    """XLA's estimate of the peak memory of a compiled computation.

    Arguments + outputs + temporaries - outputs that reuse donated inputs
    (+ generated code), from ``compiled.memory_analysis()``.

    Example:
      >>> import jax.numpy as jnp
      >>> c = jax.jit(lambda x: x * 2).lower(jnp.ones(1000)).compile()
      >>> compiled_memory_bytes(c) >= 8000
      True
    """
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without memory analysis
        return None
    if m is None:
        return None
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes + m.generated_code_size_in_bytes)
    return int(total)


def _device_peak_bytes(device) -> int | None:
    stats = provenance.device_memory_stats(device)
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


__all__ = ["available_memory_bytes", "compiled_memory_bytes"]
