"""The IF activation site: the SNN counterpart of a QCFS activation inside a network.

A site receives time-major currents ``[T or 1, B, ...]`` from the linear layers before it,
calibrates its per-sample initial potential from a rho-step pre-simulation (``docs/method.md``
section 4), scans the T steps and emits ``theta * s(t)``, ``[T, B, ...]``. Its threshold is the
QCFS parameter ``params[...]["threshold"]``; its unshifted v(0) lives in the
``initial_potential`` collection. When the caller makes them mutable, it sows its Table-3
statistics per sample (:class:`offsetjax.OffsetStatistics` with a leading batch axis) and its
calibrated v(0) ``[B, ...]``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from offsetjax.activation import DEFAULT_THRESHOLD, at_least_float32
from offsetjax.neuron import if_simulate
from offsetjax.offset import calibrate_counting_spikes, srp_presimulate
from offsetjax.schedule import Schedule
from offsetjax.stats import offset_statistics

__all__ = [
    "BIAS_CORRECTION",
    "CALIBRATED_FOR",
    "CALIBRATED_POTENTIAL",
    "CALIBRATED_STEPS",
    "FAN_OUT",
    "IFActivation",
    "INITIAL_POTENTIAL",
    "OPERATIONS",
    "STATISTICS",
]

#: Variable collection holding each site's initial potential v(0) (per neuron, no batch axis).
INITIAL_POTENTIAL = "initial_potential"
#: Collection the sites sow their :class:`OffsetStatistics` into when it is mutable.
STATISTICS = "statistics"
#: Collection the sites sow their calibrated per-sample v(0) ``[B, ...]`` into when mutable.
CALIBRATED_POTENTIAL = "calibrated_potential"
#: Collection the sites sow their events into when mutable (:func:`offsetjax.count_operations`):
#: ``spikes`` and ``synops`` per step ``[T, B]``, ``presim_spikes`` and ``presim_synops`` ``[B]``.
OPERATIONS = "operations"
#: Collection holding each site's per-neuron fan-out ``fan`` (``offsetjax.operations.fan_out``).
FAN_OUT = "fan_out"
#: Optional collection holding a current ``b`` added to a site's input at every step, per channel
#: (or per neuron): the SNN-side bias correction of :func:`offsetjax.data_bias`.
BIAS_CORRECTION = "bias_correction"
#: Old format (offsetjax <= 0.2): a collection recording the ``num_steps`` that variables from
#: :func:`offsetjax.data_potential` and :func:`offsetjax.data_bias` were calibrated for. Still
#: read (a network of another T refuses it), no longer written: a merge of the calibrated
#: collection alone dropped it. See :data:`CALIBRATED_STEPS`.
CALIBRATED_FOR = "calibrated_for"
#: The leaf, beside a site's calibrated ``v0`` (``initial_potential``) or ``b``
#: (``bias_correction``), recording the ``num_steps`` T the value was calibrated for (an int32
#: scalar, read by no site): it travels with the value through any merge, and the simulator
#: refuses it in a network of another T.
CALIBRATED_STEPS = "num_steps"


class IFActivation(nn.Module):
    """An IF activation site: the SNN counterpart of :class:`offsetjax.QCFS`.

    Reads the threshold from ``params['threshold']`` (the QCFS lambda: a scalar, or one per
    channel ``[C]``, the neurons' last axis, as :func:`offsetjax.from_jax` measures with
    ``per_channel=True``) and v(0) from the ``initial_potential`` collection (theta/2 at init).

    Attributes:
      schedule: the network's :class:`offsetjax.Schedule`: T, COS's rho, k, eps and saturation
        rule, SRP's tau, the scans' unroll. With SRP (``srp_steps`` tau > 0) the site takes
        ``tau + T`` steps of currents: it simulates the first tau from v(0), silences the neurons
        whose residual potential v(tau) is <= ``offsetjax.offset.SRP_RESIDUAL_MARGIN * theta``,
        restarts from v(0) and simulates T steps with them silenced. It emits all ``tau + T``
        steps (the next site pre-simulates on the first tau); :func:`offsetjax.simulate` reads
        the logits of the last T.
      threshold_init: initial threshold, as QCFS's.

    An optional ``bias_correction`` collection (``b``, broadcastable to the neuron shape) adds a
    constant current at every step (:func:`offsetjax.data_bias`).
    """

    schedule: Schedule
    threshold_init: float = DEFAULT_THRESHOLD

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise ValueError(
                f"IFActivation's schedule must be an offsetjax.Schedule, got {type(self.schedule).__name__}: "
                "IFActivation(schedule=Schedule(num_steps=4))"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, currents: Float[Array, "Tp B ..."]) -> Float[Array, "T B ..."]:
        """Spike outputs ``theta * s(t)``, ``[T, B, ...]`` (``[tau + T, B, ...]`` with SRP), from
        currents of that length or 1 along the time axis."""
        schedule = self.schedule
        steps = schedule.input_steps
        if currents.ndim < 2 or currents.shape[0] not in (1, steps):
            raise ValueError(
                f"an IFActivation with num_steps={schedule.num_steps}, srp_steps={schedule.srp_steps} needs "
                f"time-major currents [{steps} or 1, batch, ...], got shape {currents.shape}; run the "
                "network through offsetjax.simulate"
            )
        # A threshold per channel (or per neuron) broadcasts over the batch and time axes by design.
        with jax.numpy_rank_promotion("allow"):
            neuron_shape = currents.shape[2:]
            theta = site_threshold(self, neuron_shape).astype(at_least_float32(currents.dtype))
            v0 = self.variable(INITIAL_POTENTIAL, "v0", lambda: jnp.broadcast_to(0.5 * theta, neuron_shape)).value
            if self.has_variable(BIAS_CORRECTION, "b"):
                currents = add_bias_current(currents, self.get_variable(BIAS_CORRECTION, "b"), theta.dtype)
            currents = jnp.broadcast_to(currents, (steps, *currents.shape[1:]))
            if schedule.srp_steps:
                presim_out, presim_spikes, keep = srp_presimulate(
                    currents[: schedule.srp_steps], theta, v0, unroll=schedule.unroll
                )
                currents, calibrated = currents[schedule.srp_steps :], v0
            else:
                calibrated, presim_spikes = calibrate_counting_spikes(
                    currents,
                    theta,
                    v0,
                    presim_steps=schedule.presim_steps,
                    iterations=schedule.iterations,
                    eps=schedule.eps,
                    saturated=schedule.saturated,
                    unroll=schedule.unroll,
                )
            spikes, state = if_simulate(currents, theta, calibrated, unroll=schedule.unroll)
            count = state.count
            if schedule.srp_steps:
                spikes = spikes * keep[None]
                count = jnp.sum(spikes.astype(theta.dtype), axis=0)
            if self.is_mutable_collection(STATISTICS):
                per_sample = jax.vmap(offset_statistics, in_axes=(1, 0, None))  # fields [B, ...]
                self.sow(STATISTICS, "site", per_sample(currents.astype(theta.dtype), count, theta))
            if self.is_mutable_collection(CALIBRATED_POTENTIAL):
                self.sow(CALIBRATED_POTENTIAL, "v0", jnp.broadcast_to(calibrated, currents.shape[1:]))
            if self.is_mutable_collection(OPERATIONS):
                fan = self.get_variable(FAN_OUT, "fan") if self.has_variable(FAN_OUT, "fan") else jnp.ones(neuron_shape)
                fan = jnp.asarray(fan, theta.dtype)
                events = spikes.astype(theta.dtype)  # [T, B, ...]
                per_step = tuple(range(2, events.ndim))
                per_sample = tuple(range(1, presim_spikes.ndim))
                self.sow(OPERATIONS, "spikes", jnp.sum(events, axis=per_step))
                self.sow(OPERATIONS, "synops", jnp.sum(events * fan[None, None], axis=per_step))
                self.sow(OPERATIONS, "presim_spikes", jnp.sum(presim_spikes, axis=per_sample))
                self.sow(OPERATIONS, "presim_synops", jnp.sum(presim_spikes * fan[None], axis=per_sample))
            if schedule.srp_steps:  # the next site pre-simulates on the first tau steps
                spikes = jnp.concatenate([presim_out, spikes])
            return (spikes * theta).astype(currents.dtype)


def site_threshold(site: nn.Module, neuron_shape: tuple[int, ...]) -> Array:
    """The threshold ``params['threshold']`` of ``site`` (bound): the one its variables hold, a
    scalar, one per channel ``[C]`` (C = ``neuron_shape[-1]``) or one per neuron, else a new
    scalar parameter at ``site.threshold_init``. Any other shape is refused naming the site."""
    if not site.has_variable("params", "threshold"):
        return site.param("threshold", nn.initializers.constant(site.threshold_init), (), jnp.float32)
    theta = jnp.asarray(site.get_variable("params", "threshold"))
    if theta.shape not in ((), tuple(neuron_shape[-1:]), tuple(neuron_shape)):
        raise ValueError(
            f"the threshold of the site {'/'.join(site.path) or site.name} must be a scalar, one per channel "
            f"{tuple(neuron_shape[-1:])} or one per neuron {tuple(neuron_shape)}, got shape {theta.shape}"
        )
    return theta


def add_bias_current(currents: Array, bias: ArrayLike, dtype) -> Array:
    """``currents`` plus the :data:`BIAS_CORRECTION` current ``bias`` (broadcast to them), added
    in ``dtype`` (the potential's) and returned in the currents' dtype."""
    bias = jnp.asarray(bias, dtype)
    return (currents.astype(dtype) + jnp.broadcast_to(bias, currents.shape)).astype(currents.dtype)
