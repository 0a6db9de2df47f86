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


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache (compiled steps reused across runs).

    The directory is ``path``, else ``$JAXCNN_COMPILATION_CACHE``, else
    ``~/.cache/jaxcnn/xla``; ``JAXCNN_COMPILATION_CACHE=off`` disables it. The
    second run of the same model and batch shape then skips most of its
    compile time. Benchmarks of compile time turn it off.

    Returns:
      The cache directory, or None when disabled.

    Example:
      >>> import tempfile
      >>> enable_compilation_cache(os.environ.get("JAXCNN_COMPILATION_CACHE")) is not None
      True
    """
    import jax

    path = path or os.environ.get("JAXCNN_COMPILATION_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jaxcnn", "xla")
    if path.lower() in ("off", "0", "none", "false"):
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def writable_dir_problem(directory: str) -> str | None:
    """Creates ``directory`` if needed and checks that a file can be written in it.

    Checked before training starts, so a full disk or missing permission is
    reported at once instead of losing results later.

    Returns:
      None when the directory is writable, else the reason (``strerror``).

    Example:
      >>> import tempfile
      >>> writable_dir_problem(tempfile.mkdtemp()) is None
      True
    """
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None
