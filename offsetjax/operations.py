"""Synaptic operations and energy of a spiking network run, counted by events, never by value.

A spike of a site's neuron drives every synapse from that neuron into the layers that read it:
its *fan-out*, counted border-exact (a convolution's padding taps are not synapses), through
pooling (average pooling folded into the next layer's weights, as hardware does) and into every
consumer of a residual branch (an identity shortcut is one synapse). Then, per image:

* ``synops`` of a site = sum over its neurons of (spikes fired) x (fan-out), over the T steps,
  and separately over the rho * k pre-simulation steps of calibration, which a causal chip must
  also run (``presim_synops``);
* ``input_macs``: the first layer's multiply-accumulates on the analog image, computed once
  (the image is the same at every step, as in the simulator);
* ``dense_macs``: the ANN's multiply-accumulates, every convolution and dense layer at its own
  input's resolution (:func:`layer_macs`), for comparison.

Padding taps of a convolution are counted nowhere: a zero that is padding is no input, in the
SNN's events as in the ANN's MACs (NeuroBench's ``Dense`` count does the same; a dense
accelerator that multiplies the padding too does more work than ``dense_macs``).

Two conventions differ between this count and NeuroBench's ``SynapticOperations`` (docs/method.md,
"Counting operations"), and :class:`Operations` reports both:

* *pooled spikes*: here a spike drives the connections of its pooled position (event routing,
  the 1/k^2 of the pool folded into the next layer's weights); NeuroBench charges each nonzero
  pooled value once, as a multiply-accumulate (it is not binary);
* *the analog image*: here the first layer runs once per image, on every pixel; NeuroBench
  charges it at every step, for the nonzero pixels only.

The fan-out comes from the network itself: with every weight 1, biases 0, batch norm the
identity and pooling summing, the gradient of the sum of every layer's pre-activation with
respect to a site's output is, per neuron, the number of connections it drives.

Energy uses the 45 nm figures most SNN papers use (M. Horowitz, "Computing's energy problem
(and what we can do about it)", ISSCC 2014: a 32-bit float add 0.9 pJ, a multiply 3.7 pJ, so a
multiply-accumulate 4.6 pJ). The count leaves out memory access and data movement, which often
dominate (Dampfhoffer et al., IEEE TETCI 2023), and the neurons' own updates.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jaxtyping import Array, ArrayLike, Float

from offsetjax._linear_layers import MACS, count_macs
from offsetjax._trace import tracing_view
from offsetjax.jax_network import JaxprNetwork
from offsetjax.models.layers import Activation
from offsetjax.simulation import checked_inputs, simulate_collecting
from offsetjax.site import FAN_OUT

__all__ = [
    "ACCUMULATE_PJ",
    "MULTIPLY_ACCUMULATE_PJ",
    "Operations",
    "OperationsPerImage",
    "count_operations",
    "energy",
    "fan_out",
    "layer_macs",
    "per_image",
    "per_image_at",
    "totals",
    "with_fan_out",
]

#: Picojoules of one accumulate (a spike's synaptic event), 45 nm, 32-bit float add.
ACCUMULATE_PJ = 0.9
#: Picojoules of one multiply-accumulate, 45 nm, 32-bit float (3.7 pJ multiply + 0.9 pJ add).
MULTIPLY_ACCUMULATE_PJ = 4.6


class Operations(NamedTuple):
    """Events of one simulated batch. Per-site fields are dicts keyed by the site's module path
    in network order.

    Attributes:
      spikes: per site, spike events at each step, ``[T, B]``.
      synops: per site, the synaptic operations those spikes drive, ``[T, B]``.
      presim_spikes: per site, spike events over all pre-simulation steps (rho * k), ``[B]``.
      presim_synops: per site, the synaptic operations of ``presim_spikes``, ``[B]``.
      input_macs: scalar, the first layer's multiply-accumulates per image (once, not per step).
      dense_macs: scalar, the ANN's multiply-accumulates per image (:func:`layer_macs`).
      logits: ``[T, B, classes]``, as :func:`offsetjax.simulate` returns them.
      effective_acs: ``[T, B]``, NeuroBench's convention: accumulates of the linear layers whose
        input is spikes (nonzero inputs of one magnitude) at each step.
      effective_macs: ``[T, B]``, NeuroBench's convention: multiply-accumulates of the linear
        layers whose input is not spikes (the image at every step, average-pooled spikes).
    """

    spikes: dict[str, Array]
    synops: dict[str, Array]
    presim_spikes: dict[str, Array]
    presim_synops: dict[str, Array]
    input_macs: Array
    dense_macs: Array
    logits: Array
    effective_acs: Array
    effective_macs: Array

    def totals(self, sample_mask: Array | None = None) -> dict[str, Array]:
        """Network totals summed over the batch's (masked) images: ``spikes``, ``synops``,
        ``effective_acs`` and ``effective_macs`` cumulative over steps ``[T]`` (entry t-1: a run of
        t steps), ``presim_spikes``, ``presim_synops`` and ``images`` scalars."""
        some_site = next(iter(self.spikes.values()))
        mask = jnp.ones(some_site.shape[1], bool) if sample_mask is None else jnp.asarray(sample_mask)
        weight = mask.astype(some_site.dtype)
        return {
            "spikes": jnp.cumsum(sum(v for v in self.spikes.values()) @ weight),
            "synops": jnp.cumsum(sum(v for v in self.synops.values()) @ weight),
            "presim_spikes": sum(v for v in self.presim_spikes.values()) @ weight,
            "presim_synops": sum(v for v in self.presim_synops.values()) @ weight,
            "effective_acs": jnp.cumsum(self.effective_acs @ weight),
            "effective_macs": jnp.cumsum(self.effective_macs @ weight),
            "images": jnp.sum(weight),
        }

    def per_image(self, sample_mask: Array | None = None) -> OperationsPerImage:
        """The batch's (masked) images' operations per image, as :func:`offsetjax.evaluate_snn`
        reports a dataset's: :class:`OperationsPerImage`."""
        some_site = next(iter(self.spikes.values()))
        mask = np.ones(some_site.shape[1], bool) if sample_mask is None else np.asarray(sample_mask)
        weight = mask.astype(np.float64)
        events = {
            name: sum(np.asarray(site, np.float64) for site in getattr(self, name).values()) @ weight
            for name in ("spikes", "synops", "presim_spikes", "presim_synops")
        }
        events |= {name: np.asarray(getattr(self, name), np.float64) @ weight for name in LAYER_EVENTS}
        return OperationsPerImage.from_sums(
            events, int(mask.sum()), input_macs=float(self.input_macs), dense_macs=float(self.dense_macs)
        )


#: The fields of :class:`Operations` counted per linear layer, not per site (NeuroBench's).
LAYER_EVENTS = ("effective_acs", "effective_macs")


class OperationsPerImage(NamedTuple):
    """Operations per image of a dataset (or batch), for runs of t = 1..T steps: what
    :func:`offsetjax.evaluate_snn` reports and ``results.json`` records. Lists over t = 1..T are
    cumulative over steps (entry t-1: a run of t steps); :meth:`at` reads one T.

    Attributes:
      spikes, synops: per step ``[T]`` lists, spike events and the synaptic operations they drive.
      presim_spikes, presim_synops: the pre-simulation's (rho * k steps), once per image.
      input_macs: the first layer's multiply-accumulates on the image (once per image).
      dense_macs: the ANN's multiply-accumulates (:func:`layer_macs`).
      energy_j: per step, the SNN's joules (:func:`energy`'s ``"snn"``).
      presim_energy_share: per step, the pre-simulation's share of ``energy_j``.
      effective_acs, effective_macs: per step, NeuroBench's accumulates and multiply-accumulates.
      ann_energy_j: the ANN's joules (:func:`energy`'s ``"ann"``).
    """

    spikes: list[float]
    synops: list[float]
    presim_spikes: float
    presim_synops: float
    input_macs: float
    dense_macs: float
    energy_j: list[float]
    presim_energy_share: list[float]
    effective_acs: list[float]
    effective_macs: list[float]
    ann_energy_j: float

    @classmethod
    def from_sums(cls, events: dict, count: int, *, input_macs: float, dense_macs: float) -> OperationsPerImage:
        """From sums over ``count`` images: ``spikes``, ``synops``, ``effective_acs`` and
        ``effective_macs`` per step ``[T]`` (not cumulative), ``presim_spikes`` and
        ``presim_synops`` scalars; ``input_macs`` and ``dense_macs`` per image
        (:func:`with_fan_out`)."""
        synops = np.cumsum(events["synops"]) / count
        presim_synops = float(events["presim_synops"]) / count
        joules = [
            energy(synops=float(s), presim_synops=presim_synops, input_macs=input_macs, dense_macs=dense_macs)
            for s in synops
        ]
        return cls(
            spikes=(np.cumsum(events["spikes"]) / count).tolist(),
            synops=synops.tolist(),
            presim_spikes=float(events["presim_spikes"]) / count,
            presim_synops=presim_synops,
            input_macs=input_macs,
            dense_macs=dense_macs,
            energy_j=[j["snn"] for j in joules],
            presim_energy_share=[j["presim"] / j["snn"] for j in joules],
            effective_acs=(np.cumsum(events["effective_acs"]) / count).tolist(),
            effective_macs=(np.cumsum(events["effective_macs"]) / count).tolist(),
            ann_energy_j=joules[0]["ann"],
        )

    def at(self, num_steps: int) -> dict[str, float]:
        """The operations of a run of ``num_steps`` steps: each per-step list's entry, the rest
        as they are (the fields in order, as ``results.json`` records them)."""
        if not 1 <= num_steps <= len(self.spikes):
            raise ValueError(f"num_steps must be in 1..{len(self.spikes)} (the steps counted), got {num_steps}")
        return {key: value[num_steps - 1] if key in PER_STEP else value for key, value in self._asdict().items()}


class _FanOutProbe(nn.Module):
    """An activation site in the connectivity view: its output is a free per-neuron input
    (``fan_out_source``), its input is summed into ``fan_out_sink``."""

    @nn.compact
    def __call__(self, x, *args, **kwargs):
        self.sow("fan_out_sink", "sum", jnp.sum(x.astype(jnp.float32)))
        source = self.variable("fan_out_source", "delta", jnp.zeros, x.shape[1:], jnp.float32)
        return jnp.broadcast_to(source.value.astype(x.dtype), x.shape)


def _connectivity_params(tree: dict, batch_norm_eps: float) -> dict:
    """Weights 1, biases 0, batch norm the identity (scale 1, shift 0, mean 0, var 1 - eps)."""
    flat = traverse_util.flatten_dict(tree)
    rules = {"kernel": 1.0, "scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0 - batch_norm_eps}
    return traverse_util.unflatten_dict({k: jnp.full_like(v, rules.get(k[-1], 0.0)) for k, v in flat.items()})


@functools.lru_cache(maxsize=32)
def fan_out(model: nn.Module, image_shape: tuple[int, ...], batch_norm_eps: float = 1e-5) -> tuple[dict, Array]:
    """Connections driven by each neuron of each site, and by each input pixel.

    Args:
      model: a network of ``offsetjax.models`` (ANN or SNN: only its structure is read).
      image_shape: one image's shape ``(H, W, C)``.
      batch_norm_eps: the networks' batch-norm epsilon (``offsetjax.models.layers.BatchNorm``).

    Returns:
      ``(per_site, per_pixel)``: a dict site path -> fan-out ``[neuron shape]``, and the
      image's fan-out ``image_shape`` into the first layer (integers as floats).
    """
    probe = model.clone(activation=Activation(_FanOutProbe))
    if isinstance(model, JaxprNetwork):  # a network read from a jaxpr computes its own connectivity view
        probe = probe.clone(connectivity=True)
    image = jnp.zeros((1, *image_shape), jnp.float32)
    with tracing_view(pools="sum"):
        variables = jax.eval_shape(functools.partial(probe.init, jax.random.key(0)), image)
        params = {
            name: _connectivity_params(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree), batch_norm_eps)
            for name, tree in variables.items()
            if name in ("params", "batch_stats")
        }
        sources = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables["fan_out_source"])

        def connections(sources, image):
            logits, sinks = probe.apply({**params, "fan_out_source": sources}, image, mutable=["fan_out_sink"])
            return sum(jax.tree.leaves(sinks)) + jnp.sum(logits.astype(jnp.float32))

        per_source, per_pixel = jax.grad(connections, argnums=(0, 1))(sources, image)
    flat = {"/".join(path[:-1]): jnp.round(leaf) for path, leaf in traverse_util.flatten_dict(per_source).items()}
    return flat, jnp.round(per_pixel[0])


class _PassThrough(nn.Module):
    """An activation site that passes its input on (the ANN's linear layers are what is counted)."""

    @nn.compact
    def __call__(self, x, *args, **kwargs):
        return x


@functools.lru_cache(maxsize=32)
def layer_macs(model: nn.Module, image_shape: tuple[int, ...], batch_norm_eps: float = 1e-5) -> dict[str, float]:
    """The ANN's multiply-accumulates per image, layer by layer.

    Every module that owns a ``kernel`` (convolution or dense layer) counts its output elements
    times the input taps each reads, at its own input's resolution (after pooling, at the pooled
    resolution); padding taps are not counted (the module docstring). Residual additions, batch
    norm, pooling and activations are no MACs.

    Args:
      model: a network of ``offsetjax.models`` (ANN or SNN: only its structure is read).
      image_shape: one image's shape ``(H, W, C)``.
      batch_norm_eps: the networks' batch-norm epsilon.

    Returns:
      ``{layer path: MACs}`` in the order the layers run; ``sum(...values())`` is the ANN's
      ``dense_macs``.

    >>> from offsetjax.models import VGG
    >>> layer_macs(VGG(features=(4, "M"), hidden=(), num_classes=3), (8, 8, 2))
    {'conv0/Conv_0': 3872.0, 'classifier': 192.0}
    """
    ann = model.clone(activation=Activation(_PassThrough))
    if isinstance(model, JaxprNetwork):  # on ones, in the connectivity view: padding stays zero
        ann = ann.clone(connectivity=True)
    image = jnp.ones((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(functools.partial(ann.init, jax.random.key(0)), image)
    params = {
        name: _connectivity_params(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree), batch_norm_eps)
        for name, tree in variables.items()
        if name in ("params", "batch_stats")
    }
    with nn.intercept_methods(count_macs):
        _, sown = ann.apply(params, image, mutable=[MACS])
    flat = traverse_util.flatten_dict(sown[MACS])
    return {"/".join(path[:-1]) or path[-1]: float(sum(np.asarray(v) for v in values)) for path, values in flat.items()}


def count_operations(
    snn: nn.Module, variables: Any, images: Float[ArrayLike, "B ..."], *, frames: bool = False
) -> Operations:
    """Spike events, synaptic operations and MACs of one simulated batch (see the module docstring).

    One simulation, the same as :func:`offsetjax.simulate`'s (the same spikes; the logits equal
    up to float rounding, as XLA may fuse the output differently); each site
    adds up its events and their fan-out as it runs, so counting needs no per-neuron arrays.

    Args:
      snn: the spiking network (:func:`offsetjax.spiking_model`).
      variables: its variables (:func:`offsetjax.convert_variables`).
      images: ``[B, H, W, C]``, as for :func:`offsetjax.simulate`; with ``frames=True`` one batch
        per step, ``[steps, B, H, W, C]``: the first layer then runs on every frame, so
        ``input_macs`` is its MACs on one frame times the steps.

    Returns:
      :class:`Operations`: per site and step, with :meth:`Operations.totals` and
      :meth:`Operations.per_image` views.

    Images and variables are checked before anything runs, as :func:`offsetjax.simulate` checks them.
    """
    images = checked_inputs(snn, variables, images, frames=frames)
    image_shape = tuple(images.shape[2:] if frames else images.shape[1:])
    with_fans, input_macs, dense_macs = with_fan_out(snn, variables, image_shape)
    if frames:
        input_macs = input_macs * images.shape[0]
    logits, _, (sites, layers) = simulate_collecting(snn, with_fans, images, None, True, frames=frames)
    field = {name: {site: values[name] for site, values in sites.items()} for name in Operations._fields[:4]}
    return Operations(
        **field,
        input_macs=input_macs,
        dense_macs=dense_macs,
        logits=logits,
        effective_acs=layers["accumulates"],
        effective_macs=layers["multiply_accumulates"],
    )


def with_fan_out(snn: nn.Module, variables: Any, image_shape: tuple[int, ...]) -> tuple[dict, Array, Array]:
    """``variables`` plus every site's fan-out (the collection the sites read when counting),
    the first layer's MACs per image and the ANN's MACs per image (:func:`layer_macs`)."""
    fans, per_pixel = fan_out(snn, tuple(image_shape))
    tree = traverse_util.unflatten_dict({(*name.split("/"), "fan"): fan for name, fan in fans.items()})
    dense_macs = jnp.asarray(sum(layer_macs(snn, tuple(image_shape)).values()), jnp.float32)
    return {**variables, FAN_OUT: tree}, jnp.sum(per_pixel), dense_macs


def totals(operations: Operations, sample_mask: Array | None = None) -> dict[str, Array]:
    """Deprecated since offsetjax 0.2: ``operations.totals(sample_mask)`` (:meth:`Operations.totals`)."""
    warnings.warn(
        "offsetjax.operations.totals(ops, mask) is deprecated since offsetjax 0.2: write ops.totals(mask)",
        DeprecationWarning,
        stacklevel=2,
    )
    return operations.totals(sample_mask)


def energy(
    *,
    synops: float,
    presim_synops: float,
    input_macs: float,
    dense_macs: float,
    accumulate_pj: float = ACCUMULATE_PJ,
    mac_pj: float = MULTIPLY_ACCUMULATE_PJ,
) -> dict[str, float]:
    """Joules per image from per-image counts, split the way NeuroBench reports them.

    Returns:
      ``{"ann": dense MACs x mac_pj (the ANN's dense cost), "snn": (synops + presim_synops) x
      accumulate_pj + input MACs x mac_pj (the SNN's effective cost), "presim": the
      pre-simulation's part of "snn"}``.
    """
    picojoule = 1e-12
    return {
        "ann": dense_macs * mac_pj * picojoule,
        "snn": ((synops + presim_synops) * accumulate_pj + input_macs * mac_pj) * picojoule,
        "presim": presim_synops * accumulate_pj * picojoule,
    }


#: The fields of :class:`OperationsPerImage` that are lists over t = 1..T (the others do not depend on t).
PER_STEP = ("spikes", "synops", "energy_j", "presim_energy_share", "effective_acs", "effective_macs")


def per_image(events: dict, count: int, *, input_macs: float, dense_macs: float) -> dict:
    """Deprecated since offsetjax 0.2: :meth:`OperationsPerImage.from_sums` (this returns its
    ``_asdict()``)."""
    warnings.warn(
        "offsetjax.operations.per_image is deprecated since offsetjax 0.2: write OperationsPerImage.from_sums",
        DeprecationWarning,
        stacklevel=2,
    )
    return OperationsPerImage.from_sums(events, count, input_macs=input_macs, dense_macs=dense_macs)._asdict()


def per_image_at(summary: OperationsPerImage | dict, num_steps: int) -> dict:
    """Deprecated since offsetjax 0.2: ``summary.at(num_steps)`` (:meth:`OperationsPerImage.at`)."""
    warnings.warn(
        "offsetjax.operations.per_image_at(summary, t) is deprecated since offsetjax 0.2: write summary.at(t)",
        DeprecationWarning,
        stacklevel=2,
    )
    return (summary if isinstance(summary, OperationsPerImage) else OperationsPerImage(**summary)).at(num_steps)


# The named tuples' generated constructors name a module of their own; point them at this one,
# so that tools reading their signatures (pdoc, inspect.getmodule) resolve the annotations here.
Operations.__new__.__module__ = __name__
OperationsPerImage.__new__.__module__ = __name__
