"""Layer-by-layer SNN evaluation with or without offset-spike calibration.

An :class:`offsetjax.IFActivation` (``offsetjax/site.py``) replaces each QCFS site of a network
(see :func:`offsetjax.spiking_model`). In SNN mode every array flowing through the network is
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

import contextlib
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jaxtyping import Array, ArrayLike, Bool, Float

from offsetjax._checks import check_image_batch, check_same_tree, concrete_value, images_must_fit, trace_network
from offsetjax._linear_layers import INPUT_EVENTS, count_input_events
from offsetjax.convert import schedule
from offsetjax.site import CALIBRATED_FOR, CALIBRATED_POTENTIAL, INITIAL_POTENTIAL, OPERATIONS, STATISTICS
from offsetjax.stats import OffsetStatistics, masked_total


def simulate(
    model: nn.Module, variables: Any, images: Float[ArrayLike, "..."], *, frames: bool = False
) -> Float[Array, "T B C"]:
    """Run a spiking network and return its time-averaged accumulated logits.

    Args:
      model: a network whose activation is :class:`IFActivation` (``offsetjax.spiking_model``).
      variables: SNN variables (``offsetjax.convert_variables``).
      images: a batch of inputs ``[B, ...]`` (e.g. ``[B, H, W, C]``), presented at every step;
        with ``frames=True``, inputs that change every step, one frame per step,
        ``[steps, B, ...]`` (``steps`` = T, or tau + T with SRP): a video or an event stream.

    Returns:
      ``logits[t-1] = (1/t) * sum_{s<=t} out(s)``, ``[T, B, classes]``: the prediction after t
      steps is ``argmax(logits[t-1])``, and at t = T with T = L it equals the ANN's logits.
    """
    if frames:
        images = check_frames(model, images)
        check_network(model, variables, images[0])
    else:
        images = check_call(model, variables, images)
    logits, _, _ = images_must_fit(lambda: _apply(model, variables, images, None, frames=frames), images)
    return logits


def check_frames(model: nn.Module, frames) -> Array:
    """``frames`` checked: a sequence ``[steps, B, ...]`` of batches, one per step the network runs."""
    frames = jnp.asarray(frames)
    options = schedule(model)
    steps = options["srp_steps"] + options["num_steps"]
    if frames.ndim < 3 or frames.shape[0] != steps or frames.shape[1] < 1:
        raise ValueError(
            f"frames must be one batch per step, [steps, B, ...] with steps = {steps} for this network "
            f"(num_steps={options['num_steps']}, srp_steps={options['srp_steps']}) and B >= 1, got shape "
            f"{frames.shape}"
        )
    return check_image_batch(frames, axis="steps")


def simulate_with_statistics(
    model: nn.Module,
    variables: Any,
    images: Float[ArrayLike, "B ..."],
    *,
    sample_mask: Bool[ArrayLike, " B"] | None = None,
) -> tuple[Float[Array, "T B C"], dict[str, OffsetStatistics]]:
    """:func:`simulate`, also returning each site's :class:`OffsetStatistics`, keyed by the
    site's module path (``"block1/act"``) in network order.

    Args:
      model, variables, images: as :func:`simulate`.
      sample_mask: optional boolean ``[B]``: the statistics count only the samples where it is
        true (for a batch padded to a fixed size). Default: every sample.
    """
    images = check_call(model, variables, images)
    if sample_mask is None:
        sample_mask = jnp.ones(images.shape[:1], bool)
    if tuple(sample_mask.shape) != images.shape[:1]:
        raise ValueError(f"sample_mask must have shape {images.shape[:1]} (one per image), got {sample_mask.shape}")
    logits, stats, _ = simulate_collecting(model, variables, images, sample_mask, operations=False)
    return logits, stats


def simulate_collecting(model: nn.Module, variables: Any, images: Array, sample_mask, operations: bool):
    """``(logits, statistics per site or None, operations per site or None)`` from one run:
    statistics when ``sample_mask`` is given, each site's sown :data:`OPERATIONS` when asked.
    ``images`` as :func:`check_call` returned them (the caller checks, once)."""
    logits, stats, ops = images_must_fit(lambda: _apply(model, variables, images, sample_mask, operations), images)
    order = site_order(model, images.shape[1:])
    return (
        logits,
        per_site(stats, order) if sample_mask is not None else None,
        (per_site(ops[0], order), ops[1]) if operations else None,
    )


def per_site(sown: dict, order: tuple[str, ...]) -> dict:
    """A sown collection ``{site path...: {name: value}}`` as ``{"a/b": leaf}`` in ``order``
    (the leaf being the site's :class:`OffsetStatistics` or its dict of values)."""
    flat: dict[str, Any] = {}
    for path, value in traverse_util.flatten_dict(sown).items():
        name = "/".join(path[:-1])
        if isinstance(value, OffsetStatistics):
            flat[name] = value
        else:
            flat.setdefault(name, {})[path[-1]] = value
    return {name: flat[name] for name in order}


def site_order(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[str, ...]:
    """Module paths of the network's IF sites in the order the network calls them (traced
    abstractly with float32 images of ``image_shape``; the order does not depend on dtype)."""
    return trace_network(model, (1, 1, *image_shape)).sites


def calibrate_network(model: nn.Module, variables: Any, images: Float[ArrayLike, "B ..."]) -> dict:
    """The calibrated initial potentials of every site, per sample: a pytree like
    ``variables["initial_potential"]`` whose leaves are ``[B, ...]``.

    Calibration is a function from one initial-potential pytree to another: simulating the
    uncalibrated network (``iterations=0``) from this pytree reproduces the calibrated run.
    """
    images = check_call(model, variables, images)
    sown = images_must_fit(lambda: _calibrated_potentials(model, variables, images), images)
    return jax.tree.map(lambda leaf: leaf[0], sown, is_leaf=lambda x: isinstance(x, tuple))


@functools.partial(jax.jit, static_argnums=0)
def _calibrated_potentials(model: nn.Module, variables: Any, images: Array):
    out, sown = model.apply(variables, images[None], mutable=[CALIBRATED_POTENTIAL])
    if out.ndim != 3:  # static: raised once, while tracing
        raise ValueError(f"images of shape {images.shape} are not one batch [B, H, W, C] for this network")
    return sown[CALIBRATED_POTENTIAL]


def check_images(images) -> Array:
    """``images`` as an array, checked: a batch ``[B, ...]`` with B >= 1, floating, finite."""
    return check_image_batch(jnp.asarray(images))


def check_call(model: nn.Module, variables: Any, images) -> Array:
    """What :func:`simulate` and friends check once per call, before compiling: the images
    (:func:`check_images`; their rank and size against the network are checked while tracing,
    see :func:`_apply`) and the network with its variables (:func:`check_network`)."""
    images = check_images(images)
    check_network(model, variables, images)
    return images


def check_network(model: nn.Module, variables: Any, images) -> None:
    """The model has IF sites for ``images`` of this shape; the variables are this network's
    (every parameter and batch statistic by name and shape, an initial potential per site), were
    converted, every threshold is finite and > 0 and every v(0) finite, naming the site. Inside a
    caller's ``jit`` the values are tracers and only the structural checks run. Compiles nothing."""
    traced = images_must_fit(lambda: trace_network(model, (1, 1, *images.shape[1:])), images)
    if not traced.sites:
        raise ValueError(
            f"model has no IFActivation site (a {type(model).__name__} with activation "
            f"{getattr(model, 'activation', None)!r}): build the spiking network with "
            "offsetjax.spiking_model(model, num_steps=...)"
        )
    check_snn_variables(variables)
    steps, runs = calibrated_steps(variables), schedule(model)["num_steps"]
    if steps is not None and steps != runs:
        raise ValueError(
            f"variables were calibrated for num_steps={steps} (offsetjax.data_potential / data_bias), "
            f"but this network runs num_steps={runs}: calibrate with the network you run"
        )
    what = f"this {type(model).__name__} on images of shape {tuple(images.shape)}"
    check_variables_fit(variables, traced.variables, ("params", "batch_stats"), what)
    check_same_tree(
        f"variables[{INITIAL_POTENTIAL!r}]",
        variables[INITIAL_POTENTIAL],
        traced.variables[INITIAL_POTENTIAL],
        what,
        shapes=False,
    )


def calibrated_steps(variables: Any) -> int | None:
    """The T that ``variables`` were calibrated for by :func:`offsetjax.data_potential` or
    :func:`offsetjax.data_bias` (their ``calibrated_for`` collection), or ``None``: converted or
    COS variables serve any T (and inside a caller's ``jit`` the recorded T cannot be read)."""
    recorded = variables.get(CALIBRATED_FOR)
    steps = None if recorded is None else concrete_value(recorded["num_steps"])
    return None if steps is None else int(steps)


def check_variables_fit(variables: Any, expected: dict, collections: tuple[str, ...], what: str) -> None:
    """Every collection of ``collections`` the network has (``expected``, from
    ``trace_network``) is in ``variables`` with exactly the network's leaves and shapes;
    ``what`` names the network and input in the error."""
    for collection in collections:
        if collection not in expected:
            continue
        if collection not in variables:
            raise ValueError(
                f"variables hold no {collection!r} collection (collections {sorted(variables)}), which {what} needs"
            )
        check_same_tree(f"variables[{collection!r}]", variables[collection], expected[collection], what)


def check_snn_variables(variables: Any) -> None:
    """Check SNN variables: converted (an ``initial_potential`` collection), thresholds finite
    and > 0, initial potentials finite; a failure names the site. Reads the (scalar, per-site)
    values on the host once per call; skipped for traced values."""
    if not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError("variables must be a mapping with 'params' (from offsetjax.convert_variables)")
    if INITIAL_POTENTIAL not in variables:
        raise ValueError(
            f"variables hold no {INITIAL_POTENTIAL!r} collection (collections {sorted(variables)}): these "
            "look like ANN variables; convert them with offsetjax.convert_variables(snn_model, ann_variables)"
        )
    thresholds = {
        "/".join(path[:-1]): leaf
        for path, leaf in traverse_util.flatten_dict(variables["params"]).items()
        if path[-1] == "threshold"
    }
    potentials = {
        "/".join(path[:-1]): leaf for path, leaf in traverse_util.flatten_dict(variables[INITIAL_POTENTIAL]).items()
    }
    leaves = [*thresholds.values(), *potentials.values()]
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return
    # NumPy on the concrete values (a jitted reduction would return a tracer when the caller
    # is itself being traced with these variables closed over).
    valid = [bool(np.all(np.isfinite(t) & (t > 0))) for t in map(np.asarray, thresholds.values())]
    valid += [bool(np.all(np.isfinite(v))) for v in map(np.asarray, potentials.values())]
    names = [f"threshold of site {name} must be finite and > 0" for name in thresholds]
    names += [f"initial potential v0 of site {name} must be finite" for name in potentials]
    bad = [message for message, ok in zip(names, valid) if not ok]
    if bad:
        raise ValueError("variables are invalid: " + "; ".join(bad))


@functools.partial(jax.jit, static_argnums=(0, 4), static_argnames=("frames",))
def _apply(
    model: nn.Module,
    variables: Any,
    images: Array,
    sample_mask: Array | None,
    operations: bool = False,
    *,
    frames: bool = False,
):
    """Running-mean logits; each site's statistics masked by ``sample_mask`` when it is given;
    each site's per-sample operations (:data:`OPERATIONS`) when ``operations``. ``images`` is
    one batch entered once, or with ``frames`` one batch per step."""
    mutable = ([STATISTICS] if sample_mask is not None else []) + ([OPERATIONS, INPUT_EVENTS] if operations else [])
    entered = images if frames else images[None]
    if mutable:
        with nn.intercept_methods(count_input_events) if operations else contextlib.nullcontext():
            out, collections = model.apply(variables, entered, mutable=mutable)
    else:
        out, collections = model.apply(variables, entered), {}
    if out.ndim != 3:  # static: raised once, while tracing
        raise ValueError(
            f"images of shape {images.shape} gave logits of shape {out.shape}, not [T, B, classes]: "
            "images must be one batch [B, H, W, C] (one axis more than the network takes?)"
        )
    stats = {}
    if sample_mask is not None:
        stats = jax.tree.map(
            lambda stats: masked_total(stats[0], sample_mask),
            collections[STATISTICS],
            is_leaf=lambda x: isinstance(x, tuple) and not isinstance(x, OffsetStatistics),
        )
    srp_steps = schedule(model)["srp_steps"]
    ops = jax.tree.map(lambda x: x[0], collections.get(OPERATIONS, {}), is_leaf=lambda x: isinstance(x, tuple))
    if operations:  # the linear layers' events, every layer's [T' or 1, B] summed as [T, B]
        steps_run = (out.shape[0], out.shape[1])
        layers = traverse_util.flatten_dict(collections.get(INPUT_EVENTS, {}))
        ops = (
            ops,
            {
                kind: sum(
                    (
                        jnp.broadcast_to(v, steps_run)
                        for path, values in layers.items()
                        if path[-1] == kind
                        for v in values
                    ),
                    jnp.zeros(steps_run, jnp.float32),
                )[srp_steps:]
                for kind in ("accumulates", "multiply_accumulates")
            },
        )
    out = out[srp_steps:]  # SRP's pre-simulation steps are not read out
    steps = jnp.arange(1, out.shape[0] + 1, dtype=out.dtype).reshape((-1,) + (1,) * (out.ndim - 1))
    return jnp.cumsum(out, axis=0) / steps, stats, ops
