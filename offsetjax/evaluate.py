"""Evaluating a trained QCFS ANN and its converted SNN over a dataset, batch by batch.

:func:`evaluate_snn` is the one call for the SNN: accuracy after every step t = 1..T and, on
request, the Table-3 statistics, from the same simulation. Every batch, the last one included,
is padded to one fixed size (a multiple of the mesh's device count), so one compiled program
serves the whole dataset, and the padding is masked out of every count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Float

from offsetjax import parallel
from offsetjax._batching import device_batch, on_mesh, padded_batches, to_host
from offsetjax._checks import images_must_fit, trace_network
from offsetjax.convert import schedule
from offsetjax.operations import per_image, with_fan_out
from offsetjax.simulation import check_call, check_images, check_variables_fit, simulate_collecting
from offsetjax.splits import Split, StreamingSource, num_examples
from offsetjax.stats import OffsetStatistics, accumulate, summarize


class SNNEvaluation(NamedTuple):
    """What :func:`evaluate_snn` measured.

    Attributes:
      accuracy: ``[T]`` top-1 accuracy after t = 1..T steps, in [0, 1].
      statistics: :func:`offsetjax.summarize`'s ``{"sites": ..., "all": ...}`` (psi against QCFS
        with L = T), or ``None`` when not requested.
      operations: :func:`offsetjax.operations.per_image`'s summary (per image, for runs of
        t = 1..T steps), or ``None`` when not requested.
    """

    accuracy: np.ndarray
    statistics: dict | None
    operations: dict | None = None


def predict(model: nn.Module, variables: Any, images: Float[ArrayLike, "B ..."]) -> Float[Array, "B C"]:
    """ANN logits in eval mode (running batch-norm statistics).

    ``images`` must be a non-empty, floating, finite batch (normalised as in training; raw
    ``uint8`` images are refused).
    """
    images = check_images(images)
    if not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError("variables must be a mapping with 'params' (the trained ANN's variables)")
    traced = images_must_fit(lambda: trace_network(model, (1, *images.shape[1:])), images)
    what = f"this {type(model).__name__} on images of shape {tuple(images.shape)}"
    check_variables_fit(variables, traced.variables, ("params", "batch_stats"), what)
    return images_must_fit(lambda: _predict(model, variables, images), images)


@functools.partial(jax.jit, static_argnums=0)
def _predict(model: nn.Module, variables: Any, images: Array) -> Array:
    logits = model.apply(variables, images, train=False)
    if logits.ndim != 2:  # static: raised once, while tracing
        raise ValueError(
            f"images of shape {images.shape} gave logits of shape {logits.shape}, not [B, classes]: "
            "images must be one batch [B, H, W, C]"
        )
    return logits


def ann_accuracy(
    model: nn.Module, variables: Any, split: Split | StreamingSource, *, batch_size: int, mesh: Mesh | None = None
) -> float:
    """Top-1 accuracy of the ANN in eval mode, in [0, 1]; batches sharded over ``mesh`` if given."""
    correct = 0
    variables = variables if mesh is None else parallel.replicate(mesh, variables)
    for images, labels, mask in padded_batches(split, device_batch(batch_size, mesh)):
        (images,) = on_mesh(mesh, images)
        logits = to_host(predict(model, variables, images), mesh)
        correct += int(np.sum((logits.argmax(-1) == labels) & mask))
    return correct / num_examples(split)


def evaluate_snn(
    snn: nn.Module,
    variables: Any,
    split: Split | StreamingSource,
    *,
    batch_size: int,
    statistics: bool = False,
    operations: bool = False,
    mesh: Mesh | None = None,
    progress: Callable[[int], Any] | None = None,
) -> SNNEvaluation:
    """Evaluate a spiking network over ``split`` in one pass.

    Args:
      snn: the network (:func:`offsetjax.spiking_model`), carrying its schedule: T, rho, k,
        eps, the saturation rule, SRP's tau and the scan unroll.
      variables: its variables: :func:`offsetjax.convert_variables` of the trained ANN's, or a
        data-level calibration's (:func:`offsetjax.data_potential`, made for this T).
      split: evaluation data, already normalised.
      batch_size: samples per simulated batch, rounded up to a multiple of the mesh's devices.
      statistics: also return the Table-3 statistics (psi against QCFS with L = T).
      operations: also count spike events, synaptic operations and energy
        (:func:`offsetjax.count_operations`), from the same simulation.
      mesh: shard every batch over this device mesh; the calibration is per sample, so it
        shards with the batch, and the result equals the single-device one.
      progress: optional callable ``progress(num_samples)`` after each batch.

    Returns:
      :class:`SNNEvaluation` with ``accuracy`` ``[T]`` (after t = 1..T steps) and, when asked,
      ``statistics`` and ``operations``.
    """
    num_steps = schedule(snn)["num_steps"]
    correct = np.zeros(num_steps, np.int64)
    totals: dict[str, OffsetStatistics] = {}
    events = {name: np.zeros(num_steps) for name in ("spikes", "synops", "effective_acs", "effective_macs")}
    events |= {"presim_spikes": 0.0, "presim_synops": 0.0}
    for index, (images, labels, mask) in enumerate(padded_batches(split, device_batch(batch_size, mesh))):
        sharded_images, sharded_mask = on_mesh(mesh, images, mask)
        if index == 0:  # the network and its variables once (reading them to the host), then placed
            sharded_images = check_call(snn, variables, sharded_images)
            if operations:
                variables, input_macs, dense_macs = with_fan_out(snn, variables, images.shape[1:])
            variables = variables if mesh is None else parallel.replicate(mesh, variables)
        else:  # every batch's images
            sharded_images = check_images(sharded_images)
        logits, per_site, ops = to_host(
            simulate_collecting(snn, variables, sharded_images, sharded_mask if statistics else None, operations),
            mesh,
        )
        for name, stats in (per_site or {}).items():
            totals[name] = accumulate(totals.get(name), stats)
        if operations:
            sites, layers = ops
            weight = mask.astype(np.float64)
            for name in ("spikes", "synops", "presim_spikes", "presim_synops"):
                events[name] = events[name] + sum(site[name] for site in sites.values()) @ weight
            events["effective_acs"] = events["effective_acs"] + layers["accumulates"] @ weight
            events["effective_macs"] = events["effective_macs"] + layers["multiply_accumulates"] @ weight
        correct += np.sum((logits.argmax(-1) == labels[None]) & mask[None], axis=1)
        if progress is not None:
            progress(int(mask.sum()))
    count = num_examples(split)
    summary = None
    if operations:
        summary = per_image(events, count, input_macs=float(input_macs), dense_macs=float(dense_macs))
    return SNNEvaluation(correct / count, summarize(totals) if statistics else None, summary)
