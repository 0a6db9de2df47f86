"""Device mesh and data-parallel sharding.

jaxcnn trains data-parallel with ``jax.jit`` over a one-axis
:class:`jax.sharding.Mesh` named ``"data"``: each batch is split along its
first axis across the devices, parameters and optimiser state are replicated,
and XLA inserts the gradient all-reduce. The same code runs on one CPU, on
several GPUs, on a TPU slice, or on CPU devices made with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.

In a multi-process job (:mod:`jaxcnn.distributed`) the mesh spans every
device of every process, ordered by process, so each process holds one
contiguous block of rows of every batch. :func:`put` and :func:`put_batch`
build global arrays from what each process has on its host: a full copy for
replicated values, only its own rows for a batch
(:func:`jax.make_array_from_process_local_data`). With one process they are
``jax.device_put``.

Example:
  >>> mesh = make_mesh(1)
  >>> batch_sharding(mesh).spec == P("data"), replicated(mesh).spec == P()
  (True, True)
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcnn.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, devices=None) -> Mesh:
    """A one-axis ``"data"`` mesh over the first ``num_devices`` devices.

    Args:
      num_devices: how many devices (None: all of ``devices``).
      devices: the devices to use (default ``jax.devices()``).

    Returns:
      A :class:`jax.sharding.Mesh`.

    Example:
      >>> make_mesh(1).devices.shape
      (1,)
    """
    devices = list(jax.devices() if devices is None else devices)
    # By process, then id: each process's devices are one contiguous block of the batch axis.
    devices.sort(key=lambda d: (d.process_index, d.id))
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ConfigError(
            f"asked for {num_devices} devices but {len(devices)} are available "
            f"({devices[0].platform}); set train.num_devices to at most {len(devices)}"
        )
    processes = {d.process_index for d in devices}
    if len(processes) > 1 and num_devices != len(devices):
        raise ConfigError(
            f"train.num_devices={num_devices} in a job of {len(processes)} processes: the mesh "
            f"must span every device of every process ({len(devices)}); leave "
            "train.num_devices unset (auto)")
    return Mesh(np.array(devices[:num_devices]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits an array's first (batch) axis over the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "data.batch_size") -> None:
    """Raises a clear error when a batch cannot be split evenly over the mesh.

    Example:
      >>> check_batch_size(32, make_mesh(1))
    """
    n = mesh.devices.size
    if batch_size % n:
        below, above = batch_size // n * n, -(-batch_size // n) * n
        nearest = f"{below} or {above}" if below else f"{above}"
        where = (f"{n} devices" if jax.process_count() == 1 else
                 f"the {n} devices of {jax.process_count()} processes (the batch size is the "
                 "global batch, split over every device of the job)")
        raise ConfigError(
            f"{what}={batch_size} does not divide evenly over {where}; use a multiple of "
            f"{n}, e.g. {nearest}"
            + (", or set train.num_devices" if jax.process_count() == 1 else ""))


def _multi_process(place) -> bool:
    return (jax.process_count() > 1 and isinstance(place, jax.sharding.Sharding)
            and not place.is_fully_addressable)


def _to_global(x, sharding):
    """One leaf as a global array: every process passes the same full value."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _to_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_process_local_data(sharding, host, host.shape)


def put(tree, place):
    """``jax.device_put(tree, place)`` that also places on devices of other processes.

    In a multi-process job every process passes the same values (a replicated
    state, a key, the whole on-device dataset) and each keeps its devices'
    part. With one process this is exactly ``jax.device_put``.

    Example:
      >>> x = put(np.arange(4.0), replicated(make_mesh(2)))
      >>> x.sharding.is_fully_replicated, x.tolist()
      (True, [0.0, 1.0, 2.0, 3.0])
    """
    if not _multi_process(place):
        return jax.device_put(tree, place)
    return jax.tree.map(lambda x: _to_global(x, place), tree)


def local_rows(sharding, rows: int) -> slice:
    """The rows of a ``rows``-row global batch that this process's devices hold.

    Example:
      >>> local_rows(batch_sharding(make_mesh(2)), 8)  # one process holds them all
      slice(0, 8, None)
    """
    if not isinstance(sharding, jax.sharding.Sharding) or sharding.is_fully_addressable:
        return slice(0, rows)
    spans = {(i[0].start or 0, rows if i[0].stop is None else i[0].stop)
             for i in sharding.addressable_devices_indices_map((rows,)).values()}
    start, stop = min(s for s, _ in spans), max(e for _, e in spans)
    if sum(e - s for s, e in spans) != stop - start:
        raise ConfigError("this process's devices do not hold one contiguous block of the "
                          "batch; build the mesh with jaxcnn.sharding.make_mesh")
    return slice(start, stop)


def put_batch(arrays, sharding, rows: int):
    """Global batch arrays from this process's rows (:func:`local_rows`) of each.

    With one process ``arrays`` are the whole batch and this is
    ``jax.device_put``; in a multi-process job each process passes only its
    rows and gets arrays of ``rows`` rows spanning every process.

    Example:
      >>> x, = put_batch((np.ones((8, 2)),), batch_sharding(make_mesh(2)), 8)
      >>> x.shape, len(x.addressable_shards)
      ((8, 2), 2)
    """
    if not _multi_process(sharding):
        return jax.device_put(arrays, sharding)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(
            sharding, np.asarray(a), (rows, *np.shape(a)[1:])), arrays)


__all__ = [
    "DATA_AXIS", "batch_sharding", "check_batch_size", "local_rows", "make_mesh", "put",
    "put_batch", "replicated",
]
