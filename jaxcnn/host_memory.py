"""Host memory on CPU: whether glibc keeps freed memory for the next training step.

XLA's CPU runtime allocates every compiled call's temporary buffer with
``malloc`` and frees it when the call returns. glibc serves requests larger
than its mmap threshold (never more than 32 MiB, :data:`MMAP_THRESHOLD_MAX`)
with fresh pages from the kernel and unmaps them on ``free``, so a step whose
temporary buffer is larger page-faults through all of it again on every
call: seed_cnn's training step at batch 128 (48 MiB of temporaries) spent a
quarter of its CPU time in the kernel that way on 2 cores
(docs/benchmarks.md, "Host memory").

:func:`reuse_host_memory` changes that for the whole process, so jaxcnn is
explicit about it:

* it logs one line (once per process) saying what it changed and how to
  turn it off;
* a setting the user gave glibc through the environment (``MALLOC_MMAP_MAX_``,
  ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES=glibc.malloc.mmap_max=...:
  glibc.malloc.trim_threshold=...``) wins: jaxcnn leaves that parameter alone;
* ``reuse_host_memory(False)`` puts back glibc's values from before. One thing
  cannot be put back: any ``mallopt`` call switches off glibc's *dynamic*
  mmap threshold (the threshold that rises to the size of each large block
  freed) for the rest of the process, and glibc has no call to switch it on
  again; the threshold stays where it was (128 KiB unless it had risen).

Who turns it on: ``jaxcnn train`` and ``jaxcnn bench`` (``auto``: only for a
CPU step with 32-64 MiB of temporaries, where it was measured to pay; off
with ``--reuse-host-memory off``), and runs from a :class:`jaxcnn.Config`
(``train.reuse_host_memory``, ``auto`` by default: a run owns its process).
The library's building blocks (:func:`jaxcnn.training.fit`,
:class:`jaxcnn.bench.BenchConfig`) leave the allocator alone unless asked:
a library does not change its host process on its own.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

__all__ = ["MMAP_THRESHOLD_MAX", "THREAD_HEAP_MAX", "host_memory_state",
           "is_host_memory_setting", "reuse_host_memory", "reuse_host_memory_for", "temp_bytes",
           "user_settings", "wants_reuse"]

log = logging.getLogger("jaxcnn")

# glibc's mallopt parameters (malloc.h), their initial values, and the names
# under which a user can set them through the environment when a process starts.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_REUSE = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_MMAP_MAX: 0}
_ENV_NAMES = {_M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
              _M_MMAP_MAX: ("MALLOC_MMAP_MAX_", "glibc.malloc.mmap_max")}
# glibc's mmap threshold rises to the size of each mmapped block freed, but never past
# 32 MiB (64-bit builds): larger requests always get fresh pages from the kernel.
MMAP_THRESHOLD_MAX = 32 << 20
# A thread's own heap ("arena") holds at most 64 MiB: larger blocks that one of XLA's
# worker threads allocates get fresh pages whatever the settings, unless the process
# shares one heap (glibc.malloc.arena_max=1 in GLIBC_TUNABLES when it started).
THREAD_HEAP_MAX = 64 << 20

_state: str | None = None
_changed: set[int] = set()
_noticed = False


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


def _start_environment() -> dict[str, str]:
    """The environment this process started with (what glibc read), not today's os.environ.

    glibc parses ``GLIBC_TUNABLES`` in place, writing NULs over its ``:``
    separators, so the tunables after the first appear in
    ``/proc/self/environ`` as separate ``glibc.*=value`` entries; they are
    joined back here.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    found: dict[str, str] = {}
    last = None
    for item in raw.decode(errors="replace").split("\0"):
        if "=" not in item:
            continue
        name, value = item.split("=", 1)
        if last == "GLIBC_TUNABLES" and name.startswith("glibc."):
            found["GLIBC_TUNABLES"] += ":" + item
            continue
        found[name] = value
        last = name
    return found


def _tunables(environment: dict[str, str]) -> dict[str, str]:
    items = (t.strip().split("=", 1) for t in environment.get("GLIBC_TUNABLES", "").split(":"))
    return {kv[0]: kv[1] for kv in items if len(kv) == 2}


def user_settings() -> dict[str, str]:
    """glibc malloc parameters set through the environment when the process started.

    Returns:
      ``{name: value}`` for ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_MAX_``
      and their ``GLIBC_TUNABLES`` forms; jaxcnn never overrides these.

    Example:
      >>> isinstance(user_settings(), dict)
      True
    """
    start = _start_environment()
    tunables = _tunables(start)
    found = {}
    for env_name, tunable in _ENV_NAMES.values():
        if env_name in start:
            found[env_name] = start[env_name]
        if tunable in tunables:
            found[tunable] = tunables[tunable]
    return found


def _user_set(param: int, found: dict[str, str]) -> bool:
    return any(name in found for name in _ENV_NAMES[param])


def reuse_host_memory(enable: bool = True) -> bool:
    """Makes glibc keep freed host memory for reuse, or puts its settings back.

    With ``enable`` glibc serves large requests from its heaps
    (``M_MMAP_MAX=0``) and never trims them (``M_TRIM_THRESHOLD``), so the
    next call of a compiled step reuses the same pages. The process then keeps
    its peak host memory until it exits, as PyTorch's and TensorFlow's caching
    allocators do. A thread's own heap holds at most 64 MiB
    (:data:`THREAD_HEAP_MAX`), so a larger buffer that one of XLA's worker
    threads allocates still gets fresh pages; glibc's single shared heap
    (``GLIBC_TUNABLES=glibc.malloc.arena_max=1`` when the process starts)
    covers those too, but it slowed other steps (docs/benchmarks.md).

    Process-wide; the first change logs one line. Parameters set through the
    environment are left as the user set them. ``enable=False`` restores the
    values jaxcnn changed (see the module docstring for the one glibc
    behaviour that cannot be restored).

    Returns:
      True where glibc's settings are (now) jaxcnn's reuse settings or were
      restored; False where nothing could change (not glibc, or every
      parameter was set through the environment).

    Example:
      >>> import platform
      >>> reuse_host_memory() == (platform.libc_ver()[0] == "glibc" and not user_settings())
      True
      >>> _ = reuse_host_memory(False)
      >>> host_memory_state() in ("default", None)
      True
    """
    global _state, _noticed
    fn = _mallopt()
    if fn is None:
        return False
    if not enable:
        for param in sorted(_changed):
            fn(param, _GLIBC_DEFAULTS[param])
        if _changed:
            _state = "default"
        _changed.clear()
        return True
    found = user_settings()
    params = [p for p in _REUSE if not _user_set(p, found)]
    for param in params:
        fn(param, _REUSE[param])
        _changed.add(param)
    if not params:
        return False
    _state = "reuse"
    if not _noticed:
        _noticed = True
        kept = f" (kept from the environment: {', '.join(sorted(found))})" if found else ""
        log.warning("jaxcnn: glibc malloc now keeps freed memory for reuse in this process "
                    "(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max)%s, which makes CPU steps with large "
                    "temporaries faster; turn it off with --reuse-host-memory off "
                    "(train.reuse_host_memory=false)", kept)
    return True


def is_host_memory_setting(value) -> bool:
    """Whether ``value`` is a ``reuse_host_memory`` setting: ``"auto"``, True or False.

    Example:
      >>> is_host_memory_setting("auto"), is_host_memory_setting(1)
      (True, False)
    """
    return isinstance(value, bool) or value == "auto"


def wants_reuse(temp_bytes: int, on_cpu: bool, setting: bool | str = "auto") -> bool:
    """Whether a step with ``temp_bytes`` of temporaries should run with reuse on.

    ``True``/``False`` say so; ``"auto"`` says yes for a CPU program whose
    temporary buffer is larger than :data:`MMAP_THRESHOLD_MAX` (it would
    page-fault through it on every call) and no larger than
    :data:`THREAD_HEAP_MAX` (a larger buffer gets fresh pages anyway,
    measured) unless the process shares one heap (started with
    ``GLIBC_TUNABLES=glibc.malloc.arena_max=1``: seed_cnn on 32x32x3 images,
    about 80 MiB of temporaries, then trained 1.35x faster).

    Example:
      >>> wants_reuse(48 << 20, True), wants_reuse(8 << 20, True), wants_reuse(48 << 20, False)
      (True, False, False)
    """
    if not is_host_memory_setting(setting):
        raise ValueError(f"reuse_host_memory must be 'auto', True or False; got {setting!r}")
    if setting != "auto":
        return setting
    limit = float("inf") if _single_heap() else THREAD_HEAP_MAX
    return on_cpu and MMAP_THRESHOLD_MAX < temp_bytes <= limit


def reuse_host_memory_for(compiled, setting: bool | str = "auto") -> bool:
    """Applies a ``reuse_host_memory`` setting for a compiled step about to run in a loop.

    ``True`` turns :func:`reuse_host_memory` on, ``False`` leaves the
    allocator alone, and ``"auto"`` turns it on when :func:`wants_reuse` says
    so for ``compiled`` (XLA's memory analysis of its temporaries).

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
    if wants_reuse(temp_bytes(compiled), _runs_on_cpu(compiled), setting):
        reuse_host_memory()
    return _state == "reuse"


def _single_heap() -> bool:
    """Whether glibc read ``glibc.malloc.arena_max=1`` when this process started."""
    return _tunables(_start_environment()).get("glibc.malloc.arena_max", "").strip() == "1"


def temp_bytes(compiled) -> int:
    """Bytes of temporaries of a compiled program (XLA's memory analysis; 0 if unknown).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> temp_bytes(jax.jit(lambda x: x * 2).lower(jnp.ones(4)).compile()) >= 0
      True
    """
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
    return _state
