"""Layer-by-layer SNN evaluation with or without offset-spike calibration.

An :class:`IFActivation` replaces each QCFS site of a network (see
:func:`offsetjax.spiking_model`). In SNN mode every array flowing through the network is
time-major ``[T', B, ...]`` with ``T'`` either ``T`` or 1: the image enters as ``[1, B, ...]``,
so the first layer's static input current is computed once, and every linear op (conv,
eval-mode batch norm, pooling, dense, residual add) runs once over the time axis folded into
the batch. Each site then, per sample and per neuron:

    currents [T, B, ...] -> pre-simulate rho steps, k times -> shifted v(0)
                         -> scan T steps -> spikes * theta -> next layer

The network output is accumulated over time; :func:`simulate` returns its running mean, so
the logits at every t <= T come from one run.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jaxtyping import Array, Float

from offsetjax._checks import check_choice, check_finite, check_float, check_steps, images_must_fit
from offsetjax.neuron import if_simulate, potential_dtype
from offsetjax.offset import SATURATION_RULES, calibrate_initial_potential
from offsetjax.qcfs import DEFAULT_THRESHOLD
from offsetjax.stats import OffsetStatistics, offset_statistics

#: Variable collection holding each site's initial potential v(0) (per neuron, no batch axis).
INITIAL_POTENTIAL = "initial_potential"
#: Collection the sites sow their :class:`OffsetStatistics` into when it is mutable.
STATISTICS = "offset_statistics"
#: Collection the sites sow their calibrated per-sample v(0) ``[B, ...]`` into when mutable.
CALIBRATED_POTENTIAL = "calibrated_potential"


class IFActivation(nn.Module):
    """An IF activation site: the SNN counterpart of :class:`offsetjax.QCFS`.

    Reads the threshold from ``params['threshold']`` (the QCFS lambda) and v(0) from the
    ``initial_potential`` collection (theta/2 at init).

    Attributes:
      num_steps: T, the number of simulated steps.
      presim_steps: rho, the pre-simulation length of calibration (0: none).
      iterations: k, calibration rounds (0: the uncalibrated QCFS baseline).
      eps: relative margin of Theorem 2.
      saturated: rule (ii) for a neuron that never stayed silent in the pre-simulation:
        ``"fire"`` (the authors' code, default) or ``"hold"``
        (:func:`offsetjax.shift_initial_potential`).
      unroll: ``jax.lax.scan`` unroll of the T-step simulation.
      threshold_init: initial threshold, as QCFS's.
    """

    num_steps: int
    presim_steps: int = 0
    iterations: int = 0
    eps: float = 1e-3
    saturated: str = "fire"
    unroll: int | bool = True
    threshold_init: float = DEFAULT_THRESHOLD

    def __post_init__(self):
        check_steps(num_steps=self.num_steps, presim_steps=self.presim_steps, iterations=self.iterations)
        check_choice("saturated", self.saturated, SATURATION_RULES)
        super().__post_init__()

    @nn.compact
    def __call__(self, currents: Float[Array, "Tp B ..."]) -> Float[Array, "T B ..."]:
        """Spike outputs ``theta * s(t)``, ``[T, B, ...]``, from currents ``[T or 1, B, ...]``."""
        if currents.ndim < 2 or currents.shape[0] not in (1, self.num_steps):
            raise ValueError(
                f"an IFActivation with num_steps={self.num_steps} needs time-major currents "
                f"[{self.num_steps} or 1, batch, ...], got shape {currents.shape}; run the network "
                "through offsetjax.simulate"
            )
        theta = self.param("threshold", nn.initializers.constant(self.threshold_init), (), jnp.float32)
        theta = theta.astype(potential_dtype(currents.dtype))
        neuron_shape = currents.shape[2:]
        v0 = self.variable(INITIAL_POTENTIAL, "v0", lambda: jnp.full(neuron_shape, 0.5 * theta)).value
        currents = jnp.broadcast_to(currents, (self.num_steps, *currents.shape[1:]))
        calibrated = calibrate_initial_potential(
            currents,
            theta,
            v0,
            presim_steps=self.presim_steps,
            iterations=self.iterations,
            eps=self.eps,
            saturated=self.saturated,
            unroll=self.unroll,
        )
        spikes, state = if_simulate(currents, theta, calibrated, unroll=self.unroll)
        if self.is_mutable_collection(STATISTICS):
            self.sow(STATISTICS, "site", offset_statistics(currents.astype(theta.dtype), state.count, theta))
        if self.is_mutable_collection(CALIBRATED_POTENTIAL):
            self.sow(CALIBRATED_POTENTIAL, "v0", calibrated)
        return (spikes * theta).astype(currents.dtype)


def simulate(model: nn.Module, variables: Any, images: Float[Array, "B ..."]) -> Float[Array, "T B C"]:
    """Run a spiking network and return its time-averaged accumulated logits.

    Args:
      model: a network whose activation is :class:`IFActivation` (``offsetjax.spiking_model``).
      variables: SNN variables (``offsetjax.convert_variables``).
      images: a batch of inputs ``[B, ...]`` (e.g. ``[B, H, W, C]``), presented at every step.

    Returns:
      ``logits[t-1] = (1/t) * sum_{s<=t} out(s)``, ``[T, B, classes]``: the prediction after t
      steps is ``argmax(logits[t-1])``, and at t = T with T = L it equals the ANN's logits.
    """
    images = _check_images(images)
    logits, _ = images_must_fit(lambda: _apply(model, variables, images, False), images)
    return logits


def simulate_with_statistics(
    model: nn.Module, variables: Any, images: Float[Array, "B ..."]
) -> tuple[Float[Array, "T B C"], dict[str, OffsetStatistics]]:
    """:func:`simulate`, also returning each site's :class:`OffsetStatistics`, keyed by the
    site's module path (``"block1/act"``) in network order."""
    images = _check_images(images)
    logits, sown = images_must_fit(lambda: _apply(model, variables, images, True), images)
    flat = {"/".join(path[:-1]): stats[0] for path, stats in traverse_util.flatten_dict(sown[STATISTICS]).items()}
    return logits, {name: flat[name] for name in site_order(model, images.shape[1:], images.dtype)}


@functools.lru_cache(maxsize=128)
def site_order(model: nn.Module, image_shape: tuple[int, ...], dtype=jnp.float32) -> tuple[str, ...]:
    """Module paths of the network's IF sites in the order the network calls them."""
    order: list[str] = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, IFActivation) and context.method_name == "__call__":
            name = "/".join(context.module.path)
            if name not in order:
                order.append(name)
        return next_fun(*args, **kwargs)

    example = jax.ShapeDtypeStruct((1, 1, *image_shape), dtype)
    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.init, jax.random.key(0)), example)
    return tuple(order)


def calibrate_network(model: nn.Module, variables: Any, images: Float[Array, "B ..."]) -> dict:
    """The calibrated initial potentials of every site, per sample: a pytree like
    ``variables["initial_potential"]`` whose leaves are ``[B, ...]``.

    Calibration is a function from one initial-potential pytree to another: simulating the
    uncalibrated network (``iterations=0``) from this pytree reproduces the calibrated run.
    """
    images = _check_images(images)
    sown = images_must_fit(lambda: _calibrated_potentials(model, variables, images), images)
    return jax.tree.map(lambda leaf: leaf[0], sown, is_leaf=lambda x: isinstance(x, tuple))


@functools.partial(jax.jit, static_argnums=0)
def _calibrated_potentials(model: nn.Module, variables: Any, images: Array):
    _, sown = model.apply(variables, images[None], mutable=[CALIBRATED_POTENTIAL])
    return sown[CALIBRATED_POTENTIAL]


def _check_images(images) -> Array:
    images = jnp.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"images must be a batch [B, ...] with B >= 1, got shape {images.shape}")
    check_float("images", images)
    check_finite("images", images)
    return images


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model: nn.Module, variables: Any, images: Array, collect_statistics: bool):
    if collect_statistics:
        out, sown = model.apply(variables, images[None], mutable=[STATISTICS])
    else:
        out, sown = model.apply(variables, images[None]), {}
    steps = jnp.arange(1, out.shape[0] + 1, dtype=out.dtype).reshape((-1,) + (1,) * (out.ndim - 1))
    return jnp.cumsum(out, axis=0) / steps, sown
