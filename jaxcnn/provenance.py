"""Facts about the software and hardware a result was produced on.

Every result jaxcnn writes (run summaries, checkpoints, benchmarks) carries
these, so results from different machines can be compared and merged.

Example:
  >>> sorted(versions())[:3]
  ['flax', 'jax', 'jaxcnn']
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess

__all__ = ["device_info", "device_memory_stats", "git_commit", "versions"]

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "jaxcnn")


def versions() -> dict[str, str]:
    """Installed versions of jaxcnn, JAX and the libraries around it, and Python.

    Example:
      >>> "python" in versions()
      True
    """
    out = {}
    for name in _PACKAGES:
        try:
            out[name.replace("-checkpoint", "")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name.replace("-checkpoint", "")] = "not installed"
    out["python"] = platform.python_version()
    return out


def device_info() -> dict[str, object]:
    """The JAX backend, device kind and device count, and the host.

    Example:
      >>> device_info()["backend"] in ("cpu", "gpu", "tpu")
      True
    """
    import jax

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def device_memory_stats(device=None) -> dict | None:
    """The device's ``memory_stats()`` (``bytes_limit``, ``bytes_in_use``,
    ``peak_bytes_in_use``, ...), or None where the backend reports none (the CPU).

    The one place that asks: backends without memory statistics raise or
    return None, and both mean "unknown" to every caller.

    Example:
      >>> stats = device_memory_stats()
      >>> stats is None or isinstance(stats, dict)
      True
    """
    import jax

    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise or return None
        return None
    return dict(stats) if stats else None


@functools.lru_cache(maxsize=None)
def git_commit(path: str | None = None) -> str | None:
    """The git commit of the source tree jaxcnn runs from (None outside git).

    Example:
      >>> c = git_commit()
      >>> c is None or len(c) == 40
      True
    """
    path = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if len(commit) == 40 else None
