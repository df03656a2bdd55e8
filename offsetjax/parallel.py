"""Data parallelism on a device mesh: the batch axis sharded, parameters replicated.

Every function in offsetjax is a ``jit``-compiled SPMD program, so data parallelism needs no
change to the model or the simulator: place the batch with :func:`shard_batch` and the
variables with :func:`replicate`, and XLA partitions the work (batch-norm statistics in
training become cross-device means; the per-sample calibration of the SNN shards with the
batch). Multi-host: call :func:`initialize_distributed` first; each process then reads only
its own rows of every global batch (``offsetjax.training.data.batches(..., process_index=,
process_count=)``) and :func:`shard_batch` assembles the global array.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "LAUNCHER_VARIABLES",
    "batch_sharding",
    "data_mesh",
    "initialize_distributed",
    "local_value",
    "replicate",
    "shard_batch",
]

#: Name of the mesh axis the batch is split over.
DATA_AXIS = "data"

#: Environment variables that mean a multi-process launcher is present.
LAUNCHER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",
    "COORDINATOR_ADDRESS",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def initialize_distributed(timeout_s: int = 300) -> bool:
    """``jax.distributed.initialize`` when a launcher's environment is present; returns whether it ran.

    On Cloud TPU slices, SLURM and Open MPI, JAX discovers the coordinator itself. Elsewhere
    (and under :func:`offsetjax.launch.launch_local`) set ``JAX_COORDINATOR_ADDRESS`` (``host:port``),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; JAX itself reads only the first, so they are
    passed on here. On CPUs, set ``JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo`` for collectives
    across processes (``launch_local`` does).

    Args:
      timeout_s: how long to wait for every process to reach the coordinator.

    Raises:
      RuntimeError: the coordinator was not reached within ``timeout_s`` (naming it), or the
        launcher's variables are incomplete.
    """
    if not any(os.environ.get(name) for name in LAUNCHER_VARIABLES):
        return False
    if os.environ.get("SLURM_NTASKS") == "1" or os.environ.get("OMPI_COMM_WORLD_SIZE") == "1":
        return False
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    kwargs: dict[str, Any] = {"initialization_timeout": timeout_s}
    if address and "JAX_NUM_PROCESSES" in os.environ:
        if "JAX_PROCESS_ID" not in os.environ:
            raise RuntimeError("JAX_NUM_PROCESSES is set but JAX_PROCESS_ID is not: set both, or neither")
        kwargs.update(
            coordinator_address=address,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    if "process_id" in kwargs and kwargs["process_id"] != 0:
        # JAX aborts the whole process (a fatal C++ check) when the coordinator never answers;
        # probing its port first turns the common case into an exception.
        _wait_for_coordinator(address, timeout_s)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as error:  # the coordination service raises several types
        raise RuntimeError(
            f"multi-process start-up failed (coordinator {address or 'discovered by JAX'}, "
            f"waited up to {timeout_s} s): {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    return True


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"multi-process start-up failed (coordinator {address}, waited up to {timeout_s:g} s): "
                    f"nothing answers there ({error.strerror or error}); is process 0 running?"
                ) from None
            time.sleep(0.25)


def local_value(array) -> np.ndarray:
    """The host value of an array every process holds whole (replicated), or of a local one.

    ``float(x)`` fails on an array spanning other processes' devices, even when each process
    has a complete copy; this reads this process's copy.
    """
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return np.asarray(array.addressable_data(0))
    return np.asarray(array)


def data_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh named :data:`DATA_AXIS` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch over ``mesh``: its leading (sample) axis split along :data:`DATA_AXIS`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place every leaf of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Split arrays along axis 0 over the mesh.

    Single process: ``arrays`` are the global batch. Several processes: each passes its own
    rows (the global batch is their concatenation in process order).

    Raises:
      ValueError: when the batch does not divide evenly over the devices.
    """
    sharding = batch_sharding(mesh)
    out = []
    for array in arrays:
        local_devices = mesh.devices.size // jax.process_count()
        if array.shape[0] % local_devices:
            raise ValueError(
                f"batch of {array.shape[0]} rows per process does not divide over {local_devices} local devices; "
                "choose a batch size that is a multiple of the device count"
            )
        if jax.process_count() == 1:
            out.append(jax.device_put(array, sharding))
        else:
            out.append(jax.make_array_from_process_local_data(sharding, array))
    return tuple(out)
