"""JAX's persistent compilation cache, as the ``jaxcnn`` command turns it on.

A process-wide JAX setting: the ``jaxcnn`` command turns it on at start-up
(``JAXCNN_COMPILATION_CACHE=off`` opts out); library code never does.
"""

from __future__ import annotations

import os

__all__ = ["enable_compilation_cache"]


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
