"""ANN -> SNN: swap each QCFS site for an IF site, and build the SNN variables.

The network definition is shared; only its ``activation`` changes. The params tree is shared
too (theta = lambda, both ``params[...]['threshold']``); batch norm stays in eval mode; the
new collection ``initial_potential`` holds v(0) = theta/2 per neuron of every site.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jaxtyping import ArrayLike

from offsetjax._checks import (
    check_float,
    check_positive,
    check_same_tree,
    is_abstract,
    leaf_label,
    nonfinite,
    thresholds_as_given,
)
from offsetjax._deprecation import renamed_argument
from offsetjax._trace import trace_network
from offsetjax.activation import at_least_float32
from offsetjax.models.layers import Activation
from offsetjax.schedule import Schedule
from offsetjax.site import INITIAL_POTENTIAL, IFActivation

__all__ = ["SpikingSites", "ann_model", "convert_variables", "schedule", "spiking_model"]


def spiking_model(model: nn.Module, *, schedule: Schedule | None = None, **options: Any) -> nn.Module:
    """The same network with every activation site an :class:`IFActivation` running ``schedule``.

    Args:
      model: a Flax network with an ``activation`` field (every model in ``offsetjax.models``).
      schedule: the :class:`offsetjax.Schedule` the SNN carries; or give its fields as keywords
        instead, ``spiking_model(model, num_steps=4, presim_steps=2, iterations=1)`` (T, rho, k,
        ``eps``, ``saturated``, ``srp_steps``, ``unroll``; defaults and meaning in
        :class:`offsetjax.Schedule`).

    Raises:
      ValueError: both or neither of ``schedule`` and its fields given, an unknown field, a field
        out of its domain (:class:`offsetjax.Schedule` names it), or a ``model`` without an
        ``activation`` field.
    """
    if schedule is None:
        schedule = Schedule.from_options(options, name="spiking_model's keywords")
    elif options:
        raise ValueError(
            f"spiking_model takes schedule= or the schedule's fields as keywords, not both: got schedule and "
            f"{', '.join(sorted(options))}; use schedule.replace({', '.join(f'{k}=...' for k in sorted(options))})"
        )
    elif not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be an offsetjax.Schedule, got {type(schedule).__name__}")
    if not hasattr(model, "activation"):
        raise ValueError(f"model must have an `activation` field to swap, got {type(model).__name__}")
    return model.clone(activation=SpikingSites(model.activation, schedule))


@dataclasses.dataclass(frozen=True, init=False)
class SpikingSites(Activation):
    """The IF sites of a network from :func:`spiking_model`: an :class:`Activation` of
    :class:`IFActivation` with the SNN's :class:`Schedule` as its one option, remembering
    ``ann``, the activation factory of the ANN it was converted from (:func:`ann_model`)."""

    ann: Any

    def __init__(self, ann: Any, schedule: Schedule):
        super().__init__(IFActivation, schedule=schedule)
        object.__setattr__(self, "ann", ann)


def _check_named_sites(snn: nn.Module, params: dict) -> None:
    """Refuse ANN params whose activation sites flax named after their class (``QCFS_0``): the
    SNN's sites would be named ``IFActivation_0``, and find no threshold."""
    ann = getattr(getattr(snn, "activation", None), "ann", None)
    module = getattr(ann, "module", None)
    if module is None:
        return
    pattern = re.compile(rf"{re.escape(module.__name__)}_\d+")
    unnamed = sorted(
        {"/".join(path[:-1]) for path in params if path[-1] == "threshold" and pattern.fullmatch(path[-2])}
    )
    if unnamed:
        raise ValueError(
            f"the network creates activation sites without a name ({', '.join(unnamed)}): flax names an unnamed "
            f"module after its class, so the ANN's {unnamed[0]} becomes another site in the SNN "
            "(IFActivation_0) and its threshold is lost; create every site with a name, "
            "self.activation(name='act1')(x)"
        )


def schedule(snn: nn.Module) -> Schedule:
    """The :class:`Schedule` ``snn`` carries (T, rho, k, eps, saturation rule, SRP's tau,
    unroll), as given to :func:`spiking_model`.

    Raises:
      ValueError: ``snn`` is not a network with IF sites (e.g. the ANN).
    """
    activation = getattr(snn, "activation", None)
    if not (isinstance(activation, Activation) and issubclass(activation.module, IFActivation)):
        raise ValueError(
            f"snn must be the spiking network from offsetjax.spiking_model(model, num_steps=...), got a "
            f"{type(snn).__name__} with activation {activation!r}"
        )
    return dict(activation.options)["schedule"]


def ann_model(snn: nn.Module) -> nn.Module:
    """The ANN ``snn`` was converted from by :func:`spiking_model`: the same network with its
    original activation sites (e.g. QCFS with its L)."""
    schedule(snn)
    if not isinstance(snn.activation, SpikingSites):
        raise ValueError("snn was not built by offsetjax.spiking_model, so the ANN it converts is unknown")
    return snn.clone(activation=snn.activation.ann)


@renamed_argument("snn_model", "snn", since="0.2")
def convert_variables(snn: nn.Module, ann_variables: Any, *, example_images: ArrayLike | None = None) -> dict:
    """SNN variables from trained ANN variables.

    Args:
      snn: the network from :func:`spiking_model`.
      ann_variables: ``{"params": ..., "batch_stats": ...}`` of the trained QCFS ANN.
      example_images: optional input batch ``[B, ...]`` (only its shape is used); when given,
        the ANN's params are checked against the network built for that input, so a mismatch
        raises here instead of at the first simulation.

    Returns:
      ``{"params", "batch_stats" (if any), "initial_potential"}``: the ANN's params and batch
      statistics unchanged, and per site the scalar v(0) = theta/2, which the site broadcasts
      over its neurons (a per-neuron array of the neuron shape works too).

    Raises:
      ValueError: when the ANN's params do not match the network's (checked with
        ``example_images``), a leaf of ``params`` or ``batch_stats`` is not floating and finite
        (named by its path), a threshold is not a finite scalar > 0, or the network's activation
        sites were created without a name.
    """
    activation = getattr(snn, "activation", None)
    if isinstance(activation, Activation) and not issubclass(activation.module, IFActivation):
        raise ValueError(
            f"snn has {activation!r} sites, not IFActivation: pass the spiking network, "
            "offsetjax.spiking_model(model, num_steps=...), not the ANN"
        )
    ann_variables = dict(ann_variables)
    if "params" not in ann_variables:
        raise ValueError(f"ann_variables must hold 'params', got collections {sorted(ann_variables)}")
    params = traverse_util.flatten_dict(ann_variables["params"])
    _check_named_sites(snn, params)
    if example_images is not None:
        expected = trace_network(snn, (1, *np.shape(example_images)))  # [T = 1, B, ...]
        what = f"this {type(snn).__name__} on images of shape {tuple(np.shape(example_images))}"
        for collection in ("params", "batch_stats"):
            if collection in expected.variables or collection in ann_variables:
                wanted = expected.variables.get(collection, {})
                if collection == "params":
                    neurons = {path.rpartition("/")[0]: v for path, v in expected.variables[INITIAL_POTENTIAL].items()}
                    wanted = thresholds_as_given(wanted, ann_variables, neurons, "ann_variables")
                check_same_tree(f"ann_variables[{collection!r}]", ann_variables.get(collection, {}), wanted, what)
    potentials = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(dict(ann_variables.get(collection) or {})).items():
            label = leaf_label("ann_variables", collection, path)
            check_float(label, jnp.asarray(leaf) if not hasattr(leaf, "dtype") else leaf)
            # Checked on the host: a device reduction would compile a program per parameter shape.
            if problem := nonfinite(leaf):
                raise ValueError(
                    f"ann_variables[{collection!r}] at {'/'.join(path)} must be finite: {label} holds {problem}"
                )
    for path, leaf in params.items():
        if path[-1] == "threshold":
            check_positive("threshold at " + "/".join(path[:-1]), leaf)
            theta = jnp.asarray(leaf)
            dtype = at_least_float32(theta.dtype)
            potentials[(*path[:-1], "v0")] = (
                jnp.asarray(np.float32(0.5) * np.asarray(leaf, dtype))  # exact: a halving
                if not is_abstract(leaf)
                else (0.5 * theta).astype(dtype)
            )
    if not potentials:
        raise ValueError("ann_variables['params'] holds no activation site (no 'threshold' parameter)")
    variables = {key: value for key, value in ann_variables.items() if key in ("params", "batch_stats")}
    variables[INITIAL_POTENTIAL] = traverse_util.unflatten_dict(potentials)
    return variables
