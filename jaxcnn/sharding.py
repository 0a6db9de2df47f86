"""Device mesh and data-parallel sharding.

jaxcnn trains data-parallel with ``jax.jit`` over a one-axis
:class:`jax.sharding.Mesh` named ``"data"``: each batch is split along its
first axis across the devices, parameters and optimiser state are replicated,
and XLA inserts the gradient all-reduce. The same code runs on one CPU, on
several GPUs, on a TPU slice, or on CPU devices made with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.

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
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ConfigError(
            f"asked for {num_devices} devices but {len(devices)} are available "
            f"({devices[0].platform}); set train.num_devices to at most {len(devices)}"
        )
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
        raise ConfigError(
            f"{what}={batch_size} does not divide evenly over {n} devices; use a multiple of "
            f"{n} (e.g. {max(n, batch_size // n * n)}) or set train.num_devices"
        )


__all__ = [
    "DATA_AXIS", "batch_sharding", "check_batch_size", "make_mesh", "replicated",
]
