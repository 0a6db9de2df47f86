"""Facts about the software and hardware a result was produced on.

Every result jaxcnn writes (run summaries, checkpoints, benchmarks) carries
these, so results from different machines can be compared and merged.

Example:
  >>> sorted(versions())[:3]
  ['flax', 'jax', 'jaxcnn']
"""

from __future__ import annotations

import ctypes
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


# glibc's mallopt parameters (malloc.h) and their initial values.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_REUSE = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_MMAP_MAX: 0}
# glibc's mmap threshold rises to the size of each mmapped block freed, but never past
# 32 MiB (64-bit builds): larger requests always get fresh pages from the kernel.
MMAP_THRESHOLD_MAX = 32 << 20
# A thread's own heap ("arena") holds at most 64 MiB: larger blocks that one of XLA's
# worker threads allocates get fresh pages whatever the settings, unless the process
# shares one heap (glibc.malloc.arena_max=1 in GLIBC_TUNABLES when it started).
THREAD_HEAP_MAX = 64 << 20
_host_memory_state: str | None = None


@functools.lru_cache(maxsize=None)
def _mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def reuse_host_memory(enable: bool = True) -> bool:
    """Makes the C allocator keep freed host memory for reuse (glibc on Linux).

    XLA's CPU runtime allocates every compiled call's temporary buffer with
    ``malloc`` and frees it when the call returns. glibc serves requests
    larger than its mmap threshold (never more than 32 MiB,
    :data:`MMAP_THRESHOLD_MAX`) with fresh pages from the kernel and unmaps
    them on ``free``, so a step whose temporary buffer is larger page-faults
    through all of it again on every call: seed_cnn's training step at batch
    128 (48 MiB of temporaries) spent a quarter of its CPU time in the kernel
    that way on 2 cores (docs/benchmarks.md, "Host memory"). With ``enable`` glibc
    serves large requests from its heaps (``M_MMAP_MAX=0``) and never trims
    them (``M_TRIM_THRESHOLD``), so the next call reuses the same pages. The
    process then keeps its peak host memory until it exits, as PyTorch's and
    TensorFlow's caching allocators do. A thread's own heap holds at most
    64 MiB (:data:`THREAD_HEAP_MAX`), so a larger buffer that one of XLA's
    worker threads allocates still gets fresh pages; glibc's single shared
    heap (``GLIBC_TUNABLES=glibc.malloc.arena_max=1`` when the process
    starts) covers those too, but it slowed other steps (docs/benchmarks.md).

    It is process-wide. Steps whose temporaries fit under the threshold
    were measured up to 30% slower with it, so :func:`jaxcnn.train.fit` turns it on
    only for a step that needs it (``train.reuse_host_memory=auto``, see
    :func:`reuse_host_memory_for`). ``enable=False`` puts glibc's initial
    settings back.

    Returns:
      True where it took effect (glibc), False elsewhere (macOS, musl:
      nothing changes).

    Example:
      >>> import platform
      >>> reuse_host_memory() == (platform.libc_ver()[0] == "glibc")
      True
      >>> host_memory_state() in ("reuse", None)
      True
    """
    global _host_memory_state
    fn = _mallopt()
    if fn is None:
        return False
    for param, value in (_REUSE if enable else _GLIBC_DEFAULTS).items():
        fn(param, value)
    _host_memory_state = "reuse" if enable else "default"
    return True


def is_host_memory_setting(value) -> bool:
    """Whether ``value`` is a ``reuse_host_memory`` setting: ``"auto"``, True or False.

    Example:
      >>> is_host_memory_setting("auto"), is_host_memory_setting(1)
      (True, False)
    """
    return isinstance(value, bool) or value == "auto"


def reuse_host_memory_for(compiled, setting: bool | str = "auto") -> bool:
    """Applies a ``reuse_host_memory`` setting for a compiled step about to run in a loop.

    ``True`` turns :func:`reuse_host_memory` on, ``False`` leaves the
    allocator alone, and ``"auto"`` turns it on for a CPU program whose
    temporary buffer (XLA's memory analysis of ``compiled``) is larger than
    :data:`MMAP_THRESHOLD_MAX`, the steps that would page-fault through it on
    every call, and no larger than :data:`THREAD_HEAP_MAX` (a larger buffer
    gets fresh pages anyway, measured) unless the process shares one heap
    (started with ``GLIBC_TUNABLES=glibc.malloc.arena_max=1``: seed_cnn on
    32x32x3 images, about 80 MiB of temporaries, then trained 1.35x faster).

    Args:
      compiled: a ``jax.stages.Compiled`` (``jax.jit(f).lower(...).compile()``).
      setting: ``"auto"``, ``True`` or ``False``.

    Returns:
      Whether freed memory is being kept for reuse now.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> small = jax.jit(lambda x: x * 2).lower(jnp.ones(1000)).compile()
      >>> reuse_host_memory_for(small, False) == (host_memory_state() == "reuse")
      True
    """
    if not is_host_memory_setting(setting):
        raise ValueError(f"reuse_host_memory must be 'auto', True or False; got {setting!r}")
    if setting == "auto":
        temp = _temp_bytes(compiled)
        limit = float("inf") if _single_heap() else THREAD_HEAP_MAX
        setting = MMAP_THRESHOLD_MAX < temp <= limit and _runs_on_cpu(compiled)
    if setting:
        reuse_host_memory()
    return _host_memory_state == "reuse"


def _single_heap() -> bool:
    """Whether glibc read ``glibc.malloc.arena_max=1`` when this process started."""
    try:  # the environment glibc saw, whatever os.environ holds now
        with open("/proc/self/environ", "rb") as f:
            start_env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        tunables = start_env.get(b"GLIBC_TUNABLES", b"").decode(errors="replace")
    except OSError:
        tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(t.strip() == "glibc.malloc.arena_max=1" for t in tunables.split(":"))


def _temp_bytes(compiled) -> int:
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - a backend without memory analysis: nothing to decide on
        return 0
    return int(getattr(analysis, "temp_size_in_bytes", 0) or 0)


def _runs_on_cpu(compiled) -> bool:
    import jax

    shardings = [s for s in jax.tree.leaves(compiled.input_shardings)
                 if hasattr(s, "device_set")]
    devices = {d for s in shardings for d in s.device_set}
    return all(d.platform == "cpu" for d in devices) if devices else jax.default_backend() == "cpu"


def host_memory_state() -> str | None:
    """``"reuse"`` or ``"default"`` after :func:`reuse_host_memory`; None before.

    Benchmark rows and run summaries record it, since it changes CPU step times.

    Example:
      >>> host_memory_state() in ("reuse", "default", None)
      True
    """
    return _host_memory_state
