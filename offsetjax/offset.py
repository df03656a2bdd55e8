"""Offset spikes: their definition, their judgement from the residual potential, and their
calibration by shifting the initial membrane potential (SPEC sections 2 and 3).

Sign convention of the paper: psi > 0 means spikes are missing, psi < 0 means extra spikes.
All functions are elementwise over any neuron shape ``[...]``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from offsetjax._checks import check_positive, check_steps, concrete_value
from offsetjax.neuron import IFState, if_simulate


def offset_spike(
    activation: Float[ArrayLike, "..."],
    count: Float[ArrayLike, "..."],
    theta: Float[ArrayLike, "..."],
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


#: Residuals (in units of theta) this close to an integer are judged as that integer inside
#: :func:`calibrate_initial_potential`: at exact ties, float32 round-off in v(T) - Delta
#: would otherwise flip the judgement to the next integer and undo a correct spike.
RESIDUAL_TOLERANCE = 1e-4


def offset_from_residual(
    v: Float[ArrayLike, "..."], theta: Float[ArrayLike, "..."], *, tolerance: float = 0.0
) -> Float[Array, "..."]:
    """Offset spike judged from the residual potential by Theorem 3: ``psi = floor(v / theta)``.

    Exact when the ANN (QCFS, L = T) and the SNN see the same input, theta = lambda,
    v(0) = theta/2 and the summed current lies in [-theta/2, theta*T + theta/2). Once v(0)
    was shifted by Delta, pass ``v(T) - Delta``.

    Args:
      v: residual potential ``[...]``.
      theta: threshold, broadcastable, > 0.
      tolerance: ``v / theta`` within this distance of an integer counts as that integer
        (0: the plain floor of the theorem).

    >>> offset_from_residual(jnp.array([-0.2, 0.3, 1.5]), 1.0).tolist()
    [-1.0, 0.0, 1.0]
    >>> offset_from_residual(jnp.array([-1e-6, 0.9999999]), 1.0, tolerance=1e-4).tolist()
    [0.0, 1.0]
    """
    v, theta = _broadcast_like_first(v, theta)
    ratio = v / theta
    if tolerance:
        nearest = jnp.round(ratio) + 0.0  # no -0.0
        ratio = jnp.where(jnp.abs(ratio - nearest) <= tolerance, nearest, ratio)
    return jnp.floor(ratio)


def shift_initial_potential(
    v0: Float[ArrayLike, "..."],
    state: IFState,
    theta: Float[ArrayLike, "..."],
    psi: Float[ArrayLike, "..."],
    eps: float = 1e-3,
) -> Float[Array, "..."]:
    """One Theorem-2 correction of the initial potential per neuron.

    Where psi < 0 and the neuron fired at least once (rule i, one spike fewer):
        v0 - max(theta, min{v(t) | s(t) = 1} + eps * theta)
    where psi > 0 and the neuron was silent at least once (rule ii, one spike more):
        v0 + max(theta, theta + eps * theta - max{v(t) | s(t) = 0})
    elsewhere v0 is unchanged; a neuron that fired at every step stays saturated.

    Args:
      v0: the initial potential the run in ``state`` started from, ``[...]``.
      state: carries of that run (:func:`offsetjax.if_simulate`), each ``[...]``.
      theta: threshold, broadcastable, > 0.
      psi: judged offset spike, ``[...]`` (only its sign is used).
      eps: relative margin in (0, 1); the paper's epsilon is ``eps * theta``.

    Returns:
      The shifted initial potential, ``[...]``, finite wherever the inputs are.
    """
    eps_value = concrete_value(eps)
    if eps_value is not None and not 0.0 < float(eps_value) < 1.0:
        raise ValueError(f"eps must lie in (0, 1) (a fraction of theta), got {eps}")
    _, v0, theta, psi = _broadcast_like_first(state.v, v0, theta, psi)
    remove = (psi < 0) & (state.count > 0)
    add = (psi > 0) & jnp.isfinite(state.max_silent_v)
    # Mask the +-inf of neurons that never fired / never stayed silent before any arithmetic.
    min_fired_v = jnp.where(remove, state.min_fired_v, 0.0)
    max_silent_v = jnp.where(add, state.max_silent_v, 0.0)
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
    presim_steps: int,
    iterations: int,
    eps: float = 1e-3,
    *,
    unroll: int | bool = 1,
) -> Float[Array, "..."]:
    """Calibrate the initial potential by ``iterations`` rounds of pre-simulation (SPEC section 3).

    Each round pre-simulates ``currents[:presim_steps]`` from the current v(0), judges
    ``psi = floor((v(rho) - Delta) / theta)`` with Delta the shift accumulated so far (ties
    within :data:`RESIDUAL_TOLERANCE` of an integer snapped to it), and
    applies :func:`shift_initial_potential`. ``presim_steps = 0`` or ``iterations = 0`` returns
    ``v0`` (broadcast): the uncalibrated QCFS baseline.

    Args:
      currents: input currents ``[T, ...]``; only the first ``presim_steps`` are read.
      theta: threshold, broadcastable to ``currents.shape[1:]``, > 0.
      v0: the unshifted initial potential (theta/2 in the paper), broadcastable.
      presim_steps: rho, 0 <= rho <= T.
      iterations: k >= 0.
      eps: relative margin of Theorem 2, in (0, 1).
      unroll: ``jax.lax.scan`` unroll of each pre-simulation.

    Returns:
      The calibrated initial potential, ``currents.shape[1:]``.

    >>> import jax.numpy as jnp
    >>> currents = jnp.full((4, 1), 0.3)  # QCFS wants 1 spike, the IF neuron fires 2
    >>> v0 = calibrate_initial_potential(currents, 1.0, 0.5, presim_steps=4, iterations=1)
    >>> float(if_simulate(currents, 1.0, v0)[1].count[0])
    1.0
    """
    currents = jnp.asarray(currents)
    if currents.ndim < 1:
        raise ValueError(f"currents must have a leading time axis, got shape {currents.shape}")
    check_steps(num_steps=currents.shape[0], presim_steps=presim_steps, iterations=iterations)
    neuron_shape = currents.shape[1:]
    v0 = jnp.broadcast_to(jnp.asarray(v0, currents.dtype), neuron_shape)
    if presim_steps == 0:
        return v0
    presim = currents[:presim_steps]
    shifted = v0
    for _ in range(iterations):
        _, state = if_simulate(presim, theta, shifted, unroll=unroll)
        psi = offset_from_residual(state.v - (shifted - v0), theta, tolerance=RESIDUAL_TOLERANCE)
        shifted = shift_initial_potential(shifted, state, theta, psi, eps)
    return shifted
