"""Offset-spike statistics of activation sites: the quantities of the paper's Table 3.

Per site, psi follows Definition 1 against the QCFS activation of the same input with
L = the number of steps counted: ``a = qcfs(mean_t I(t), theta, L=T)`` and
``psi = a*T/theta - count``. Statistics are sums over neurons and samples, so batches and
sites merge by addition; ratios are formed only in :func:`summarize`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from offsetjax.activation import qcfs
from offsetjax.offset import offset_spike

__all__ = ["PSI_BINS", "OffsetStatistics", "accumulate", "offset_statistics", "summarize"]

#: Bins of the |psi| histogram: 0, 1, 2 and >= 3.
PSI_BINS = ("0", "1", "2", ">=3")


class OffsetStatistics(NamedTuple):
    """Additive statistics of one site (or of several, once added).

    Attributes:
      histogram: ``[4]`` int32 neuron counts with |psi| = 0, 1, 2, >= 3.
      squared_error: scalar sum of (SNN rate * theta - ANN activation)^2.
      spike_count: scalar sum of spikes fired.
      num_neurons: scalar number of neurons counted (samples x units).
      num_steps: scalar T the statistics were taken over.
    """

    histogram: Array
    squared_error: Array
    spike_count: Array
    num_neurons: Array
    num_steps: Array


def offset_statistics(
    currents: Float[Array, "T ..."], count: Float[Array, "..."], theta: Float[Array, "..."]
) -> OffsetStatistics:
    """Table-3 statistics of one simulated site.

    Args:
      currents: the input currents the site received, ``[T, ...]``.
      count: spikes fired over those T steps, ``[...]``.
      theta: threshold, broadcastable.

    Returns:
      :class:`OffsetStatistics` summed over all neurons of ``count``.
    """
    num_steps = currents.shape[0]
    activation = qcfs(jnp.mean(currents, axis=0), theta, levels=num_steps)
    magnitude = jnp.abs(jnp.round(offset_spike(activation, count, theta, num_steps=num_steps)))
    bins = jnp.minimum(magnitude, len(PSI_BINS) - 1).astype(jnp.int32).ravel()
    histogram = jnp.zeros(len(PSI_BINS), jnp.int32).at[bins].add(1)
    rate_times_theta = count * theta / num_steps
    return OffsetStatistics(
        histogram=histogram,
        squared_error=jnp.sum(jnp.square(rate_times_theta - activation)),
        spike_count=jnp.sum(count),
        num_neurons=jnp.asarray(count.size, jnp.int32),
        num_steps=jnp.asarray(num_steps, jnp.int32),
    )


def masked_total(per_sample: OffsetStatistics, mask: Array) -> OffsetStatistics:
    """Sum statistics with a leading sample axis ``[B, ...]`` over the samples where the
    boolean ``mask`` ``[B]`` is true (padding rows excluded); jit-compatible."""

    def total(x):
        keep = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
        return jnp.sum(jnp.where(keep, x, jnp.zeros_like(x)), axis=0)

    return OffsetStatistics(
        histogram=total(per_sample.histogram),
        squared_error=total(per_sample.squared_error),
        spike_count=total(per_sample.spike_count),
        num_neurons=total(per_sample.num_neurons),
        num_steps=per_sample.num_steps[0],
    )


def accumulate(total: OffsetStatistics | None, new: OffsetStatistics) -> OffsetStatistics:
    """Add two statistics in NumPy 64-bit (counts over a dataset overflow int32)."""
    new = OffsetStatistics(*(np.asarray(x, np.float64) for x in new[:-1]), np.asarray(new.num_steps))
    if total is None:
        return new
    return OffsetStatistics(*(a + b for a, b in zip(total[:-1], new[:-1])), new.num_steps)


def summarize(per_site: Mapping[str, OffsetStatistics]) -> dict:
    """Ratios per site and over all sites.

    Returns:
      ``{"sites": {name: row}, "all": row}`` with each row holding ``zero_ratio`` (fraction of
      neurons with psi = 0), ``mse``, ``firing_rate`` (spikes per neuron per step),
      ``psi_histogram`` (fractions per bin of :data:`PSI_BINS`) and ``num_neurons``.
    """
    if not per_site:
        raise ValueError("per_site must hold at least one site's statistics")
    rows = {name: _row(stats) for name, stats in per_site.items()}
    total = None
    for stats in per_site.values():
        total = accumulate(total, stats)
    return {"sites": rows, "all": _row(total)}


def _row(stats: OffsetStatistics) -> dict:
    histogram = np.asarray(stats.histogram, np.float64)
    neurons = float(stats.num_neurons)
    return {
        "zero_ratio": float(histogram[0] / neurons),
        "mse": float(stats.squared_error) / neurons,
        "firing_rate": float(stats.spike_count) / (neurons * float(stats.num_steps)),
        "psi_histogram": dict(zip(PSI_BINS, (histogram / neurons).tolist())),
        "num_neurons": int(neurons),
    }


# The named tuples' generated constructors name a module of their own; point them at this one,
# so that tools reading their signatures (pdoc, inspect.getmodule) resolve the annotations here.
OffsetStatistics.__new__.__module__ = __name__
