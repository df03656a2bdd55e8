"""Data-level calibration: initial potentials or biases fitted once, on training images.

After Li et al., "A Free Lunch From ANN: Towards Efficient, Accurate Spiking Neural Networks
Calibration" (ICML 2021), adapted to QCFS thresholds (``docs/method.md`` section 8). Where COS
pre-simulates every sample, these methods compare the ANN and the SNN once, on a calibration
set drawn from the training split, and store the correction in the SNN's variables: inference
then costs T steps and nothing more.

Both go through the sites in network order. At site l, with the sites before it already
corrected, the calibration set is run through the SNN for T steps and site l's input currents
are kept, ``[T, N, ...]`` (they do not depend on site l's own correction). The target is the
ANN's mean QCFS output ``a`` and the SNN's rate is ``r = theta * count / T``, in the ANN's units.

* :func:`data_potential` chooses each neuron's initial potential v0 so that its mean rate over
  the calibration set matches its mean ANN activation;
* :func:`data_bias` chooses a current ``b`` per channel, added to the site's input at every step
  (the ``bias_correction`` collection; the same as shifting the bias of the layer before it),
  so that the mean rate over the calibration set and the channel's positions matches.

Two solvers (``solver=``):

* ``"linear"``: Li et al.'s single correction from v0 = theta / 2 and b = 0,
  ``v0 + T * mean(a - r)`` and ``b + mean(a - r)`` (one spike over T steps moves r by
  theta / T, and v0 by theta moves the count by about one): exact while the rate is linear in
  the shift, far off at small T, where the rate is a coarse step function of it;
* ``"bisect"`` (default): the rate is a non-decreasing step function of v0 and of b, so
  bisection (within ``v0 +- T * theta`` and ``b +- theta``) finds the achievable rate closest
  to the target, and the middle of the stretch where the rate takes that value (a value at a
  step's edge would let float round-off in the currents move spikes).

Both depend on T: calibrate once per number of steps. The results are SNN variables for
``spiking_model(model, num_steps=T, ...)`` and compose with COS (simulating a network with
``presim_steps, iterations > 0`` pre-simulates from the calibrated v0: ``warm_cos``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Float

from offsetjax import parallel
from offsetjax._checks import check_choice, check_int, images_must_fit
from offsetjax.activation import QCFS
from offsetjax.convert import convert_variables, spiking_model
from offsetjax.evaluate import _on_mesh, _to_host
from offsetjax.neuron import if_simulate, potential_dtype
from offsetjax.simulation import _check_call, check_images, site_order
from offsetjax.site import BIAS_CORRECTION, INITIAL_POTENTIAL, IFActivation

SOLVERS = ("bisect", "linear")
#: Halvings of each bisection: the bracket's width over 2**24, below float32's resolution of it.
BISECTION_STEPS = 24


def data_potential(
    model: nn.Module,
    ann_variables: Any,
    images: Float[ArrayLike, "N ..."],
    *,
    num_steps: int,
    solver: str = "bisect",
    snn_variables: Any | None = None,
    batch_size: int = 256,
    mesh: Mesh | None = None,
    unroll: int | None = None,
) -> dict:
    """SNN variables whose per-neuron initial potentials make each neuron's T-step firing rate
    match its ANN activation on average over ``images`` (Li et al.'s potential calibration).

    Args:
      model: the ANN definition (QCFS sites).
      ann_variables: its trained variables.
      images: the calibration set ``[N, H, W, C]``, normalised like the training images;
        draw it from the training split, never from the data you evaluate on.
      num_steps: T, the number of steps the SNN will run (the correction depends on it).
      solver: ``"bisect"`` (default) or ``"linear"`` (Li et al.'s single step); module docstring.
      snn_variables: start from these SNN variables (default: ``convert_variables`` of the
        ANN's, v0 = theta / 2); the linear step and the bisection bracket are taken around
        their v0.
      batch_size: images simulated at once, rounded up to a multiple of the mesh's devices.
      mesh: shard each batch over this device mesh (same result as on one device).
      unroll: scan unroll of the simulation (:func:`offsetjax.spiking_model`).

    Returns:
      SNN variables for ``spiking_model(model, num_steps=num_steps, ...)`` whose
      ``initial_potential`` leaves are per neuron (the site's neuron shape, no batch axis).
      Memory: one site's currents for the whole calibration set, ``T * N * neurons`` floats.
    """
    return _calibrate_sites(
        model, ann_variables, images, num_steps, solver, snn_variables, batch_size, mesh, unroll, per_channel=False
    )


def data_bias(
    model: nn.Module,
    ann_variables: Any,
    images: Float[ArrayLike, "N ..."],
    *,
    num_steps: int,
    solver: str = "bisect",
    snn_variables: Any | None = None,
    batch_size: int = 256,
    mesh: Mesh | None = None,
    unroll: int | None = None,
) -> dict:
    """SNN variables with a per-channel current added at every site's input, so that each
    channel's T-step firing rate matches its ANN activation on average over ``images`` and the
    channel's positions (Li et al.'s bias calibration). Arguments as :func:`data_potential`.

    Returns:
      SNN variables with a ``bias_correction`` collection: per site ``b`` of shape ``[C]``
      (the last axis of the neuron shape), added to the site's input current at every step.
    """
    return _calibrate_sites(
        model, ann_variables, images, num_steps, solver, snn_variables, batch_size, mesh, unroll, per_channel=True
    )


def _calibrate_sites(
    model, ann_variables, images, num_steps, solver, snn_variables, batch_size, mesh, unroll, *, per_channel: bool
) -> dict:
    check_int("num_steps", num_steps, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_choice("solver", solver, SOLVERS)
    images = check_images(images)
    snn = spiking_model(model, num_steps=num_steps, unroll=unroll)
    variables = convert_variables(snn, ann_variables) if snn_variables is None else dict(snn_variables)
    _check_call(snn, variables, images[:1])
    targets = _mean_activations(model, ann_variables, images, batch_size, mesh)
    collection, leaf = (BIAS_CORRECTION, "b") if per_channel else (INITIAL_POTENTIAL, "v0")
    leaves = {
        name: traverse_util.flatten_dict(dict(variables.get(name, {}))) for name in (INITIAL_POTENTIAL, BIAS_CORRECTION)
    }
    thresholds = traverse_util.flatten_dict(dict(variables["params"]))
    for site in site_order(snn, tuple(images.shape[1:])):
        path = tuple(site.split("/"))
        corrected = {**variables, collection: traverse_util.unflatten_dict(leaves[collection])}
        leaves[collection][(*path, leaf)] = _solve(
            _site_currents(snn, corrected, images, site, batch_size, mesh),
            thresholds[(*path, "threshold")],
            leaves[INITIAL_POTENTIAL][(*path, "v0")],
            leaves[BIAS_CORRECTION].get((*path, "b"), 0.0),
            targets[site],
            num_steps,
            solver=solver,
            per_channel=per_channel,
            unroll=unroll,
        )
    return {**variables, collection: traverse_util.unflatten_dict(leaves[collection])}


@functools.partial(jax.jit, static_argnames=("num_steps", "solver", "per_channel", "unroll"))
def _solve(currents, theta, v0, bias, target, num_steps: int, *, solver: str, per_channel: bool, unroll):
    """The v0 ``[neuron]`` (or b ``[C]`` when ``per_channel``) whose mean rate over the
    calibration currents ``[T or 1, N, ...]`` best matches ``target`` ``[neuron]``."""
    dtype = potential_dtype(currents.dtype)
    currents = jnp.broadcast_to(currents, (num_steps, *currents.shape[1:]))
    neuron_shape = currents.shape[2:]
    theta = jnp.asarray(theta, dtype)
    v0 = jnp.broadcast_to(jnp.asarray(v0, dtype), neuron_shape)
    bias = jnp.broadcast_to(jnp.asarray(bias, dtype), neuron_shape[-1:] if per_channel else neuron_shape)
    currents = currents.astype(dtype)
    target = target.astype(dtype)
    average = (lambda x: jnp.mean(x.reshape(-1, x.shape[-1]), axis=0)) if per_channel else (lambda x: x)
    target = average(target)

    def mean_rate(x):  # x: v0 [neuron] or b [C]
        shift = x if per_channel else bias
        start, current = (v0 if per_channel else x), currents + jnp.broadcast_to(shift, currents.shape)
        _, state = if_simulate(current, theta, start, unroll=unroll)
        return average(theta * jnp.mean(state.count, axis=0) / num_steps)

    start, gain, half_width = (bias, 1.0, theta) if per_channel else (v0, num_steps, num_steps * theta)
    if solver == "linear":
        return start + gain * (target - mean_rate(start))
    tolerance = 1e-6 * theta

    def bisect(reaches):  # the smallest x in the bracket with reaches(mean_rate(x)), and the largest without
        def halve(_, bracket):
            low, high = bracket
            middle = 0.5 * (low + high)
            hit = reaches(mean_rate(middle))
            return jnp.where(hit, low, middle), jnp.where(hit, middle, high)

        return jax.lax.fori_loop(0, BISECTION_STEPS, halve, (start - half_width, start + half_width))

    # The rate closest to the target: reached where it first gets there, or just below.
    below, reached = bisect(lambda rate: rate >= target - tolerance)
    rate_reached, rate_below = mean_rate(reached), mean_rate(below)
    # (a tie, common as both are means of multiples of theta / L and theta / T, goes to the one
    # reached, whatever the round-off in the two distances)
    below_closer = jnp.abs(rate_below - target) < jnp.abs(rate_reached - target) - tolerance
    closest = jnp.where(below_closer, rate_below, rate_reached)
    # The middle of the stretch where the rate is that value: not at a jump, where float
    # round-off in the currents would move a spike.
    _, first = bisect(lambda rate: rate >= closest - tolerance)
    _, beyond = bisect(lambda rate: rate > closest + tolerance)
    return 0.5 * (first + beyond)


def _batches(images: Array, batch_size: int, mesh: Mesh | None):
    """``(images, mask, valid)`` chunks of one size (padded to a multiple of the mesh's devices;
    ``valid`` real rows), each placed as the simulator's input (this process's rows, sharded)."""
    devices = 1 if mesh is None else mesh.size
    count = images.shape[0]
    batch = -(-min(batch_size, count) // devices) * devices
    for begin in range(0, count, batch):
        chunk = np.asarray(images[begin : begin + batch])
        valid = chunk.shape[0]
        mask = np.arange(batch) < valid
        chunk = np.concatenate([chunk, np.zeros((batch - valid, *chunk.shape[1:]), chunk.dtype)])
        yield (*_on_mesh(mesh, chunk, mask), valid)


def _mean_activations(model, variables, images: Array, batch_size: int, mesh: Mesh | None) -> dict:
    """Per QCFS site, the ANN's activation averaged over ``images``: ``{"a/b": [neuron]}``."""
    variables = variables if mesh is None else parallel.replicate(mesh, variables)
    totals = None
    for chunk, mask, _ in _batches(images, batch_size, mesh):
        sums = images_must_fit(functools.partial(_activation_sums, model, variables, chunk, mask), chunk)
        sums = jax.tree.map(parallel.local_value, sums)  # replicated: each process's own copy
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return {site: total / images.shape[0] for site, total in totals.items()}


@functools.partial(jax.jit, static_argnums=0)
def _activation_sums(model: nn.Module, variables: Any, images: Array, mask: Array) -> dict:
    def is_site(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and isinstance(module, QCFS)

    _, state = model.apply(variables, images, train=False, capture_intermediates=is_site, mutable=["intermediates"])
    sums = {}
    for path, (output,) in traverse_util.flatten_dict(state["intermediates"]).items():
        output = output.astype(potential_dtype(output.dtype))
        sums["/".join(path[:-1])] = jnp.tensordot(mask.astype(output.dtype), output, axes=1)
    return sums


def _site_currents(snn, variables, images: Array, site: str, batch_size: int, mesh: Mesh | None) -> np.ndarray:
    """The input currents of the IF site ``site`` over ``images``: ``[T or 1, N, ...]``, whole on
    every process."""
    variables = variables if mesh is None else parallel.replicate(mesh, variables)
    chunks = [
        _to_host(_currents_at(snn, variables, chunk, site), mesh)[:valid]
        for chunk, _, valid in _batches(images, batch_size, mesh)
    ]
    return np.moveaxis(np.concatenate(chunks), 0, 1)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _currents_at(snn: nn.Module, variables: Any, images: Array, site: str) -> Array:
    """Batch-major ``[B, T or 1, ...]``, as the batch is sharded."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, IFActivation) and "/".join(context.module.path) == site:
            seen["currents"] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        snn.apply(variables, images[None])
    return jnp.moveaxis(seen["currents"], 1, 0)
