"""Offset spikes: their definition, their judgement from the residual potential, and their
calibration by shifting the initial membrane potential (``docs/method.md`` sections 3 and 4);
and SRP's pre-simulation, the other calibration a site runs before its T steps (section 8).

Sign convention of the paper: psi > 0 means spikes are missing, psi < 0 means extra spikes.
All functions are elementwise over any neuron shape ``[...]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from offsetjax._checks import check_choice, check_positive, check_steps, concrete_value
from offsetjax._deprecation import keyword_only_since
from offsetjax.activation import at_least_float32
from offsetjax.neuron import IFState, if_simulate

__all__ = [
    "NEVER_SILENT_POTENTIAL",
    "SATURATION_RULES",
    "SRP_RESIDUAL_MARGIN",
    "calibrate_initial_potential",
    "offset_from_residual",
    "offset_spike",
    "shift_initial_potential",
    "srp_keep",
    "srp_presimulate",
]


@keyword_only_since("0.2")
def offset_spike(
    activation: Float[ArrayLike, "..."],
    count: Float[ArrayLike, "..."],
    theta: Float[ArrayLike, "..."],
    *,
    num_steps: int,
) -> Float[Array, "..."]:
    """Offset spike by Definition 1: ``psi = a * T / theta - count``.

    Args:
      activation: the ANN (QCFS) activation ``a`` of the same input, ``[...]``.
      count: spikes the IF neuron fired in ``num_steps`` steps, ``[...]``.
      theta: threshold, broadcastable, > 0.
      num_steps: T.

    Returns:
      psi, the desired minus the actual spike count.

    >>> float(offset_spike(0.5, 3.0, 1.0, num_steps=4))
    -1.0
    """
    check_positive("theta", theta)
    activation, count, theta = _broadcast_like_first(activation, count, theta)
    return activation * num_steps / theta - count


def offset_from_residual(
    v: Float[ArrayLike, "..."],
    theta: Float[ArrayLike, "..."],
    *,
    tolerance: Float[ArrayLike, "..."] | None = None,
) -> Float[Array, "..."]:
    """Offset spike judged from the residual potential by Theorem 3: ``psi = floor(v / theta)``.

    Exact when the ANN (QCFS, L = T) and the SNN see the same input, theta = lambda,
    v(0) = theta/2 and the summed current lies in [-theta/2, theta*T + theta/2). Once v(0)
    was shifted by Delta, pass ``v(T) - Delta``.

    Args:
      v: residual potential ``[...]``.
      theta: threshold, broadcastable, > 0.
      tolerance: ``v / theta`` within this distance (in units of theta, broadcastable) of an
        integer counts as that integer; ``None`` (default): the plain floor of the theorem.

    >>> offset_from_residual(jnp.array([-0.2, 0.3, 1.5]), 1.0).tolist()
    [-1.0, 0.0, 1.0]
    >>> offset_from_residual(jnp.array([-1e-6, 0.9999999]), 1.0, tolerance=1e-4).tolist()
    [0.0, 1.0]
    """
    v, theta = _broadcast_like_first(v, theta)
    ratio = v / theta
    if tolerance is not None:
        nearest = jnp.round(ratio) + 0.0  # no -0.0
        ratio = jnp.where(jnp.abs(ratio - nearest) <= tolerance, nearest, ratio)
    return jnp.floor(ratio)


#: The conventions for a neuron that rule (ii) should lift but that never stayed silent
#: (see :func:`shift_initial_potential`).
SATURATION_RULES = ("fire", "hold")
#: Rule (ii)'s "maximum potential over silent steps", in units of theta, for a neuron that was
#: never silent under ``saturated="fire"``: the placeholder of the authors' code. It lifts v(0)
#: by (1001 + eps) * theta.
NEVER_SILENT_POTENTIAL = -1000.0


def shift_initial_potential(
    v0: Float[ArrayLike, "..."],
    state: IFState,
    theta: Float[ArrayLike, "..."],
    psi: Float[ArrayLike, "..."],
    *,
    eps: Float[ArrayLike, ""] = 1e-3,
    saturated: str = "fire",
) -> Float[Array, "..."]:
    """One Theorem-2 correction of the initial potential per neuron.

    Where psi < 0 and the neuron fired at least once (rule i, one spike fewer):
        v0 - max(theta, min{v(t) | s(t) = 1} + eps * theta)
    where psi > 0 (rule ii, one spike more):
        v0 + max(theta, theta + eps * theta - max{v(t) | s(t) = 0})
    elsewhere v0 is unchanged.

    A neuron with psi > 0 that fired at every step has no silent step to take the maximum over
    (the theorem's max over an empty set is -inf). ``saturated`` chooses what happens to it:

    * ``"fire"`` (default; what the authors' code does, and so what the paper's numbers come
      from): the maximum is taken as ``NEVER_SILENT_POTENTIAL * theta = -1000 * theta``, which
      lifts v0 by (1001 + eps) * theta. The neuron then fires at every later step while the
      accumulated deficit ``sum_{s<=t} (theta - I(s))`` stays below 1001 * theta -- for any
      T <= 1000 when the currents are >= 0: the spiking counterpart of QCFS's clip at lambda.
    * ``"hold"``: v0 is left unchanged, so the neuron may fall silent after the pre-simulation.

    Args:
      v0: the initial potential the run in ``state`` started from, ``[...]``.
      state: carries of that run (:func:`offsetjax.if_simulate`), each ``[...]``.
      theta: threshold, broadcastable, > 0.
      psi: judged offset spike, ``[...]`` (only its sign is used).
      eps: relative margin in (0, 1); the paper's epsilon is ``eps * theta``.
      saturated: ``"fire"`` or ``"hold"``, as above.

    Returns:
      The shifted initial potential, ``[...]``, in ``at_least_float32`` of ``state.v`` (float32
      at least), finite wherever the inputs are.
    """
    eps_value = concrete_value(eps)
    if eps_value is not None and not 0.0 < float(eps_value) < 1.0:
        raise ValueError(f"eps must lie in (0, 1) (a fraction of theta), got {eps}")
    check_choice("saturated", saturated, SATURATION_RULES)
    state = jax.tree.map(lambda x: jnp.asarray(x, at_least_float32(jnp.result_type(state.v))), state)
    _, v0, theta, psi = _broadcast_like_first(state.v, v0, theta, psi)
    never_silent = ~jnp.isfinite(state.max_silent_v)
    remove = (psi < 0) & (state.count > 0)
    add = (psi > 0) if saturated == "fire" else (psi > 0) & ~never_silent
    # Mask the +-inf of neurons that never fired / never stayed silent before any arithmetic.
    min_fired_v = jnp.where(remove, state.min_fired_v, 0.0)
    max_silent_v = jnp.where(never_silent, NEVER_SILENT_POTENTIAL * theta, state.max_silent_v)
    max_silent_v = jnp.where(add, max_silent_v, 0.0)
    down = jnp.maximum(theta, min_fired_v + eps * theta)
    up = jnp.maximum(theta, theta + eps * theta - max_silent_v)
    return jnp.where(remove, v0 - down, jnp.where(add, v0 + up, v0))


def _broadcast_like_first(first, *others) -> tuple[Array, ...]:
    """Arrays broadcast (explicitly, without rank promotion) to the first one's shape and dtype."""
    first = jnp.asarray(first)
    if not jnp.issubdtype(first.dtype, jnp.floating):
        first = first.astype(jnp.float32)
    return (first, *(jnp.broadcast_to(jnp.asarray(x, first.dtype), first.shape) for x in others))


def calibrate_initial_potential(
    currents: Float[ArrayLike, "T ..."],
    theta: Float[ArrayLike, "..."],
    v0: Float[ArrayLike, "..."],
    *,
    presim_steps: int,
    iterations: int,
    eps: Float[ArrayLike, ""] = 1e-3,
    saturated: str = "fire",
    unroll: int | None = None,
) -> Float[Array, "..."]:
    """Calibrate the initial potential by ``iterations`` rounds of pre-simulation (``docs/method.md`` section 4).

    Each round pre-simulates ``currents[:presim_steps]`` from the current v(0), judges psi by
    Theorem 3 and applies :func:`shift_initial_potential`:

    * round 1 judges ``psi = floor(v(rho) / theta)``, the plain floor, exactly as the authors'
      code (which runs only this round);
    * round j >= 2 judges ``psi = floor((v(rho) - Delta) / theta)``, with Delta the shift
      accumulated so far, and a round-off guard: a ratio within ``g`` of an integer is taken
      as that integer, where, with ``u`` the unit round-off of the potential dtype,

          g = (2 * rho + 4) * u * M / theta,
          M = |v0| + |Delta| + sum_{t <= rho} |I(t)| + rho * theta.

      ``M`` bounds every potential of the round, each of its 2 * rho additions and the
      subtraction of Delta err by at most ``u * M``, so the computed ratio is within ``g`` of
      the exact one: a residual that is an exact multiple of theta (an exact tie, common with
      quantized inputs) is not flipped to the next integer by round-off, which would undo a
      correct spike. (float32, rho = 4, M = 8 theta: g = 7.6e-6.)

    ``presim_steps = 0`` or ``iterations = 0`` returns ``v0`` (broadcast): the uncalibrated QCFS
    baseline. Potentials are computed in float32 at least, whatever ``currents``' dtype.

    Args:
      currents: input currents ``[T, ...]``; only the first ``presim_steps`` are read.
      theta: threshold, broadcastable to ``currents.shape[1:]``, > 0.
      v0: the unshifted initial potential (theta/2 in the paper), broadcastable.
      presim_steps: rho, 0 <= rho <= T.
      iterations: k >= 0.
      eps: relative margin of Theorem 2, in (0, 1).
      saturated: what rule (ii) does to a neuron that never stayed silent, ``"fire"`` (the
        authors' code) or ``"hold"`` (:func:`shift_initial_potential`).
      unroll: ``jax.lax.scan`` unroll of each pre-simulation (:func:`offsetjax.if_simulate`).

    Returns:
      The calibrated initial potential, ``currents.shape[1:]``, of dtype
      ``at_least_float32(currents.dtype)``.

    >>> import jax.numpy as jnp
    >>> currents = jnp.full((4, 1), 0.3)  # QCFS wants 1 spike, the IF neuron fires 2
    >>> v0 = calibrate_initial_potential(currents, 1.0, 0.5, presim_steps=4, iterations=1)
    >>> float(if_simulate(currents, 1.0, v0)[1].count[0])
    1.0
    """
    return calibrate_counting_spikes(
        currents,
        theta,
        v0,
        presim_steps=presim_steps,
        iterations=iterations,
        eps=eps,
        saturated=saturated,
        unroll=unroll,
    )[0]


def calibrate_counting_spikes(
    currents: Float[ArrayLike, "T ..."],
    theta: Float[ArrayLike, "..."],
    v0: Float[ArrayLike, "..."],
    *,
    presim_steps: int,
    iterations: int,
    eps: Float[ArrayLike, ""] = 1e-3,
    saturated: str = "fire",
    unroll: int | None = None,
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """:func:`calibrate_initial_potential`, also returning the spikes each neuron fired over
    all ``iterations`` pre-simulations (``iterations * presim_steps`` steps), what calibration
    costs in spike events (:func:`offsetjax.count_operations`)."""
    currents = jnp.asarray(currents)
    if currents.ndim < 1:
        raise ValueError(f"currents must have a leading time axis, got shape {currents.shape}")
    check_steps(num_steps=currents.shape[0], presim_steps=presim_steps, iterations=iterations)
    check_choice("saturated", saturated, SATURATION_RULES)
    dtype = at_least_float32(currents.dtype)
    neuron_shape = currents.shape[1:]
    v0 = jnp.broadcast_to(jnp.asarray(v0, dtype), neuron_shape)
    presim_spikes = jnp.zeros(neuron_shape, dtype)
    if presim_steps == 0 or iterations == 0:
        return v0, presim_spikes
    presim = currents[:presim_steps].astype(dtype)
    theta = jnp.broadcast_to(jnp.asarray(theta, dtype), neuron_shape)
    magnitude = presim_magnitude(v0, presim, theta)
    shifted = v0
    for round_index in range(iterations):
        _, state = if_simulate(presim, theta, shifted, unroll=unroll)
        presim_spikes = presim_spikes + state.count
        shifted = calibration_round(
            shifted,
            v0,
            state,
            theta,
            magnitude,
            first_round=round_index == 0,
            presim_steps=presim_steps,
            eps=eps,
            saturated=saturated,
        )
    return shifted, presim_spikes


def presim_magnitude(
    v0: Float[Array, "..."], presim: Float[Array, "rho ..."], theta: Float[Array, "..."]
) -> Float[Array, "..."]:
    """|v(0)| + sum_t |I(t)| + rho * theta over the rho pre-simulation currents: the size of
    the numbers a calibration round adds up, which bounds its rounding (:func:`calibration_round`)."""
    return jnp.abs(v0) + jnp.sum(jnp.abs(presim), axis=0) + presim.shape[0] * theta


def calibration_round(
    shifted: Float[Array, "..."],
    v0: Float[Array, "..."],
    state: IFState,
    theta: Float[Array, "..."],
    magnitude: Float[Array, "..."],
    *,
    first_round: bool,
    presim_steps: int,
    eps: Float[ArrayLike, ""] = 1e-3,
    saturated: str = "fire",
) -> Float[Array, "..."]:
    """One round of COS's calibration: the pre-simulation that started from ``shifted`` ended in
    ``state``; judge each neuron's offset spike from its residual potential and shift.

    From round 2 on, the residual is taken relative to the shift so far (``shifted - v0``),
    with a tolerance of the rounding those ``rho`` additions can carry, bounded by
    ``magnitude`` (:func:`presim_magnitude`), so that a neuron on the edge of a spike is not
    shifted again by a rounding error. Every array is of the neuron shape ``[...]``.
    """
    if first_round:
        psi = offset_from_residual(state.v, theta)
    else:
        delta = shifted - v0
        unit_roundoff = jnp.finfo(state.v.dtype).eps / 2
        guard = (2 * presim_steps + 4) * unit_roundoff * (magnitude + jnp.abs(delta)) / theta
        psi = offset_from_residual(state.v - delta, theta, tolerance=guard)
    return shift_initial_potential(shifted, state, theta, psi, eps=eps, saturated=saturated)


#: SRP keeps a neuron's output when its residual potential after the tau-step pre-simulation
#: exceeds this fraction of theta (the authors' code); the others are silenced.
SRP_RESIDUAL_MARGIN = 1e-3


def srp_presimulate(
    currents: Float[ArrayLike, "tau ..."],
    theta: Float[ArrayLike, "..."],
    v0: Float[ArrayLike, "..."],
    *,
    unroll: int | None = None,
) -> tuple[Float[Array, "tau ..."], Float[Array, "..."], Float[Array, "..."]]:
    """SRP's pre-simulation (Hao et al., AAAI 2023): simulate the tau steps of ``currents`` from
    ``v0`` and mark the neurons whose residual potential v(tau) exceeds ``SRP_RESIDUAL_MARGIN *
    theta``; the others stay silent for the T steps that follow, which restart from ``v0``.

    Returns ``(spikes, count, keep)``: the tau steps' spikes ``s(t)`` (passed on to the next
    site, which pre-simulates on them), each neuron's spike count over them, and the mask
    (1.0: kept, 0.0: silenced), the last two of the neuron shape ``[...]``.
    """
    spikes, state = if_simulate(currents, theta, v0, unroll=unroll)
    return spikes, state.count, srp_keep(state.v, theta, spikes.dtype)


def srp_keep(v: Float[Array, "..."], theta: Float[ArrayLike, "..."], dtype) -> Float[Array, "..."]:
    """SRP's mask from the residual potential ``v`` after the tau steps: 1 where it exceeds
    ``SRP_RESIDUAL_MARGIN * theta`` (the neuron keeps firing), 0 where it is silenced; in ``dtype``."""
    return (v > SRP_RESIDUAL_MARGIN * theta).astype(dtype)
