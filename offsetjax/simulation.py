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
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jaxtyping import Array, ArrayLike, Bool, Float

from offsetjax._checks import (
    check_image_batch,
    check_same_tree,
    compute_dtype,
    concrete_value,
    images_must_fit,
    leaf_label,
    nonfinite,
    thresholds_as_given,
    widen_half,
)
from offsetjax._deprecation import renamed_argument
from offsetjax._linear_layers import INPUT_EVENTS, count_input_events
from offsetjax._trace import trace_network, tracing_view
from offsetjax.convert import schedule
from offsetjax.site import (
    BIAS_CORRECTION,
    CALIBRATED_FOR,
    CALIBRATED_POTENTIAL,
    CALIBRATED_STEPS,
    INITIAL_POTENTIAL,
    OPERATIONS,
    STATISTICS,
    IFActivation,
)
from offsetjax.stats import OffsetStatistics, masked_total

__all__ = ["SimulationWithStatistics", "calibrate_network", "running_mean", "simulate", "simulate_with_statistics"]


@renamed_argument("model", "snn", since="0.2")
def simulate(
    snn: nn.Module, variables: Any, images: Float[ArrayLike, "..."], *, frames: bool = False
) -> Float[Array, "T B C"]:
    """Run a spiking network and return its time-averaged accumulated logits.

    Args:
      snn: a network whose activation is :class:`IFActivation` (``offsetjax.spiking_model``).
      variables: SNN variables (``offsetjax.convert_variables``).
      images: a batch of inputs ``[B, ...]`` (e.g. ``[B, H, W, C]``), presented at every step;
        with ``frames=True``, inputs that change every step, one frame per step,
        ``[steps, B, ...]`` (``steps`` = T, or tau + T with SRP): a video or an event stream.

    Returns:
      ``logits[t-1] = (1/t) * sum_{s<=t} out(s)``, ``[T, B, classes]``: the prediction after t
      steps is ``argmax(logits[t-1])``, and at t = T with T = L it equals the ANN's logits.

    Raises:
      ValueError: before anything is compiled, naming the argument, leaf or site: images not a
        non-empty, floating, finite batch of the network's size; variables not this network's
        (:func:`check_network`: every leaf by name, shape and dtype, finite; a v(0) per sample
        for another batch size; a calibration made for another T).

    Images must be floating: integer images (raw pixels) are refused, since their scale is the
    user's to set. Half-precision images (float16, bfloat16) are cast up to the network's
    compute dtype: its ``dtype`` field when set (e.g. ``VGG(dtype=jnp.bfloat16)``), else its
    parameters' (float32 normally); the images never choose the network's precision. Under a
    caller's ``jit`` the variables' values are not checked (:func:`check_network`).
    """
    images = checked_inputs(snn, variables, images, frames=frames)
    logits, _, _ = images_must_fit(lambda: _apply(snn, variables, images, None, frames=frames), images)
    return logits


def checked_inputs(snn: nn.Module, variables: Any, images, *, frames: bool) -> Array:
    """``images`` ``[B, ...]`` (or with ``frames``, ``[steps, B, ...]``) and ``variables``
    checked for ``snn`` as :func:`simulate` checks them, half precision widened."""
    if frames:
        images = check_frames(snn, images)
        check_network(snn, variables, images[0])
        return widen_half(images, input_dtype(snn, variables))
    return check_call(snn, variables, images)


def check_frames(model: nn.Module, frames) -> Array:
    """``frames`` checked: a sequence ``[steps, B, ...]`` of batches, one per step the network runs."""
    frames = jnp.asarray(frames)
    plan = schedule(model)
    steps = plan.input_steps
    if frames.ndim < 3 or frames.shape[0] != steps or frames.shape[1] < 1:
        raise ValueError(
            f"frames must be one batch per step, [steps, B, ...] with steps = {steps} for this network "
            f"(num_steps={plan.num_steps}, srp_steps={plan.srp_steps}) and B >= 1, got shape "
            f"{frames.shape}"
        )
    return check_image_batch(frames, axis="steps")


@renamed_argument("model", "snn", since="0.2")
def simulate_with_statistics(
    snn: nn.Module,
    variables: Any,
    images: Float[ArrayLike, "B ..."],
    *,
    sample_mask: Bool[ArrayLike, " B"] | None = None,
    frames: bool = False,
) -> SimulationWithStatistics:
    """:func:`simulate`, also returning each site's :class:`OffsetStatistics`, keyed by the
    site's module path (``"block1/act"``) in network order.

    Returns:
      :class:`SimulationWithStatistics` ``(logits, statistics)`` (a named tuple: it unpacks as
      the pair it was before offsetjax 0.2).

    Args:
      snn, variables, images, frames: as :func:`simulate`.
      sample_mask: optional boolean ``[B]``: the statistics count only the samples where it is
        true (for a batch padded to a fixed size). Default: every sample.
    """
    images = checked_inputs(snn, variables, images, frames=frames)
    batch = images.shape[1:2] if frames else images.shape[:1]
    if sample_mask is None:
        sample_mask = jnp.ones(batch, bool)
    if tuple(sample_mask.shape) != batch:
        raise ValueError(f"sample_mask must have shape {batch} (one per image), got {sample_mask.shape}")
    logits, stats, _ = simulate_collecting(snn, variables, images, sample_mask, operations=False, frames=frames)
    return SimulationWithStatistics(logits, stats)


class SimulationWithStatistics(NamedTuple):
    """What :func:`simulate_with_statistics` returns."""

    #: ``[T, B, classes]``, as :func:`simulate`.
    logits: Float[Array, "T B C"]
    #: Each site's :class:`OffsetStatistics` (summed over the masked samples), keyed by its
    #: module path in network order.
    statistics: dict[str, OffsetStatistics]


def simulate_collecting(
    model: nn.Module, variables: Any, images: Array, sample_mask, operations: bool, *, frames: bool = False
):
    """``(logits, statistics per site or None, operations per site or None)`` from one run:
    statistics when ``sample_mask`` is given, each site's sown :data:`OPERATIONS` when asked.
    ``images`` as :func:`checked_inputs` returned them (the caller checks, once)."""
    run = functools.partial(_apply, model, variables, images, sample_mask, operations, frames=frames)
    logits, stats, ops = images_must_fit(run, images)
    order = site_order(model, images.shape[2:] if frames else images.shape[1:])
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


@renamed_argument("model", "snn", since="0.2")
def calibrate_network(
    snn: nn.Module, variables: Any, images: Float[ArrayLike, "B ..."], *, frames: bool = False
) -> dict:
    """The calibrated initial potentials of every site, per sample: a pytree like
    ``variables["initial_potential"]`` whose leaves are ``[B, ...]``.

    Calibration is a function from one initial-potential pytree to another: simulating the
    uncalibrated network (``iterations=0``) from this pytree reproduces the calibrated run. The
    result is per sample, so it serves these images only: merged into variables, it is refused
    with images of another batch size (and by :func:`offsetjax.evaluate_snn`, which runs one
    v(0) over a whole split). Arguments (``frames`` included) and checks as :func:`simulate`.
    """
    images = checked_inputs(snn, variables, images, frames=frames)
    sown = images_must_fit(lambda: _calibrated_potentials(snn, variables, images if frames else images[None]), images)
    return jax.tree.map(lambda leaf: leaf[0], sown, is_leaf=lambda x: isinstance(x, tuple))


@functools.partial(jax.jit, static_argnums=0)
def _calibrated_potentials(model: nn.Module, variables: Any, entered: Array):
    """The sown calibrated v(0) of ``entered``, ``[1 or steps, B, ...]``."""
    out, sown = model.apply(variables, entered, mutable=[CALIBRATED_POTENTIAL])
    if out.ndim != 3:  # static: raised once, while tracing
        raise ValueError(f"images of shape {entered.shape[1:]} are not one batch [B, H, W, C] for this network")
    return sown[CALIBRATED_POTENTIAL]


def check_images(images) -> Array:
    """``images`` as an array, checked: a batch ``[B, ...]`` with B >= 1, floating, finite."""
    return check_image_batch(jnp.asarray(images))


def check_call(
    model: nn.Module, variables: Any, images, *, per_sample_refused: str | None = None, name: str = "variables"
) -> Array:
    """What :func:`simulate` and friends check once per call, before compiling: the images
    (:func:`check_images`), the network with its variables (:func:`check_network`); returns the
    images, half precision cast up to the network's compute dtype (:func:`input_dtype`)."""
    images = check_images(images)
    check_network(model, variables, images, per_sample_refused=per_sample_refused, name=name)
    return widen_half(images, input_dtype(model, variables))


def input_dtype(model: nn.Module, variables: Any):
    """The dtype half-precision images are cast up to: the network's compute dtype, its
    ``dtype`` field when set, else its parameters' (float32 normally); never the images'."""
    return compute_dtype(model, variables["params"])


#: The shapes a site's v(0) may take (the error message of :func:`check_site_leaves`).
_SITE_V0 = (
    "a site's v(0) is one value per site (a scalar), per channel (as a per-channel threshold's theta/2), "
    "per neuron {neuron} or per sample [B, *{neuron}]"
)


def check_network(
    model: nn.Module,
    variables: Any,
    images,
    *,
    per_sample_refused: str | None = None,
    name: str = "variables",
    images_name: str = "images",
) -> None:
    """Check a network and its variables, as a whole, before anything runs; a failure names the
    leaf (``variables['params']['conv0']['Conv_0']['kernel']``) or the site. Compiles nothing.

    * the model has IF sites for ``images`` (only their shape is read: ``[B, ...]``), each
      created with a name, and gives logits ``[T, B, classes]``;
    * ``params`` and ``batch_stats`` hold exactly this network's leaves, by name and shape;
    * ``initial_potential`` holds a ``v0`` per site: a scalar, per neuron (the site's neuron
      shape) or per sample ``[B, *neuron shape]`` with B the images' batch (refused, with
      ``per_sample_refused`` as the reason, where a v(0) must serve any batch);
      ``bias_correction`` (optional) a ``b`` per site that broadcasts to its neurons;
    * a calibration record (:data:`~offsetjax.site.CALIBRATED_STEPS` beside a site's value, or
      the old ``calibrated_for`` collection) names this network's T;
    * every leaf of ``params``, ``batch_stats``, ``initial_potential`` and ``bias_correction``
      is floating and finite; every threshold > 0.

    Inside a caller's ``jit`` (or ``vmap``, ``grad``) the variables are tracers: their names,
    shapes and dtypes are still checked while tracing, but their values (finite, > 0, the
    recorded T) cannot be read, and those checks are skipped: check concrete variables once
    (e.g. call :func:`simulate` on one batch) before jitting over them.
    """
    shape = tuple(images.shape)
    traced = check_model(model, images, images_name)
    check_snn_variables(variables, name)
    what = f"this {type(model).__name__} on images of shape {shape}"
    neurons = {path.rpartition("/")[0]: leaf for path, leaf in traced.variables[INITIAL_POTENTIAL].items()}
    expected = {**traced.variables, "params": thresholds_as_given(traced.variables["params"], variables, neurons, name)}
    check_variables_fit(variables, expected, ("params", "batch_stats"), what, name)
    check_site_leaves(variables, neurons, shape[0], per_sample_refused, name, what)
    check_calibrated_steps(variables, schedule(model).num_steps, name)
    check_variable_values(variables, name)


def check_model(model: nn.Module, images, images_name: str = "images"):
    """The spiking network traced for ``images`` (their shape): it has named IF sites and gives
    logits ``[T, B, classes]``; returns :func:`trace_network`'s result. Compiles nothing."""
    shape = tuple(images.shape)
    traced = images_must_fit(lambda: trace_network(model, (1, 1, *shape[1:])), images)
    if not traced.sites:
        raise ValueError(
            f"model has no IFActivation site (a {type(model).__name__} with activation "
            f"{getattr(model, 'activation', None)!r}): build the spiking network with "
            "offsetjax.spiking_model(model, num_steps=...)"
        )
    check_site_names(model, traced.sites)
    if traced.output is not None and len(traced.output) != 3:
        if images_name == "image_shape":
            raise ValueError(
                f"image_shape {shape[1:]} gives logits of shape {traced.output} (for one time step), not "
                "[T, B, classes]: image_shape is one image's shape, (H, W, C), without the batch axis (the batch "
                "size is batch_size)"
            )
        raise ValueError(
            f"images of shape {shape} give logits of shape {traced.output} (for one time step), not "
            "[T, B, classes]: images must be one batch [B, H, W, C] (one axis more than the network takes?)"
        )
    return traced


def check_site_names(model: nn.Module, sites: tuple[str, ...]) -> None:
    """Refuse sites created without a name: flax names them after their class (``QCFS_0`` in the
    ANN, ``IFActivation_0`` in the SNN), so the converted variables would not find them."""
    pattern = re.compile(rf"{IFActivation.__name__}_\d+")
    unnamed = [site for site in sites if pattern.fullmatch(site.rpartition("/")[2])]
    if unnamed:
        raise ValueError(
            f"{type(model).__name__} creates activation sites without a name ({', '.join(unnamed)}): flax names "
            "an unnamed module after its class, so the ANN's site (e.g. QCFS_0) and the SNN's (IFActivation_0) "
            "differ and the SNN finds no threshold; create every site with a name, self.activation(name='act1')(x)"
        )


def check_site_leaves(
    variables: Any, neurons: dict, batch: int, per_sample_refused: str | None, name: str, what: str
) -> None:
    """Each site's entry of ``initial_potential`` (``v0``, required) and ``bias_correction``
    (``b``, optional) and their calibration records, by name and shape (``neurons``: each
    site's neuron shape, ``{"a/b": shape}``; ``batch``: the images')."""
    for collection, key, required in ((INITIAL_POTENTIAL, "v0", True), (BIAS_CORRECTION, "b", False)):
        if collection not in variables:
            continue
        tree = variables[collection]
        if not hasattr(tree, "items"):
            raise ValueError(f"{name}[{collection!r}] must be a mapping of arrays, got {type(tree).__name__}")
        flat = {"/".join(path): leaf for path, leaf in traverse_util.flatten_dict(dict(tree)).items()}
        values = {path.rpartition("/")[0] for path in flat if path.rpartition("/")[2] == key}
        expected = {f"{site}/{key}" for site in (neurons if required else values & set(neurons))}
        records = {f"{site}/{CALIBRATED_STEPS}" for site in values & set(neurons)}
        missing = sorted(expected - set(flat))
        extra = sorted(set(flat) - expected - records)
        if missing or extra:
            listed = lambda items: ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")  # noqa: E731
            parts = [
                f"{label} {listed(items)}" for label, items in (("missing", missing), ("unexpected", extra)) if items
            ]
            raise ValueError(
                f"{name}[{collection!r}] do not fit {what}: " + "; ".join(parts) + f" (each of its sites "
                f"{listed(sorted(neurons))} holds {key!r}, and beside it the {CALIBRATED_STEPS!r} a calibration "
                "recorded; variables of another network?)"
            )
        for path, leaf in flat.items():
            site, _, leaf_key = path.rpartition("/")
            label, shape, neuron = leaf_label(name, collection, path), tuple(np.shape(leaf)), tuple(neurons[site])
            if leaf_key == CALIBRATED_STEPS:
                if shape != () or not jnp.issubdtype(jnp.result_type(leaf), jnp.integer):
                    raise ValueError(
                        f"{label} records the num_steps the site's {key} was calibrated for: an integer scalar, "
                        f"got {jnp.result_type(leaf)} of shape {shape}"
                    )
            elif collection == BIAS_CORRECTION:
                if len(shape) > len(neuron) or not _broadcasts(shape, neuron):
                    raise ValueError(
                        f"{label} has shape {shape}: a site's bias current broadcasts to its neurons {neuron} "
                        f"(data_bias writes one per channel, {neuron[-1:]})"
                    )
            elif shape not in ((), neuron, neuron[-1:]):
                if len(shape) != len(neuron) + 1 or shape[1:] != neuron:
                    raise ValueError(
                        f"{label} has shape {shape}: "
                        + _SITE_V0.format(neuron=", ".join(map(str, neuron)))
                        + f" = {(batch, *neuron)} for these images"
                    )
                if per_sample_refused is not None:
                    raise ValueError(
                        f"{label} is per sample, shape {shape} = [B, *{neuron}] with B = {shape[0]} (a "
                        f"calibrate_network result for one batch of images), but {per_sample_refused}: "
                        "give one v(0) per site or per neuron"
                    )
                if shape[0] != batch:
                    raise ValueError(
                        f"{label} is per sample, for a batch of {shape[0]} images (shape {shape}), but the images "
                        f"hold {batch}: site {site}'s per-sample v(0) (calibrate_network's, for one batch) serves "
                        "only the batch it was computed for; a v(0) for every batch is one per neuron"
                    )


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def check_calibrated_steps(variables: Any, runs: int, name: str = "variables") -> None:
    """Every calibration record in ``variables`` (a site's :data:`CALIBRATED_STEPS`, or the old
    ``calibrated_for`` collection) names ``runs``, the T of the network they run in."""
    fix = (
        f"calibrate with the network you run, data_potential/data_bias(spiking_model(model, num_steps={runs}), ...), "
        "or, to run the calibration at another T on purpose, drop its records with "
        "offsetjax.data_calibration.without_calibration_record(variables)"
    )
    recorded = variables.get(CALIBRATED_FOR)
    steps = None if recorded is None else concrete_value(recorded["num_steps"])
    if steps is not None and int(steps) != runs:
        raise ValueError(
            f"variables were calibrated for num_steps={int(steps)} (offsetjax.data_potential / data_bias), "
            f"but this network runs num_steps={runs}: {fix}"
        )
    for collection, method in (
        (INITIAL_POTENTIAL, "offsetjax.data_potential"),
        (BIAS_CORRECTION, "offsetjax.data_bias"),
    ):
        for path, leaf in traverse_util.flatten_dict(dict(variables.get(collection) or {})).items():
            if path[-1] != CALIBRATED_STEPS or (steps := concrete_value(leaf)) is None:
                continue
            if int(steps) != runs:
                raise ValueError(
                    f"{leaf_label(name, collection, path[:-1])} was calibrated for num_steps={int(steps)} "
                    f"({method}), but this network runs num_steps={runs}: {fix}"
                )


def calibrated_steps(variables: Any) -> int | None:
    """The T that ``variables`` were calibrated for by :func:`offsetjax.data_potential` or
    :func:`offsetjax.data_bias` (a site's :data:`CALIBRATED_STEPS` record, or the old
    ``calibrated_for`` collection), or ``None``: converted or COS variables serve any T (and
    inside a caller's ``jit`` the recorded T cannot be read)."""
    recorded = variables.get(CALIBRATED_FOR)
    leaves = [] if recorded is None else [recorded["num_steps"]]
    for collection in (INITIAL_POTENTIAL, BIAS_CORRECTION):
        flat = traverse_util.flatten_dict(dict(variables.get(collection) or {}))
        leaves += [leaf for path, leaf in flat.items() if path[-1] == CALIBRATED_STEPS]
    steps = [concrete_value(leaf) for leaf in leaves]
    return next((int(step) for step in steps if step is not None), None)


def check_variables_fit(
    variables: Any, expected: dict, collections: tuple[str, ...], what: str, name: str = "variables"
) -> None:
    """Every collection of ``collections`` the network has (``expected``, from
    ``trace_network``) is in ``variables`` with exactly the network's leaves and shapes;
    ``what`` names the network and input in the error, ``name`` the argument."""
    for collection in collections:
        if collection not in expected:
            continue
        if collection not in variables:
            raise ValueError(
                f"{name} hold no {collection!r} collection (collections {sorted(variables)}), which {what} needs"
            )
        check_same_tree(f"{name}[{collection!r}]", variables[collection], expected[collection], what)


def check_snn_variables(variables: Any, name: str = "variables") -> None:
    """Check that ``variables`` are SNN variables: a mapping with ``params`` and the
    ``initial_potential`` collection :func:`offsetjax.convert_variables` adds."""
    if not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError(f"{name} must be a mapping with 'params' (from offsetjax.convert_variables)")
    if INITIAL_POTENTIAL not in variables:
        raise ValueError(
            f"{name} hold no {INITIAL_POTENTIAL!r} collection (collections {sorted(variables)}): these "
            "look like ANN variables; convert them with offsetjax.convert_variables(snn_model, ann_variables)"
        )


def check_ann_variables(model: nn.Module, variables: Any, images, *, name: str = "variables") -> None:
    """The ANN's variables checked against ``model`` (the ANN) for ``images`` (their shape): a
    mapping with ``params``, every leaf of ``params`` and ``batch_stats`` by name and shape,
    floating and (where concrete) finite, named by its path. Compiles nothing."""
    if not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError(f"{name} must be a mapping with 'params' (the trained ANN's variables)")
    traced = images_must_fit(lambda: trace_network(model, (1, *tuple(images.shape)[1:])), images)
    what = f"this {type(model).__name__} on images of shape {tuple(images.shape)}"
    expected = {
        **traced.variables,
        "params": thresholds_as_given(traced.variables.get("params", {}), variables, None, name),
    }
    check_variables_fit(variables, expected, ("params", "batch_stats"), what, name)
    check_variable_values(variables, name, ("params", "batch_stats"))


#: The collections whose every leaf is checked floating and finite (calibration records aside).
CHECKED_COLLECTIONS = ("params", "batch_stats", INITIAL_POTENTIAL, BIAS_CORRECTION)


def check_variable_values(variables: Any, name: str = "variables", collections=CHECKED_COLLECTIONS) -> None:
    """Every leaf of ``collections`` has a floating dtype and, where its values can be read (not
    a tracer), is finite; thresholds are > 0. Read on the host, once per call: no program is
    compiled. The error names up to four leaves, each by its path."""
    bad = []
    for collection in collections:
        if collection not in variables:
            continue
        for path, leaf in traverse_util.flatten_dict(dict(variables[collection])).items():
            if collection in (INITIAL_POTENTIAL, BIAS_CORRECTION) and path[-1] == CALIBRATED_STEPS:
                continue  # (checked by check_site_leaves)
            label = leaf_label(name, collection, path)
            dtype = jnp.result_type(leaf)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"{label} must have a floating dtype, got {dtype} (variables of an integer dtype?)")
            site = "/".join(path[:-1])
            if collection == "params" and path[-1] == "threshold":
                value = concrete_value(leaf)
                problem = nonfinite(leaf) or (
                    f"a value <= 0 (min {np.min(value)})" if value is not None and np.any(value <= 0) else None
                )
                if problem:
                    bad.append(f"{label} holds {problem}: threshold of site {site} must be finite and > 0")
            elif problem := nonfinite(leaf):
                hint = (
                    f": initial potential v0 of site {site} must be finite" if collection == INITIAL_POTENTIAL else ""
                )
                bad.append(f"{label} holds {problem}{hint}")
    if bad:
        more = f"; and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise ValueError(f"{name} are invalid: " + "; ".join(bad[:4]) + more)


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
    counting = nn.intercept_methods(count_input_events) if operations else contextlib.nullcontext()
    with tracing_view(), counting:  # the network as defined, whatever context the caller is in
        out, collections = (
            model.apply(variables, entered, mutable=mutable) if mutable else (model.apply(variables, entered), {})
        )
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
    srp_steps = schedule(model).srp_steps
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
    return running_mean(out), stats, ops


def running_mean(outputs: Float[ArrayLike, "T ..."]) -> Float[ArrayLike, "T ..."]:
    """The readout of every spiking network here: at each step t, the mean of the outputs of
    steps 1..t (a NumPy array in, a NumPy array out, in its dtype)."""
    xp = np if isinstance(outputs, np.ndarray) else jnp
    steps = xp.arange(1, outputs.shape[0] + 1, dtype=outputs.dtype).reshape((-1,) + (1,) * (outputs.ndim - 1))
    return xp.cumsum(outputs, axis=0) / steps


# The named tuples' generated constructors name a module of their own; point them at this one,
# so that tools reading their signatures (pdoc, inspect.getmodule) resolve the annotations here.
SimulationWithStatistics.__new__.__module__ = __name__
