"""Many processes as one program, on JAX's own distributed runtime.

A multi-GPU host, a SLURM cluster or a TPU pod slice runs one jaxcnn process
per host (or per GPU); :func:`initialize` joins them through
:func:`jax.distributed.initialize` before any device is touched. After that
``jax.devices()`` lists every device of every process, the data mesh spans
them all (:mod:`jaxcnn.sharding`), XLA's collectives carry the gradient
all-reduce between processes, and Orbax saves and restores checkpoints
collectively. This module holds the little that is about processes rather
than arrays:

* start-up: flags, ``JAXCNN_*`` environment variables or the cluster's own
  (SLURM, Open MPI, Cloud TPU), with clear errors and a bounded wait for an
  unreachable coordinator;
* who writes: :func:`is_primary` (process 0 prints, writes history, plots
  and ``summary.json``);
* decisions every process must take alike (:func:`agree`);
* failure: a process that fails tells the others, which stop with the same
  exit code and a message naming it (:class:`FailureWatch`).

With one process nothing here does anything: :func:`initialize` returns
without starting the runtime unless told to (``mode="on"``).

Example:
  >>> info = initialize(mode="off")
  >>> info.num_processes, info.process_id, is_primary()
  (1, 0, True)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from typing import Mapping

import jax
import numpy as np

from jaxcnn.errors import ConfigError

log = logging.getLogger("jaxcnn")

MODES = ("auto", "on", "off")
ENV_MODE = "JAXCNN_DISTRIBUTED"
ENV_COORDINATOR = "JAXCNN_COORDINATOR"
ENV_NUM_PROCESSES = "JAXCNN_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXCNN_PROCESS_ID"
ENV_TIMEOUT = "JAXCNN_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 120

# The key a failing process writes in the coordination service's key-value store.
_FAILED_KEY = "jaxcnn/failed"
_ACK_PREFIX = "jaxcnn/failure_seen/"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in the job.

    Attributes:
      process_id: this process's index, 0 to ``num_processes - 1``.
      num_processes: processes in the job.
      coordinator: the coordinator's ``HOST:PORT`` (None: one process).
      source: what decided it: ``off``, ``single`` (auto, nothing asked for
        more), ``flags`` (arguments or ``JAXCNN_*`` variables), or the
        cluster JAX detected (``slurm``, ``openmpi``, ``tpu``).
    """

    process_id: int = 0
    num_processes: int = 1
    coordinator: str | None = None
    source: str = "single"

    @property
    def distributed(self) -> bool:
        """Whether JAX's distributed runtime is running in this process."""
        return self.source not in ("off", "single")


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster this process runs in, from its environment; None: none.

    Only job layouts with more than one process count: ``slurm`` (``srun``
    with several tasks), ``openmpi`` (``mpirun -n N``) and ``tpu`` (a Cloud
    TPU VM with several workers). JAX's own detection then fills in the
    coordinator, the process count and this process's id.

    Example:
      >>> detect_cluster({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]",
      ...                 "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"})
      'slurm'
      >>> detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
      True
    """
    env = os.environ if environ is None else environ

    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")
    if all(v in env for v in slurm) and count("SLURM_NTASKS") > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env or "PMIX_SERVER_URI2" in env:
        if count("OMPI_COMM_WORLD_SIZE") > 1:
            return "openmpi"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return "tpu"
    return None


def _int_setting(value, name: str, env_name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number; got {value!r} (from --{name.replace('_', '-')}"
                          f" or {env_name})") from None


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator must be HOST:PORT, e.g. node001:8476 or "
                          f"10.0.0.5:8476; got {address!r}")
    return host.strip("[]"), int(port)


def _runtime_started() -> bool:
    from jax._src import distributed as _jd

    return _jd.global_state.client is not None


def _backends_started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def _wait_for_coordinator(host: str, port: int, timeout: float, who: str) -> None:
    """Waits until the coordinator accepts connections, or raises a clear error."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout)):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    reason = last.strerror if isinstance(last, OSError) and last.strerror else last
    raise ConfigError(
        f"{who} could not reach the coordinator at {host}:{port} within {timeout:g}s "
        f"({reason}). Check that process 0 is running with the same --coordinator, that "
        f"{host} resolves from this machine and port {port} is open (firewall), or allow "
        f"more time with --distributed-timeout (or {ENV_TIMEOUT})")


def _check_port_free(port: int) -> None:
    """Process 0 serves the coordinator: its port must be free on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise ConfigError(
                f"process 0 serves the coordinator on port {port}, but it cannot listen there "
                f"({e.strerror or e}): another job (or an earlier run still exiting) holds it. "
                "Choose another port in --coordinator HOST:PORT, the same on every process"
            ) from None


def initialize(mode: str | None = None, *, coordinator: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_seconds: float | None = None, local_device_ids=None,
               environ: Mapping[str, str] | None = None) -> ProcessInfo:
    """Joins this process to a multi-process job; call it before anything touches a device.

    Each setting comes from its argument, else its environment variable
    (``JAXCNN_DISTRIBUTED``, ``JAXCNN_COORDINATOR``,
    ``JAXCNN_NUM_PROCESSES``, ``JAXCNN_PROCESS_ID``,
    ``JAXCNN_DISTRIBUTED_TIMEOUT``). ``mode``:

    * ``auto`` (default): start the runtime when a coordinator or a process
      count above 1 is given, or a multi-process cluster is detected
      (:func:`detect_cluster`); otherwise stay a single process.
    * ``on``: always start it (with nothing given, JAX's cluster detection
      must find the job, as on a Cloud TPU pod slice).
    * ``off``: never.

    On CPU, JAX's gloo collectives are switched on, so several processes on
    one machine (or several machines) run the same code as GPUs and TPUs do.
    A process other than 0 first waits up to ``timeout_seconds`` for the
    coordinator to accept connections and fails with a message naming the
    address and what to check, instead of hanging.

    Args:
      mode: ``auto``, ``on`` or ``off``.
      coordinator: ``HOST:PORT`` of process 0 (the same on every process).
      num_processes: processes in the job.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      timeout_seconds: how long to wait for the coordinator and for every
        process to join (default 120).
      local_device_ids: the local devices this process uses (None: all).
      environ: the environment to read (default ``os.environ``).

    Returns:
      A :class:`ProcessInfo`. Calling again returns the running job's.

    Raises:
      ConfigError: a bad or incomplete setting, an unreachable coordinator,
        or a call after JAX already started its devices.

    Example:
      >>> initialize("auto", environ={}).source
      'single'
      >>> initialize("on", coordinator="localhost:1234", num_processes=2, process_id=2)
      Traceback (most recent call last):
      ...
      jaxcnn.errors.ConfigError: process id 2 is out of range for 2 processes: give each process its own --process-id from 0 to 1
    """
    env = os.environ if environ is None else environ
    mode = mode or env.get(ENV_MODE) or "auto"
    if mode not in MODES:
        raise ConfigError(f"--distributed must be one of {', '.join(MODES)}; got {mode!r}")
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    num_processes = _int_setting(num_processes if num_processes is not None
                                 else env.get(ENV_NUM_PROCESSES), "num_processes",
                                 ENV_NUM_PROCESSES)
    process_id = _int_setting(process_id if process_id is not None else env.get(ENV_PROCESS_ID),
                              "process_id", ENV_PROCESS_ID)
    timeout = float(timeout_seconds if timeout_seconds is not None
                    else env.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT_SECONDS)
    if timeout <= 0:
        raise ConfigError(f"--distributed-timeout must be > 0 seconds; got {timeout:g}")
    if _runtime_started():
        return current()
    if mode == "off":
        return ProcessInfo(source="off")
    given = coordinator is not None or num_processes is not None or process_id is not None
    cluster = None if given else detect_cluster(env)
    if mode == "auto" and not given and cluster is None:
        return ProcessInfo(source="single")
    if mode == "auto" and given and num_processes == 1 and coordinator is None:
        return ProcessInfo(source="single")
    if given:
        missing = [flag for flag, v in (("--coordinator", coordinator),
                                        ("--num-processes", num_processes),
                                        ("--process-id", process_id)) if v is None]
        if missing:
            raise ConfigError(
                f"a multi-process run needs --coordinator HOST:PORT, --num-processes N and "
                f"--process-id I on every process; missing {', '.join(missing)} (or "
                f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})")
        if num_processes < 1:
            raise ConfigError(f"--num-processes must be >= 1; got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ConfigError(
                f"process id {process_id} is out of range for {num_processes} processes: give "
                f"each process its own --process-id from 0 to {num_processes - 1}")
        host, port = _split_address(coordinator)
    if _backends_started():
        raise ConfigError(
            "jaxcnn.distributed.initialize must run before JAX touches any device (an earlier "
            "jax.devices() or computation started a single-process backend); call it first "
            "thing in the script")
    if jax.config.jax_cpu_collectives_implementation in (None, "none", ""):
        # Cross-process collectives on CPU devices (a test cluster on one machine).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    who = f"process {process_id} of {num_processes}" if given else "this process"
    if given:
        if process_id == 0:
            _check_port_free(port)
        else:
            _wait_for_coordinator(host, port, timeout, who)
        log.info("%s: joining the job at %s (waiting up to %gs for every process)", who,
                 coordinator, timeout)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   local_device_ids=local_device_ids,
                                   initialization_timeout=int(max(timeout, 1)))
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{who} could not start JAX's distributed runtime: {e}. With no "
                          "cluster detected, give --coordinator, --num-processes and "
                          "--process-id") from None
    if jax.process_count() > 1:
        # Every process present, then one collective over every device: the CPU
        # collectives set up their communicators here, where all processes arrive
        # together, not at the first training step, which a slow compile can delay past
        # their 30 s rendezvous.
        _jd_client().wait_at_barrier("jaxcnn:started", int(timeout * 1000))
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxcnn: every process started")
    info = current(source="flags" if given else (cluster or "detected"))
    log.info("process %d of %d: %d local of %d devices (%s)", info.process_id,
             info.num_processes, jax.local_device_count(), jax.device_count(),
             jax.devices()[0].platform)
    return info


def _jd_client():
    from jax._src import distributed as _jd

    return _jd.global_state.client


def current(source: str | None = None) -> ProcessInfo:
    """The running job's :class:`ProcessInfo` (one process when none was started).

    Example:
      >>> current().num_processes >= 1
      True
    """
    from jax._src import distributed as _jd

    state = _jd.global_state
    if state.client is None:
        return ProcessInfo(source=source or "single")
    return ProcessInfo(state.process_id, state.num_processes, state.coordinator_address,
                       source or "flags")


def is_primary() -> bool:
    """Whether this process writes the run's files and prints (process 0).

    Example:
      >>> is_primary()
      True
    """
    return jax.process_index() == 0


def agree(value: float | int | bool):
    """``value`` as process 0 has it, in every process: for decisions that read a clock
    or a signal, which processes would otherwise take differently (a save that only some
    processes join never finishes). With one process, ``value`` itself.

    Example:
      >>> agree(True), agree(3)
      (True, 3)
    """
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(np.asarray(value, dtype=np.float64))
    return type(value)(out.item())


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing with one process).

    Example:
      >>> barrier("after the results directory is ready")
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def reached_preemption(step: int) -> bool:
    """Whether every process agreed to stop at ``step`` after a preemption notice (SIGTERM
    to any of them); always False with one process.

    Call it with the same increasing ``step`` at the same points in every process.
    JAX's preemption service catches SIGTERM in a multi-process job, and the
    processes agree on the first step after the notice that all of them have yet
    to reach.

    Example:
      >>> reached_preemption(0)
      False
    """
    if not _runtime_started():
        return False
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(int(step))


class FailureWatch:
    """Stops every process of a job, with one exit code, when one of them fails.

    A process that fails calls :meth:`fail` with its exit code and message:
    they go to the coordination service's key-value store. A background
    thread in every other process waits on that key; on seeing it, the
    process prints ``process I failed (exit C): MESSAGE`` and exits with the
    same code, even while its main thread waits in a collective that the
    failed process will never join. With one process it does nothing.

    Example:
      >>> with FailureWatch() as watch:
      ...     watch.active
      False
    """

    def __init__(self, poll_seconds: float = 0.25, ack_seconds: float = 10.0):
        self.active = _runtime_started() and jax.process_count() > 1
        self._poll_ms = int(poll_seconds * 1000)
        self._ack_seconds = ack_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "FailureWatch":
        if self.active:
            self._thread = threading.Thread(target=self._watch, name="jaxcnn-failure-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            # Joined before the interpreter exits: a thread still inside the runtime's
            # C++ call at shutdown would abort the process.
            self._thread.join(timeout=5 * self._poll_ms / 1000 + 1)

    def _watch(self) -> None:
        client = _jd_client()
        while not self._stop.is_set():
            try:
                value = client.blocking_key_value_get(_FAILED_KEY, self._poll_ms)
            except Exception:  # noqa: BLE001 - a timeout: nobody failed yet
                continue
            if self._stop.is_set():
                return
            pid, code, message = value.split("\t", 2)
            if int(pid) == jax.process_index():
                return
            self._follow(int(pid), int(code), message)

    def _follow(self, pid: int, code: int, message: str) -> None:
        """Ends this process because process ``pid`` failed: its message, its code."""
        client = _jd_client()
        me = jax.process_index()
        sys.stdout.flush()
        print(f"jaxcnn: error: process {pid} of {jax.process_count()} failed (exit {code}): "
              f"{message}; stopping process {me} too", file=sys.stderr, flush=True)
        try:
            client.key_value_set(f"{_ACK_PREFIX}{me}", "1")
            if me == 0:
                # The coordination service lives here: let the failed process finish
                # exiting first, or the runtime would abort it mid-exit.
                client.blocking_key_value_get(f"{_ACK_PREFIX}{pid}", 5000)
                time.sleep(0.5)
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
        os._exit(code)

    @staticmethod
    def _reported() -> tuple[int, int, str] | None:
        """The failure a process reported, if any: ``(process, code, message)``."""
        try:
            value = _jd_client().key_value_try_get(_FAILED_KEY)
        except Exception:  # noqa: BLE001 - not found
            return None
        pid, code, message = value.split("\t", 2)
        return int(pid), int(code), message

    def fail(self, code: int, message: str) -> None:
        """Tells the other processes that this one failed, then ends this process with
        ``code`` (without waiting in collectives or JAX's shutdown barrier, which the
        others would never reach). Returns only when the watch is not active."""
        if not self.active:
            return
        self._stop.set()
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        client = _jd_client()
        me = jax.process_index()
        reported = self._reported()
        if reported is not None and reported[0] != me:
            # Failed because another process did first (a collective lost its peer):
            # the first failure is the job's.
            self._follow(*reported)
        first = message.splitlines()[0] if message else "unknown error"
        try:
            client.key_value_set(_FAILED_KEY, f"{me}\t{int(code)}\t{first}")
        except Exception:  # noqa: BLE001 - another process failed first; it told everyone
            pass
        try:  # this process knows (several may fail alike, e.g. a diverged loss)
            client.key_value_set(f"{_ACK_PREFIX}{me}", "1")
        except Exception:  # noqa: BLE001
            pass
        if me == 0:
            # The coordination service lives in this process: keep it up until the others
            # have read the failure (bounded), so they stop with its message and code.
            deadline = time.monotonic() + self._ack_seconds
            while time.monotonic() < deadline:
                try:
                    if len(client.key_value_dir_get(_ACK_PREFIX)) >= jax.process_count():
                        break
                except Exception:  # noqa: BLE001
                    break
                time.sleep(0.05)
        os._exit(int(code))


__all__ = [
    "DEFAULT_TIMEOUT_SECONDS", "ENV_COORDINATOR", "ENV_MODE", "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID", "ENV_TIMEOUT", "FailureWatch", "MODES", "ProcessInfo", "agree", "barrier",
    "current",
    "detect_cluster", "initialize", "is_primary", "reached_preemption",
]
