"""Data-level calibration: initial potentials or biases fitted once, on training images.

After Li et al., "A Free Lunch From ANN: Towards Efficient, Accurate Spiking Neural Networks
Calibration" (ICML 2021), adapted to QCFS thresholds (``docs/method.md`` section 8). Where COS
pre-simulates every sample, these methods compare the ANN and the SNN once, on a calibration
set drawn from the training split, and store the correction in the SNN's variables: inference
then costs T steps and nothing more.

Both run the calibration set through the SNN for T steps once, as one batch in one compiled
program, and correct each site as the pass reaches it: site l's input currents ``[T, N, ...]``
come from the sites before it, already corrected (they do not depend on site l's own
correction); site l's correction is solved from them and used at once for the rest of the pass.
The target is the ANN's mean QCFS output ``a`` and the SNN's rate is ``r = theta * count / T``,
in the ANN's units.

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

Both depend on T: calibrate once per number of steps, with the network you will run
(``data_potential(snn, ...)`` for ``snn = spiking_model(model, num_steps=T, ...)``). Each
calibrated site entry records T beside its value (``initial_potential[site]["num_steps"]``
beside ``v0``, ``bias_correction[site]["num_steps"]`` beside ``b``), so T travels with the values
through any merge, and a network of another T refuses them, naming the site and both T. To run a
calibration at another T on purpose, drop the records with :func:`without_calibration_record`.
They compose with COS (a network with ``presim_steps, iterations > 0`` pre-simulates from the
calibrated v0: ``warm_cos``).
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
from offsetjax._batching import device_batch, on_mesh, padded
from offsetjax._checks import check_choice, check_image_batch, images_must_fit, is_abstract, widen_half
from offsetjax._trace import SiteOperands, intercepting_sites, tracing_view
from offsetjax.activation import QCFS, ANNSite, at_least_float32
from offsetjax.convert import ann_model, convert_variables, schedule, spiking_model
from offsetjax.neuron import scan_unroll
from offsetjax.schedule import Schedule
from offsetjax.simulation import check_ann_variables, check_model, check_network, input_dtype
from offsetjax.site import BIAS_CORRECTION, CALIBRATED_FOR, CALIBRATED_STEPS, INITIAL_POTENTIAL

__all__ = ["CALIBRATED_STEPS", "SOLVERS", "data_bias", "data_potential", "without_calibration_record"]

SOLVERS = ("bisect", "linear")
#: Halvings of each bisection: the bracket's width over 2**24, below float32's resolution of it.
BISECTION_STEPS = 24


def data_potential(
    snn: nn.Module,
    ann_variables: Any,
    images: Float[ArrayLike, "N ..."],
    *,
    solver: str = "bisect",
    snn_variables: Any | None = None,
    mesh: Mesh | None = None,
) -> dict:
    """SNN variables whose per-neuron initial potentials make each neuron's T-step firing rate
    match its ANN activation on average over ``images`` (Li et al.'s potential calibration).

    Args:
      snn: the network the variables are for (:func:`offsetjax.spiking_model`); its T (and scan
        unroll) is the calibration's. The calibration runs its plain T-step version (no COS
        pre-simulation, no SRP); the result serves ``snn`` itself, e.g. COS pre-simulating from
        the calibrated v0 (``warm_cos``).
      ann_variables: the trained ANN's variables (the targets are the ANN's mean activations;
        the ANN is the network ``snn`` was converted from, :func:`offsetjax.ann_model`).
      images: the calibration set ``[N, H, W, C]``, normalised like the training images;
        draw it from the training split, never from the data you evaluate on.
      solver: ``"bisect"`` (default) or ``"linear"`` (Li et al.'s single step); module docstring.
      snn_variables: start from these SNN variables (default: ``convert_variables`` of the
        ANN's, v0 = theta / 2); the linear step and the bisection bracket are taken around
        their v0.
      mesh: shard the calibration set over this device mesh (same result as on one device).

    Returns:
      SNN variables for ``snn`` whose ``initial_potential`` entries are per neuron (``v0`` of the
      site's neuron shape, no batch axis), each beside ``num_steps``, the T it was calibrated
      for (:data:`offsetjax.site.CALIBRATED_STEPS`): simulating them in a network of another T
      is refused. Memory: the whole calibration set is one batch, so a layer's activations for
      all of it, ``T * N * neurons`` floats, are held at once (as when simulating a batch of N
      images).

    Raises:
      ValueError: before anything runs, naming the leaf: ``ann_variables`` (or ``snn_variables``)
        not this network's, of a non-floating dtype or not finite; ``snn_variables`` with a
        per-sample v(0) or calibrated for another T; images not a non-empty, floating, finite
        batch (half precision is cast up to the network's compute dtype, as in
        :func:`offsetjax.simulate`).
    """
    return _calibrate_sites(snn, ann_variables, images, solver, snn_variables, mesh, per_channel=False)


def data_bias(
    snn: nn.Module,
    ann_variables: Any,
    images: Float[ArrayLike, "N ..."],
    *,
    solver: str = "bisect",
    snn_variables: Any | None = None,
    mesh: Mesh | None = None,
) -> dict:
    """SNN variables with a per-channel current added at every site's input, so that each
    channel's T-step firing rate matches its ANN activation on average over ``images`` and the
    channel's positions (Li et al.'s bias calibration). Arguments as :func:`data_potential`.

    Returns:
      SNN variables for ``snn`` with a ``bias_correction`` collection: per site ``b`` of shape
      ``[C]`` (the last axis of the neuron shape), added to the site's input current at every
      step, beside ``num_steps`` (T), as :func:`data_potential`.
    """
    return _calibrate_sites(snn, ann_variables, images, solver, snn_variables, mesh, per_channel=True)


def _calibrate_sites(snn, ann_variables, images, solver, snn_variables, mesh, *, per_channel: bool) -> dict:
    plan = schedule(snn)
    check_choice("solver", solver, SOLVERS)
    images = _checked_host_images(images)
    model = ann_model(snn)
    num_steps = plan.num_steps
    plain = spiking_model(model, schedule=Schedule(num_steps=num_steps, unroll=plan.unroll))
    check_model(plain, images)
    check_ann_variables(model, ann_variables, images, name="ann_variables")
    refused = "a data-level calibration starts from one v(0) per neuron for the whole calibration set"
    variables = convert_variables(plain, ann_variables) if snn_variables is None else dict(snn_variables)
    name = "variables" if snn_variables is None else "snn_variables"
    check_network(plain, variables, images, per_sample_refused=refused, name=name)
    collection = BIAS_CORRECTION if per_channel else INITIAL_POTENTIAL
    old_format = variables.pop(CALIBRATED_FOR, None) is not None
    if collection in variables:  # the values calibrated here replace these, and their records
        variables[collection] = _records(variables[collection], None)
    images = widen_half(images, input_dtype(plain, variables))
    # The whole calibration set is one batch (padded to a multiple of the mesh's devices): each
    # site's solution needs every image's currents, so batching would re-run the network per site.
    count = images.shape[0]
    size = device_batch(count, mesh)
    placed_images, placed_mask = on_mesh(mesh, padded(images, size), np.arange(size) < count)
    placed = (ann_variables, variables) if mesh is None else parallel.replicate(mesh, (ann_variables, variables))
    corrected = images_must_fit(
        lambda: _calibrated_pass(
            model,
            plain,
            *placed,
            placed_images,
            placed_mask,
            count=count,
            solver=solver,
            per_channel=per_channel,
        ),
        images,
    )
    if jax.process_count() > 1:  # replicated over the processes: each keeps its own copy
        corrected = jax.tree.map(lambda leaf: jnp.asarray(parallel.local_value(leaf)), corrected)
    result = {**variables, collection: _records(corrected, num_steps)}
    other = INITIAL_POTENTIAL if per_channel else BIAS_CORRECTION
    if old_format and other in result:  # the old collection's T, now beside the values it was for
        result[other] = _records(result[other], num_steps)
    return result


def _records(tree: Any, num_steps: int | None) -> dict:
    """``tree`` (a collection of per-site entries) with each entry's calibration record
    (:data:`CALIBRATED_STEPS`) set to ``num_steps``, or removed when ``None``."""
    flat = {path: leaf for path, leaf in traverse_util.flatten_dict(dict(tree)).items() if path[-1] != CALIBRATED_STEPS}
    if num_steps is not None:
        flat.update({(*path[:-1], CALIBRATED_STEPS): np.int32(num_steps) for path in list(flat)})
    return traverse_util.unflatten_dict(flat)


def without_calibration_record(variables: Any) -> dict:
    """``variables`` without the T their data-level calibration recorded (each site's
    ``num_steps`` beside its ``v0`` or ``b``, and the old ``calibrated_for`` collection): an
    explicit override, to run a calibration made for one T in a network of another T on purpose
    (e.g. COS at T < rho runs rho steps and reads the logits at T). Values are unchanged."""
    variables = {key: value for key, value in dict(variables).items() if key != CALIBRATED_FOR}
    for collection in (INITIAL_POTENTIAL, BIAS_CORRECTION):
        if collection in variables:
            variables[collection] = _records(variables[collection], None)
    return variables


def _checked_host_images(images) -> np.ndarray:
    """``images`` as a NumPy batch ``[N, ...]``: non-empty, floating and finite, checked on the
    host (no device program is compiled for the check)."""
    if is_abstract(images):
        raise ValueError(
            "images must be concrete: data_potential and data_bias run their own jit (one program per "
            "network, T and calibration-set shape) and cannot be traced inside a caller's jit"
        )
    return check_image_batch(np.asarray(images), axis="N")


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("count", "solver", "per_channel"))
def _calibrated_pass(
    model: nn.Module,
    snn: nn.Module,
    ann_variables: Any,
    variables: Any,
    images: Array,
    mask: Array,
    *,
    count: int,
    solver: str,
    per_channel: bool,
) -> dict:
    """One pass of the SNN over the calibration set in network order: each site's correction is
    solved from its input currents (the sites before it already corrected) and used at once.
    Returns the ``bias_correction`` (``per_channel``) or ``initial_potential`` collection."""
    targets = _mean_activations(model, ann_variables, images, mask, count)
    collection, leaf = (BIAS_CORRECTION, "b") if per_channel else (INITIAL_POTENTIAL, "v0")

    def calibrate_site(site, currents, call):
        operands = SiteOperands.of(site, currents)
        solution = _solve(
            *operands._replace(bias=0.0 if operands.bias is None else operands.bias),
            targets["/".join(site.path)],
            mask,
            count,
            site.schedule.num_steps,
            solver=solver,
            per_channel=per_channel,
        )
        site.put_variable(collection, leaf, solution)
        return call()

    with intercepting_sites(calibrate_site), tracing_view():
        _, state = snn.apply(variables, images[None], mutable=[collection])
    return state[collection]


#: Bytes of currents a block of neurons holds while data_potential bisects it: small enough to
#: stay in a CPU core's cache over the ~75 simulations of a bisection (measured on 2 cores).
BLOCK_BYTES = 1 << 20


def _solve(currents, theta, v0, bias, target, mask, count: int, num_steps: int, *, solver: str, per_channel: bool):
    # A threshold per channel (or per neuron) broadcasts over the batch and time axes by design.
    with jax.numpy_rank_promotion("allow"):
        return _solve_blocks(
            currents, theta, v0, bias, target, mask, count, num_steps, solver=solver, per_channel=per_channel
        )


def _solve_blocks(
    currents, theta, v0, bias, target, mask, count: int, num_steps: int, *, solver: str, per_channel: bool
):
    """The v0 ``[neuron]`` (or b ``[C]`` when ``per_channel``) whose mean rate over the
    calibration currents ``[T or 1, N, ...]`` (the rows where ``mask`` ``[N]`` holds, ``count``
    of them) best matches ``target`` ``[neuron]``.

    Each neuron's v0 depends only on its own currents, so v0 is solved block by block of
    neurons (``lax.map``): the same arithmetic per neuron, with a block's currents read from
    cache rather than memory by each of the bisection's simulations."""
    if per_channel:
        return _solve_block(currents, theta, v0, bias, target, mask, count, num_steps, solver=solver, per_channel=True)
    neuron_shape = currents.shape[2:]
    neurons = int(np.prod(neuron_shape))
    size = max(1, min(neurons, BLOCK_BYTES // (4 * num_steps * currents.shape[1])))
    blocks = -(-neurons // size)
    dtype = at_least_float32(currents.dtype)

    def blocked(x, rows):  # [rows, N?, *neuron_shape] -> [blocks, rows, N?, size], zero-padded
        x = jnp.broadcast_to(jnp.asarray(x, dtype), (*rows, *neuron_shape)).reshape(*rows, neurons)
        x = jnp.pad(x, [(0, 0)] * len(rows) + [(0, blocks * size - neurons)])
        return jnp.moveaxis(x.reshape(*rows, blocks, size), -2, 0)

    per_channel_theta = np.ndim(theta) > 0  # one lambda per channel: blocked with the neurons

    def solve_block(args):
        block_currents, block_v0, block_bias, block_target, block_theta = args
        return _solve_block(
            block_currents,
            block_theta if per_channel_theta else theta,
            block_v0,
            block_bias,
            block_target,
            mask,
            count,
            num_steps,
            solver=solver,
            per_channel=False,
        )

    rows = currents.shape[:2]
    solutions = jax.lax.map(
        solve_block,
        (
            blocked(currents, rows),
            blocked(v0, ()),
            blocked(bias, ()),
            blocked(target, ()),
            blocked(theta, ()) if per_channel_theta else jnp.zeros(blocks),
        ),
    )
    return solutions.reshape(-1)[:neurons].reshape(neuron_shape)


def _solve_block(
    currents, theta, v0, bias, target, mask, count: int, num_steps: int, *, solver: str, per_channel: bool
):
    """:func:`_solve` on one block (all neurons at once)."""
    dtype = at_least_float32(currents.dtype)
    currents = jnp.broadcast_to(currents, (num_steps, *currents.shape[1:]))
    neuron_shape = currents.shape[2:]
    theta = jnp.asarray(theta, dtype)
    v0 = jnp.broadcast_to(jnp.asarray(v0, dtype), neuron_shape)
    bias = jnp.broadcast_to(jnp.asarray(bias, dtype), neuron_shape[-1:] if per_channel else neuron_shape)
    currents = currents.astype(dtype)
    target = target.astype(dtype)
    average = (lambda x: jnp.mean(x.reshape(-1, x.shape[-1]), axis=0)) if per_channel else (lambda x: x)
    target = average(target)
    row_mask = mask.reshape((-1,) + (1,) * len(neuron_shape))

    def mean_rate(x):  # x: v0 [neuron] or b [C]
        shift = x if per_channel else bias
        start, current = (v0 if per_channel else x), currents + jnp.broadcast_to(shift, currents.shape)
        spikes = jnp.sum(jnp.where(row_mask, _spike_counts(current, theta, start), 0), axis=0)  # exact: whole numbers
        return average(theta * (spikes / count) / num_steps)

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


def _spike_counts(currents: Array, theta: Array, v0: Array) -> Array:
    """IF spike counts ``[N, ...]`` over ``currents`` ``[T, N, ...]`` from ``v0``: the arithmetic of
    :func:`offsetjax.if_step` (the same counts), in a rolled loop carrying only ``(v, count)``,
    inside each bisection step."""

    def step(carry, current):
        v, count = carry
        charged = v + current
        spike = (charged >= theta).astype(charged.dtype)
        return (charged - theta * spike, count + spike), None

    start = jnp.broadcast_to(v0, currents.shape[1:])
    (_, count), _ = jax.lax.scan(step, (start, jnp.zeros_like(start)), currents, unroll=scan_unroll(currents.shape[0]))
    return count


def _mean_activations(model: nn.Module, variables: Any, images: Array, mask: Array, count: int) -> dict:
    """Per QCFS (or converted ReLU) site, the ANN's activation averaged over the rows of ``images`` where ``mask``
    holds (``count`` of them): ``{"a/b": [neuron]}``."""

    def is_site(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and isinstance(module, (QCFS, ANNSite))

    _, state = model.apply(variables, images, train=False, capture_intermediates=is_site, mutable=["intermediates"])
    means = {}
    for path, (output,) in traverse_util.flatten_dict(state["intermediates"]).items():
        output = output.astype(at_least_float32(output.dtype))
        means["/".join(path[:-1])] = jnp.tensordot(mask.astype(output.dtype), output, axes=1) / count
    return means
