"""Integrate-and-fire neuron with reset by subtraction, simulated with ``jax.lax.scan``.

Per time step t (``docs/method.md`` section 2), elementwise:

    m(t) = v(t-1) + I(t)          charge
    s(t) = 1 if m(t) >= theta     fire (a value exactly at theta fires)
    v(t) = m(t) - theta * s(t)    reset by subtraction

Time is axis 0 of every sequence (time-major ``[T, ...]``); everything else is elementwise.
The potential and the carries are kept in float32 at least (:func:`offsetjax.activation.at_least_float32`): in
bfloat16 or float16 the potential could not hold Theorem 2's margin of 1e-3 theta.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from offsetjax._checks import check_broadcastable, check_float, check_int, check_positive
from offsetjax.activation import at_least_float32

__all__ = ["IFState", "if_initial_state", "if_simulate", "if_step", "scan_unroll"]


class IFState(NamedTuple):
    """Carries of an IF simulation, each of the neuron shape ``[...]``.

    Attributes:
      v: post-reset potential after the last step, v(T).
      count: number of spikes fired, as a float.
      min_fired_v: minimum post-reset potential over steps that fired (+inf if none).
      max_silent_v: maximum potential over steps that stayed silent (-inf if none).
    """

    v: Array
    count: Array
    min_fired_v: Array
    max_silent_v: Array


def if_initial_state(v0: Float[Array, "..."]) -> IFState:
    """The state before step 1: potential ``v0``, no spikes, empty min/max."""
    return IFState(
        v=v0,
        count=jnp.zeros_like(v0),
        min_fired_v=jnp.full_like(v0, jnp.inf),
        max_silent_v=jnp.full_like(v0, -jnp.inf),
    )


def if_step(state: IFState, current: Array, theta: Array) -> tuple[IFState, Array]:
    """One IF time step: charge, fire, reset; returns the new state and the spike (0 or 1)."""
    charged = state.v + current
    fired = charged >= theta
    spike = fired.astype(charged.dtype)
    v = charged - theta * spike
    new_state = IFState(
        v=v,
        count=state.count + spike,
        min_fired_v=jnp.where(fired, jnp.minimum(state.min_fired_v, v), state.min_fired_v),
        max_silent_v=jnp.where(fired, state.max_silent_v, jnp.maximum(state.max_silent_v, charged)),
    )
    return new_state, spike


def if_simulate(
    currents: Float[ArrayLike, "T ..."],
    theta: Float[ArrayLike, "..."],
    v0: Float[ArrayLike, "..."],
    *,
    unroll: int | None = None,
) -> tuple[Float[Array, "T ..."], IFState]:
    """Simulate IF neurons over the time axis of ``currents``.

    Args:
      currents: input currents I(1..T), time-major ``[T, ...]``, floating dtype; bfloat16 and
        float16 currents are simulated in float32 (:func:`offsetjax.activation.at_least_float32`).
      theta: firing threshold, broadcastable to ``currents.shape[1:]``, > 0.
      v0: initial potential v(0), broadcastable to ``currents.shape[1:]``.
      unroll: time steps per iteration of the ``jax.lax.scan`` loop, an int >= 1 (``T``:
        fully unrolled); ``None`` (default): :func:`scan_unroll` of ``T``.

    Returns:
      ``(spikes, state)``: spikes ``[T, ...]`` in {0, 1} of ``currents``' dtype, and the
      final :class:`IFState`, each field of shape ``currents.shape[1:]`` and of dtype
      ``at_least_float32(currents.dtype)``.

    >>> import jax.numpy as jnp
    >>> spikes, state = if_simulate(jnp.array([0.75, 0.75, 0.75]), 1.0, 0.5)
    >>> spikes.tolist(), float(state.v), float(state.count)
    ([1.0, 1.0, 0.0], 0.75, 2.0)
    """
    currents = jnp.asarray(currents)
    if currents.ndim < 1 or currents.shape[0] < 1:
        raise ValueError(f"currents must have a leading time axis of length >= 1, got shape {currents.shape}")
    check_float("currents", currents)
    spike_dtype = currents.dtype
    dtype = at_least_float32(spike_dtype)
    currents = currents.astype(dtype)
    neuron_shape = currents.shape[1:]
    theta = jnp.asarray(theta, dtype=dtype)
    v0 = jnp.asarray(v0, dtype=dtype)
    check_broadcastable("theta", theta.shape, neuron_shape, "the neuron shape currents.shape[1:]")
    check_broadcastable("v0", v0.shape, neuron_shape, "the neuron shape currents.shape[1:]")
    check_positive("theta", theta)
    theta = jnp.broadcast_to(theta, neuron_shape)

    def step(state, current):
        return if_step(state, current, theta)

    unroll = resolve_unroll(unroll, currents.shape[0])
    state, spikes = jax.lax.scan(step, if_initial_state(jnp.broadcast_to(v0, neuron_shape)), currents, unroll=unroll)
    return spikes.astype(spike_dtype), state


#: Scans of at most this many steps are fully unrolled by default (:func:`scan_unroll`).
FULL_UNROLL_STEPS = 8


def scan_unroll(num_steps: int) -> int:
    """The default unroll of a ``num_steps``-step IF scan: full up to 8 steps, none beyond.

    A fully unrolled loop runs fastest at small T (ResNet-20, T = 8: 0.18 s against 0.24 s for
    the rolled loop), but its compile time grows with T (VGG-16, T = 64: 32 s against 3.3 s);
    from 16 steps on the rolled loop compiles in about 3 s at every T <= 64 and runs as fast.
    Measured on the CPU backend by ``experiments/probes/scan_unroll.py`` (docs/performance.md, "Compile
    time"); GPU and TPU use the same rule, unmeasured there.

    >>> scan_unroll(8), scan_unroll(9)
    (8, 1)
    """
    check_int("num_steps", num_steps, minimum=1)
    return num_steps if num_steps <= FULL_UNROLL_STEPS else 1


def resolve_unroll(unroll, num_steps: int) -> int:
    """``unroll`` checked (an int >= 1), or :func:`scan_unroll` of ``num_steps`` when None."""
    if unroll is None:
        return scan_unroll(num_steps)
    if isinstance(unroll, bool) or not isinstance(unroll, numbers.Integral) or unroll < 1:
        raise ValueError(
            f"unroll must be None (chosen from the number of steps) or an int >= 1 (the number of "
            f"steps unrolls fully), got {unroll!r}"
        )
    return int(unroll)


# The named tuples' generated constructors name a module of their own; point them at this one,
# so that tools reading their signatures (pdoc, inspect.getmodule) resolve the annotations here.
IFState.__new__.__module__ = __name__
