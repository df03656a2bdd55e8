"""Batches as the simulator takes them: fixed-size, padded, placed on a device mesh, and back.

Shared by the evaluators (:mod:`offsetjax.evaluate`) and the data-level calibrations
(:mod:`offsetjax.data_calibration`): every batch has one size, a multiple of the mesh's device
count, so one compiled program serves a whole dataset, and a mask marks the real rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from offsetjax import parallel
from offsetjax._checks import check_int
from offsetjax.splits import Split, StreamingSource, num_examples, take


def padded(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` ``[n, ...]`` zero-padded along the first axis to ``size`` >= n rows."""
    return np.concatenate([rows, np.zeros((size - len(rows), *rows.shape[1:]), rows.dtype)])


def padded_batches(
    split: Split | StreamingSource, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(images, labels, mask)`` in order, every batch of exactly ``batch_size`` rows;
    the last one is zero-padded and ``mask`` ``[batch_size]`` marks the real rows."""
    check_int("batch_size", batch_size, minimum=1)
    count = num_examples(split)
    if count == 0:
        raise ValueError("split has no examples to evaluate")
    for begin in range(0, count, batch_size):
        images, labels = take(split, np.arange(begin, min(begin + batch_size, count)))
        valid = len(labels)
        yield padded(images, batch_size), padded(labels, batch_size), np.arange(batch_size) < valid


def device_batch(batch_size: int, mesh: Mesh | None) -> int:
    """``batch_size`` rounded up to a multiple of the mesh's device count."""
    devices = 1 if mesh is None else mesh.devices.size
    return -(-batch_size // devices) * devices


def on_mesh(mesh: Mesh | None, *arrays: np.ndarray):
    """The batch as the simulator's input: sharded over ``mesh`` when one is given."""
    if mesh is None:
        return arrays
    if jax.process_count() > 1:  # each process contributes its own rows of the global batch
        rows = len(arrays[0]) // jax.process_count()
        arrays = tuple(a[jax.process_index() * rows : (jax.process_index() + 1) * rows] for a in arrays)
    return parallel.shard_batch(mesh, *arrays)


def to_host(tree, mesh: Mesh | None):
    """NumPy copies; arrays over a multi-process mesh are gathered whole onto every process."""
    if mesh is not None and jax.process_count() > 1:
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, tree)
