"""Evaluating a trained QCFS ANN and its converted SNNs over a dataset, batch by batch.

Every function pads the last batch to the batch size (so one compiled program serves all
batches) and masks the padding out of the counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from offsetjax import parallel
from offsetjax.convert import convert_variables, spiking_model
from offsetjax.data import Split, StreamingSplit, num_examples, take
from offsetjax.simulate import simulate, simulate_with_statistics
from offsetjax.stats import OffsetStatistics, accumulate, summarize
from offsetjax.train import predict


def padded_batches(split: Split | StreamingSplit, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield ``(images, labels, valid)`` in order; the last batch is zero-padded to ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = num_examples(split)
    for begin in range(0, count, batch_size):
        images, labels = take(split, np.arange(begin, min(begin + batch_size, count)))
        valid = len(labels)
        if valid < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - valid, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(batch_size - valid, labels.dtype)])
        yield images, labels, valid


def _on_mesh(mesh: Mesh | None, images: np.ndarray):
    """The batch as the simulator's input: sharded over ``mesh`` when one is given."""
    if mesh is None:
        return images
    if jax.process_count() > 1:  # each process contributes its own rows of the global batch
        rows = len(images) // jax.process_count()
        images = images[jax.process_index() * rows : (jax.process_index() + 1) * rows]
    return parallel.shard_batch(mesh, images)[0]


def _to_host(array) -> np.ndarray:
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def ann_accuracy(
    model: nn.Module, variables: Any, split: Split | StreamingSplit, *, batch_size: int, mesh: Mesh | None = None
) -> float:
    """Top-1 accuracy of the ANN in eval mode, in [0, 1]; batches sharded over ``mesh`` if given."""
    correct = 0
    variables = variables if mesh is None else parallel.replicate(mesh, variables)
    for images, labels, valid in padded_batches(split, batch_size):
        logits = _to_host(predict(model, variables, _on_mesh(mesh, images)))
        correct += int(np.sum(logits[:valid].argmax(-1) == labels[:valid]))
    return correct / num_examples(split)


def _converted(model, ann_variables, split, num_steps: int, presim_steps: int, iterations: int, saturated: str):
    """The SNN of ``model`` with this schedule, and its variables for ``split``'s image shape."""
    snn = spiking_model(
        model, num_steps=num_steps, presim_steps=presim_steps, iterations=iterations, saturated=saturated
    )
    return snn, convert_variables(snn, ann_variables, take(split, np.arange(1))[0])


def snn_accuracy(
    model: nn.Module,
    ann_variables: Any,
    split: Split,
    *,
    num_steps: int,
    presim_steps: int = 0,
    iterations: int = 0,
    saturated: str = "fire",
    batch_size: int,
    progress=None,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Top-1 accuracy after every step t = 1..T from one simulation, ``[T]`` in [0, 1].

    Args:
      model: the ANN definition (its activation is swapped for IF sites here).
      ann_variables: trained ANN variables.
      split: evaluation data, already normalised.
      num_steps, presim_steps, iterations: T, rho, k (k = 0: the uncalibrated baseline).
      saturated: rule (ii) for never-silent neurons, ``"fire"`` or ``"hold"`` (``spiking_model``).
      batch_size: samples per simulated batch.
      progress: optional callable ``progress(num_samples)`` after each batch.
      mesh: shard every batch over this device mesh (the calibration is per sample, so it
        shards with the batch); ``batch_size`` must divide over its devices.
    """
    snn, variables = _converted(model, ann_variables, split, num_steps, presim_steps, iterations, saturated)
    variables = variables if mesh is None else parallel.replicate(mesh, variables)
    correct = np.zeros(num_steps, np.int64)
    for images, labels, valid in padded_batches(split, batch_size):
        logits = _to_host(simulate(snn, variables, _on_mesh(mesh, images)))  # [T, B, C]
        correct += np.sum(logits[:, :valid].argmax(-1) == labels[None, :valid], axis=1)
        if progress is not None:
            progress(valid)
    return correct / num_examples(split)


def snn_offset_statistics(
    model: nn.Module,
    ann_variables: Any,
    split: Split,
    *,
    num_steps: int,
    presim_steps: int = 0,
    iterations: int = 0,
    saturated: str = "fire",
    batch_size: int,
) -> dict:
    """Table-3 statistics (psi against QCFS with L = ``num_steps``) over a dataset.

    Returns :func:`offsetjax.summarize`'s ``{"sites": {...}, "all": {...}}``.
    """
    snn, variables = _converted(model, ann_variables, split, num_steps, presim_steps, iterations, saturated)
    totals: dict[str, OffsetStatistics] = {}
    for images, _, valid in padded_batches(split, batch_size):
        if valid < batch_size:  # statistics are sums over samples: drop the padding exactly
            images = images[:valid]
        _, per_site = simulate_with_statistics(snn, variables, images)
        for name, stats in per_site.items():
            totals[name] = accumulate(totals.get(name), stats)
    return summarize(totals)
