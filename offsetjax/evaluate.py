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
from offsetjax._checks import compute_dtype, images_must_fit, widen_half
from offsetjax.convert import schedule
from offsetjax.operations import OperationsPerImage, with_fan_out
from offsetjax.simulation import check_ann_variables, check_call, check_images, input_dtype, simulate_collecting
from offsetjax.splits import Split, StreamingSource, num_examples
from offsetjax.stats import OffsetStatistics, accumulate, summarize

__all__ = ["SNNEvaluation", "ann_accuracy", "evaluate_snn", "padded_batches", "predict"]


class SNNEvaluation(NamedTuple):
    """What :func:`evaluate_snn` measured.

    Attributes:
      accuracy: ``[T]`` top-1 accuracy after t = 1..T steps, in [0, 1].
      statistics: :func:`offsetjax.summarize`'s ``{"sites": ..., "all": ...}`` (psi against QCFS
        with L = T), or ``None`` when not requested.
      operations: :class:`offsetjax.operations.OperationsPerImage`, the operations per image for
        runs of t = 1..T steps (``.at(t)`` for one), or ``None`` when not requested.
      predictions: ``[T, N]`` int32, each image's predicted class after t = 1..T steps, in the
        split's order (what names the images whose prediction moved between two runs).
    """

    accuracy: np.ndarray
    statistics: dict | None
    operations: OperationsPerImage | None = None
    predictions: np.ndarray | None = None


def predict(model: nn.Module, variables: Any, images: Float[ArrayLike, "B ..."]) -> Float[Array, "B C"]:
    """ANN logits in eval mode (running batch-norm statistics).

    ``images`` must be a non-empty, floating, finite batch (normalised as in training; raw
    ``uint8`` images are refused); half-precision images are cast up to the network's compute
    dtype (its ``dtype`` field, else its parameters'), as in :func:`offsetjax.simulate`. The
    variables are checked before anything runs: every leaf of ``params`` and ``batch_stats`` by
    name, shape and dtype, and finite (not under a caller's ``jit``, where they are tracers).
    """
    images = check_images(images)
    check_ann_variables(model, variables, images)
    images = widen_half(images, compute_dtype(model, variables["params"]))
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
    """Top-1 accuracy of the ANN in eval mode, in [0, 1]; batches sharded over ``mesh`` if given.
    The variables are checked once, as :func:`predict` checks them; every batch's images."""
    correct = 0
    for index, (images, labels, mask) in enumerate(padded_batches(split, device_batch(batch_size, mesh))):
        (images,) = on_mesh(mesh, images)
        images = check_images(images)
        if index == 0:
            check_ann_variables(model, variables, images)
            dtype = compute_dtype(model, variables["params"])
            variables = variables if mesh is None else parallel.replicate(mesh, variables)
        images = widen_half(images, dtype)
        logits = to_host(images_must_fit(lambda x=images, v=variables: _predict(model, v, x), images), mesh)
        correct += int(np.sum((logits.argmax(-1) == labels) & mask))
    return correct / num_examples(split)


#: Why :func:`evaluate_snn` refuses a per-sample v(0).
PER_SPLIT = "evaluate_snn runs one v(0) over every batch of the split"


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
        data-level calibration's (:func:`offsetjax.data_potential`, made for this T). Checked
        once, before anything runs, as :func:`offsetjax.simulate` checks them; a per-sample v(0)
        (:func:`offsetjax.calibrate_network`'s, for one batch) is refused: it cannot serve every
        batch of a split.
      split: evaluation data, already normalised.
      batch_size: samples per simulated batch, rounded up to a multiple of the mesh's devices.
      statistics: also return the Table-3 statistics (psi against QCFS with L = T).
      operations: also count spike events, synaptic operations and energy
        (:func:`offsetjax.count_operations`), from the same simulation.
      mesh: shard every batch over this device mesh; the calibration is per sample, so it
        shards with the batch, and the result equals the single-device one.
      progress: optional callable ``progress(num_samples)`` after each batch.

    Returns:
      :class:`SNNEvaluation` with ``accuracy`` ``[T]`` (after t = 1..T steps), ``predictions``
      ``[T, N]`` and, when asked, ``statistics`` and ``operations``.
    """
    num_steps = schedule(snn).num_steps
    correct = np.zeros(num_steps, np.int64)
    predictions: list[np.ndarray] = []
    totals: dict[str, OffsetStatistics] = {}
    events = {name: np.zeros(num_steps) for name in ("spikes", "synops", "effective_acs", "effective_macs")}
    events |= {"presim_spikes": 0.0, "presim_synops": 0.0}
    for index, (images, labels, mask) in enumerate(padded_batches(split, device_batch(batch_size, mesh))):
        sharded_images, sharded_mask = on_mesh(mesh, images, mask)
        if index == 0:  # the network and its variables once (reading them to the host), then placed
            sharded_images = check_call(snn, variables, sharded_images, per_sample_refused=PER_SPLIT)
            dtype = input_dtype(snn, variables)
            if operations:
                variables, input_macs, dense_macs = with_fan_out(snn, variables, images.shape[1:])
            variables = variables if mesh is None else parallel.replicate(mesh, variables)
        else:  # every batch's images
            sharded_images = widen_half(check_images(sharded_images), dtype)
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
        predicted = logits.argmax(-1)  # [T, B]
        predictions.append(predicted[:, mask].astype(np.int32))
        correct += np.sum((predicted == labels[None]) & mask[None], axis=1)
        if progress is not None:
            progress(int(mask.sum()))
    count = num_examples(split)
    summary = None
    if operations:
        summary = OperationsPerImage.from_sums(
            events, count, input_macs=float(input_macs), dense_macs=float(dense_macs)
        )
    return SNNEvaluation(
        correct / count, summarize(totals) if statistics else None, summary, np.concatenate(predictions, axis=1)
    )


# The named tuples' generated constructors name a module of their own; point them at this one,
# so that tools reading their signatures (pdoc, inspect.getmodule) resolve the annotations here.
SNNEvaluation.__new__.__module__ = __name__
