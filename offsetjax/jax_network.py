"""Any trained JAX ReLU network as an offsetjax network: convert what you already have.

:func:`from_jax` takes a network as a function, ``apply_fn(params, images) -> logits`` (a Flax
linen ``model.apply`` with its variables, a Flax NNX or Equinox model split into a function and
its arrays, or a plain function), and returns ``(model, variables)``: a :class:`JaxprNetwork`,
the same computation read from its jaxpr, with every ReLU an activation site owning a threshold
lambda; and its variables, the network's arrays and each site's lambda. It is an ANN like the
networks of ``offsetjax.models``: ``spiking_model(model, num_steps=T)`` converts it, and
``simulate``, ``evaluate_snn``, COS, ``data_potential`` / ``data_bias``, SRP,
``run_step_by_step``, ``to_nir`` and ``count_operations`` take it unchanged.

Every ReLU however written becomes a site: ``jax.nn.relu`` and ``flax.linen.relu``,
``jnp.maximum(x, 0)``, and ``jnp.clip(x, 0, c)`` (a clip at c: its lambda is c). The rest of
the network runs as JAX traced it, at every step of the SNN (batch norm in inference mode is
arithmetic on constants, convolutions and dense layers, average pooling, reshapes, residual
additions, concatenation, upsampling by repetition). An operation an IF network cannot compute
on spikes is refused by name before anything compiles, with the line of your code it comes from
and what to write instead: max pooling, ``exp`` (softmax inside the network), GELU / ``tanh`` /
``sigmoid``, a product of two activations.

Thresholds (``threshold=``): ``"max"``, the largest ReLU output over the calibration images
(SpikingJelly's ``"max"``); ``"99.9%"`` (any percentile), the percentile of all ReLU outputs
(SpikingJelly's ``"99.9%"``; Li et al. use 99.9 % and 99.99 %); a number, one lambda for every
site; or a dict site name -> lambda (no images needed), a number or a vector ``[C]``.
``per_channel=True`` measures ``"max"`` or the percentile per channel, one lambda for each channel
of a site's last axis (channel-wise threshold balancing). ``docs/usage.md`` shows it end to end.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from offsetjax import _jax_internals as internals
from offsetjax._checks import check_image_batch
from offsetjax._linear_layers import INPUT_EVENTS, MACS, sow_input_events
from offsetjax._trace import tracing_view
from offsetjax.activation import QCFS, ANNSite
from offsetjax.models.layers import Activation

__all__ = ["JaxprNetwork", "SiteSpec", "from_jax"]


@dataclasses.dataclass(frozen=True)
class SiteSpec:
    """One ReLU of the network: its site ``name`` (``relu0``, ``relu1``, ... in the order the
    network computes them), ``ceiling`` (the c of a ``jnp.clip(x, 0, c)``; ``None`` for a ReLU)
    and ``where`` (the line of the user's code JAX recorded); ``levels``: L of an offsetjax
    :class:`offsetjax.QCFS` site (named ``qcfs0``, ...), which keeps its lambda."""

    name: str
    ceiling: float | None
    where: str
    levels: int | None = None


#: Primitives that move or combine values linearly: what may run on spikes between sites.
#: (``mul``, ``div``, ``dot_general`` and ``conv_general_dilated`` with one operand a constant.)
_LINEAR = {
    "add",
    "add_any",
    "sub",
    "neg",
    "reshape",
    "broadcast_in_dim",
    "transpose",
    "squeeze",
    "expand_dims",
    "concatenate",
    "slice",
    "pad",
    "reduce_sum",
    "reduce_window_sum",
    "convert_element_type",
    "copy",
    "copy_p",
    "rev",
    "dynamic_slice",
    "gather",
    "select_n",
}
#: Linear in one operand when the other is a constant.
_SCALING = {"mul", "dot_general", "conv_general_dilated"}
#: Call-like primitives whose body is inlined (sites inside them are found).
_CALLS = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
    "remat2": "jaxpr",
}
#: What to write instead of a primitive that cannot run on spikes.
_ADVICE = {
    "reduce_window_max": "max pooling: an IF neuron cannot take a maximum of spike trains; use average pooling "
    "(flax.linen.avg_pool), then train again",
    "reduce_max": "a maximum over an axis: use a mean or a sum",
    "max": "a maximum of two activations: only max(x, 0) (a ReLU) converts",
    "min": "a minimum of two activations: only min(relu(x), c) (a clip) converts",
    "exp": "exp (softmax inside the network?): return the logits, apply softmax outside",
    "log": "log (log-softmax inside the network?): return the logits",
    "logistic": "a sigmoid: IF neurons rate ReLUs; use jax.nn.relu",
    "tanh": "tanh (GELU's approximation?): IF neurons rate ReLUs; use jax.nn.relu",
    "erf": "erf (GELU?): IF neurons rate ReLUs; use jax.nn.relu",
    "mul": "a product of two activations (gating, attention): an IF network only adds weighted spikes",
    "div": "a division by an activation (normalisation by data, softmax): divide by constants only",
    "dot_general": "a product of two activations (attention?): one operand must be a weight",
    "conv_general_dilated": "a convolution of two activations: the kernel must be a weight",
    "scan": "a loop (lax.scan) over activations: unroll it or keep its sites outside",
    "while": "a loop (lax.while_loop) over activations",
    "cond": "a branch on data (lax.cond)",
}


#: An offsetjax QCFS site, marked while the user's function is traced (its lambda is kept).
_qcfs_p = internals.Primitive("offsetjax_qcfs_site")
_qcfs_p.def_abstract_eval(lambda z, **_: internals.ShapedArray(z.shape, z.dtype))


def _mark_qcfs(next_fun, args, kwargs, context):
    if isinstance(context.module, QCFS) and context.method_name == "__call__":
        context.module.get_variable("params", "threshold")  # (the site keeps it: see _qcfs_thresholds)
        return _qcfs_p.bind(args[0], levels=context.module.levels)
    return next_fun(*args, **kwargs)


def _qcfs_thresholds(function, arrays, image_shape) -> list[float]:
    """The lambdas of the offsetjax QCFS sites ``function`` calls, in call order."""
    found = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, QCFS) and context.method_name == "__call__":
            found.append(float(np.asarray(context.module.get_variable("params", "threshold"))))
        return next_fun(*args, **kwargs)

    with internals.without_flax_interceptors(), tracing_view(), nn.intercept_methods(record):
        function(arrays, jnp.zeros((1, *image_shape), jnp.float32))
    return found


class _Program:
    """A user's function and its parameters' structure, traced per input shape (cached):
    the jaxpr, its sites, and the equations a site absorbs (a clip's ``min``)."""

    def __init__(self, apply_fn: Callable, treedef, leaf_names: tuple[str, ...], leaf_shapes: tuple, image_shape):
        self.apply_fn, self.treedef, self.image_shape = apply_fn, treedef, tuple(image_shape)
        self.leaf_names, self.leaf_shapes = leaf_names, leaf_shapes  # [(shape, dtype)] per name

    def sites(self, leaves: list) -> list[SiteSpec]:
        """The network's sites, in the order it computes them."""
        _, sites, _ = self.traced(_shapes(leaves), (1, *self.image_shape), jnp.float32)
        return [spec for spec, _ in sites.values()]

    @functools.lru_cache(maxsize=32)  # noqa: B019  (the program lives as long as its network)
    def traced(self, leaf_shapes: tuple, image_shape: tuple, dtype) -> tuple[Any, dict, dict]:
        leaves = [jax.ShapeDtypeStruct(shape, leaf_dtype) for shape, leaf_dtype in leaf_shapes]
        params = jax.tree.unflatten(self.treedef, leaves)
        # The user's function as written: no interceptor or model view of the caller's (counting
        # runs inside both) reaches it; offsetjax's own QCFS sites marked.
        with internals.without_flax_interceptors(), tracing_view(), nn.intercept_methods(_mark_qcfs):
            closed = jax.make_jaxpr(self.apply_fn)(params, jax.ShapeDtypeStruct(image_shape, dtype))
        # Keyed by the path of equations from the top (a nested jaxpr JAX shares between calls
        # appears once per call): site -> (spec, index of its data operand); a clip's min -> the
        # index of the site's output among its operands.
        sites: dict[tuple, tuple[SiteSpec, int]] = {}
        absorbed: dict[tuple, int] = {}
        num_leaves = len(leaves)
        infos = [_Info(None, False)] * num_leaves + [_Info(None, True)]
        _analyze(closed.jaxpr, [_Info(np.asarray(c), False) for c in closed.consts], infos, sites, absorbed)
        if len(closed.jaxpr.outvars) != 1:
            raise ValueError(
                f"apply_fn must return one array of logits [B, classes], got {len(closed.jaxpr.outvars)} outputs"
            )
        return closed, sites, absorbed


@dataclasses.dataclass(frozen=True)
class _Info:
    """What the analysis knows of a value: its value when computed from constants only, and
    whether it depends on the images."""

    static: np.ndarray | None
    data: bool
    site: str | None = None


def _analyze(jaxpr, consts: list, inputs: list, sites: dict, absorbed: dict, outer: str = "", prefix=()) -> list:
    env: dict[Any, _Info] = {}
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, inputs))
    uses: dict[Any, int] = {}
    for equation in jaxpr.eqns:
        for v in equation.invars:
            if isinstance(v, internals.Var):
                uses[v] = uses.get(v, 0) + 1
    for v in jaxpr.outvars:
        if isinstance(v, internals.Var):
            uses[v] = uses.get(v, 0) + 1

    def read(v) -> _Info:
        return _Info(np.asarray(v.val), False) if isinstance(v, internals.Literal) else env[v]

    for equation in jaxpr.eqns:
        name = equation.primitive.name
        ins = [read(v) for v in equation.invars]
        data = [info.data for info in ins]
        if name in _CALLS and _CALLS[name] in equation.params:
            body = equation.params[_CALLS[name]]
            inner, inner_consts = (body.jaxpr, body.consts) if hasattr(body, "consts") else (body, [])
            inner_consts = [_Info(np.asarray(c), False) for c in inner_consts]
            outs = _analyze(
                inner, inner_consts, ins, sites, absorbed, internals.where(equation) or outer, (*prefix, id(equation))
            )
        elif not any(data):
            static = None
            if all(info.static is not None for info in ins):
                with jax.ensure_compile_time_eval():  # constants, evaluated now even inside a caller's jit
                    values = equation.primitive.bind(*[info.static for info in ins], **internals.bind_params(equation))
                values = values if equation.primitive.multiple_results else [values]
                static = [np.asarray(value) for value in values]
            outs = [_Info(None if static is None else static[i], False) for i in range(len(equation.outvars))]
        elif equation.primitive is _qcfs_p and ins[0].data:
            site = f"qcfs{len(sites)}"
            spec = SiteSpec(site, None, internals.where(equation) or outer, equation.params["levels"])
            sites[(*prefix, id(equation))] = (spec, 0)
            outs = [_Info(None, True, site)]
        elif name == "max" and len(ins) == 2 and sum(data) == 1 and _is_zero(ins[data.index(False)]):
            site = f"relu{len(sites)}"
            sites[(*prefix, id(equation))] = (
                SiteSpec(site, None, internals.where(equation) or outer),
                data.index(True),
            )
            outs = [_Info(None, True, site)]
        elif (
            name == "min"
            and sum(data) == 1
            and ins[data.index(True)].site is not None
            and _positive_scalar(ins[data.index(False)]) is not None
            and uses.get(equation.invars[data.index(True)], 0) == 1
        ):
            relu = next(key for key, (spec, _) in sites.items() if spec.name == ins[data.index(True)].site)
            spec, operand = sites[relu]
            sites[relu] = (dataclasses.replace(spec, ceiling=_positive_scalar(ins[data.index(False)])), operand)
            absorbed[(*prefix, id(equation))] = data.index(True)
            outs = [_Info(None, True)]
        elif name in _LINEAR or (name in _SCALING and sum(data) == 1) or (name == "div" and data == [True, False]):
            if name == "select_n" and data[0]:
                _refuse(
                    equation,
                    outer,
                    "a choice between values made by data (jnp.where on activations): write jax.nn.relu",
                )
            outs = [_Info(None, True) for _ in equation.outvars]
        else:
            _refuse(equation, outer, _ADVICE.get(name, f"{name} cannot run on spikes"))
        env.update(zip(equation.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _is_zero(info: _Info) -> bool:
    return info.static is not None and info.static.size > 0 and bool(np.all(info.static == 0))


def _positive_scalar(info: _Info) -> float | None:
    if info.static is None or info.static.size == 0:
        return None
    values = np.unique(np.asarray(info.static, np.float64))
    return float(values[0]) if values.size == 1 and np.isfinite(values[0]) and values[0] > 0 else None


def _refuse(equation, outer: str, advice: str):
    raise ValueError(
        f"from_jax: the network computes {equation.primitive.name} on activations at "
        f"{internals.where(equation) or outer or 'an unknown line'}, "
        f"which a spiking network cannot: {advice}"
    )


class JaxprNetwork(nn.Module):
    """A JAX function run from its jaxpr with every ReLU an activation site ``activation(name=)``
    (:class:`ANNSite` in the ANN, :class:`offsetjax.IFActivation` once
    :func:`offsetjax.spiking_model` has swapped it in). Made by :func:`from_jax`.

    Takes images ``[B, ...]`` (the ANN: ``[B, classes]`` out) or time-major ``[T or 1, B, ...]``
    (the SNN: ``[T, B, classes]`` out): between sites, every operation runs at every step (JAX's
    ``vmap`` over the time axis), so the sites see time-major currents.

    Counting (:func:`offsetjax.count_operations`) reads it as it reads the networks of
    ``offsetjax.models``: every ``dot_general`` or ``conv_general_dilated`` with a weight operand
    is a linear layer (``layer0``, ``layer1``, ... in computing order), whose MACs and NeuroBench
    events it sows when those collections are mutable; ``connectivity=True`` computes the
    connectivity view (weights 1, additive constants dropped, scalings and pooling divisors 1).

    Attributes:
      program: the user's function and its parameters' structure (compared by identity).
      activation: the site factory.
      connectivity: compute the connectivity view instead of the network.
    """

    program: Any
    activation: Any = Activation(ANNSite)
    connectivity: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # the function is the trained network in inference mode
        program = self.program
        names = program.leaf_names
        leaves = self.param(
            "network", lambda key: {name: jnp.zeros(*spec) for name, spec in zip(names, program.leaf_shapes)}
        )
        leaves = [leaves[name] for name in names]
        time_major = x.ndim > len(program.image_shape) + 1
        batch = x.shape[1:] if time_major else x.shape
        closed, sites, absorbed = program.traced(_shapes(leaves), tuple(batch), x.dtype)
        ann_sites = issubclass(getattr(self.activation, "module", type(None)), ANNSite)
        layers = iter(range(1 << 30))
        counting = not self.is_initializing()  # (init makes every collection mutable)
        count_macs = counting and self.is_mutable_collection(MACS)
        count_events = counting and time_major and self.is_mutable_collection(INPUT_EVENTS)

        def site(spec: SiteSpec, value):
            options = {"ceiling": spec.ceiling, "levels": spec.levels} if ann_sites else {}
            return self.activation(name=spec.name, **options)(value)

        def linear(equation, ins: list, data: list[bool], bind: Callable) -> list | None:
            """A linear layer (counted, or seen as connectivity), a constant operation on data in
            the connectivity view; ``None``: compute the equation as it is."""
            name = equation.primitive.name
            if name in ("dot_general", "conv_general_dilated") and sum(data) == 1:
                index = next(layers)
                weights = [value if is_data else jnp.ones_like(value) for value, is_data in zip(ins, data)]
                if count_macs:  # each input that is there (padding is not) with each weight
                    ones = [
                        (value != 0).astype(jnp.float32) if is_data else weight.astype(jnp.float32)
                        for value, weight, is_data in zip(ins, weights, data)
                    ]
                    self.sow(MACS, f"layer{index}", jnp.sum(bind(ones, data).astype(jnp.float32)))
                if count_events:
                    _sow_events(self, bind, ins, data)
                with jax.named_scope(f"layer{index}"):  # (the NIR export names its node so)
                    return [bind(weights if self.connectivity else ins, data)]
            if self.connectivity and name in ("add", "add_any", "sub", "mul", "div", "neg") and not all(data):
                return [ins[data.index(True)]]  # constants dropped, scalings 1: the connectivity view
            if self.connectivity and name == "sub":  # a difference of two paths: both connect
                return [ins[0] + ins[1]]
            return None

        inputs = [(leaf, False) for leaf in leaves] + [(x, True)]
        consts = [(c, False) for c in closed.consts]
        ((out, _),) = _evaluate(closed.jaxpr, consts, inputs, sites, absorbed, site, linear, time_major)
        return out


def _sow_events(module: nn.Module, bind: Callable, ins: list, data: list[bool]) -> None:
    """NeuroBench's synaptic operations of one linear layer per step and image, as
    ``offsetjax._linear_layers.count_input_events`` counts a layer of ``offsetjax.models``."""
    inputs = ins[data.index(True)]
    binary = [(value != 0).astype(jnp.float32) for value in ins]  # nonzero inputs, nonzero weights
    sow_input_events(module, inputs, bind(binary, data))


def _shapes(leaves) -> tuple:
    return tuple((tuple(np.shape(leaf)), jnp.result_type(leaf)) for leaf in leaves)


def _evaluate(jaxpr, consts, inputs, sites, absorbed, site, linear, time_major: bool, prefix=()) -> list:
    """Run ``jaxpr`` on ``(value, depends on the images)`` pairs. With ``time_major`` every value
    that depends on the images has a leading time axis, and each equation runs at every step."""
    env: dict[Any, tuple[Any, bool]] = {}
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, inputs))

    def read(v):
        return (v.val, False) if isinstance(v, internals.Literal) else env[v]

    for equation in jaxpr.eqns:
        pairs = [read(v) for v in equation.invars]
        ins, data = [value for value, _ in pairs], [is_data for _, is_data in pairs]
        name, key = equation.primitive.name, (*prefix, id(equation))
        if key in sites:
            spec, operand = sites[key]
            currents = ins[operand]
            outs = [
                (
                    site(
                        spec,
                        currents
                        if not time_major or currents.ndim > equation.invars[operand].aval.ndim
                        else currents[None],
                    ),
                    True,
                )
            ]
        elif key in absorbed:  # the clip's min: the site computed it (ANN) or bounds it (IF)
            outs = [pairs[absorbed[key]]]
        elif name in _CALLS and _CALLS[name] in equation.params:
            body = equation.params[_CALLS[name]]
            inner, inner_consts = (body.jaxpr, body.consts) if hasattr(body, "consts") else (body, [])
            inner_consts = [(c, False) for c in inner_consts]
            outs = _evaluate(inner, inner_consts, pairs, sites, absorbed, site, linear, time_major, key)
        else:
            primitive, params = equation.primitive, internals.bind_params(equation)

            def bind(values, data, primitive=primitive, params=params):
                function = functools.partial(primitive.bind, **params)
                if time_major and any(data):  # at every step; an input entered once meets the later steps
                    steps = max(value.shape[0] for value, is_data in zip(values, data) if is_data)
                    values = [
                        jnp.broadcast_to(value, (steps, *value.shape[1:])) if is_data else value
                        for value, is_data in zip(values, data)
                    ]
                    function = jax.vmap(function, in_axes=[0 if is_data else None for is_data in data])
                return function(*values)

            outs = linear(equation, ins, data, bind) if any(data) else None
            if outs is None:
                values = bind(ins, data)
                values = values if primitive.multiple_results else [values]
                outs = [(value, any(data)) for value in values]
            else:
                outs = [out if isinstance(out, tuple) else (out, True) for out in outs]
        env.update(zip(equation.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def from_jax(
    apply_fn: Callable,
    params: Any,
    images: Any = None,
    *,
    threshold: str | float | Mapping[str, float | ArrayLike] = "max",
    per_channel: bool = False,
    image_shape: tuple[int, ...] | None = None,
    batch_size: int = 256,
) -> tuple[JaxprNetwork, dict]:
    """A trained ReLU network as an offsetjax ANN, ready for :func:`offsetjax.spiking_model`.

    Args:
      apply_fn: ``apply_fn(params, images) -> logits``, images ``[B, ...]`` to ``[B, classes]``:
        ``flax_model.apply`` (params: its variables), a plain function, or for Equinox
        ``lambda model, x: jax.vmap(model)(x)`` with the model as params (its non-array leaves
        are kept as they are), for Flax NNX ``lambda state, x: nnx.merge(graphdef, state)(x)``.
      params: the pytree ``apply_fn`` takes first; its arrays become the network's variables.
      images: calibration images ``[N, ...]`` (a few hundred training images), needed when
        ``threshold`` is ``"max"`` or a percentile.
      threshold: lambda of every ReLU site: ``"max"``, the largest ReLU output over ``images``;
        ``"99.9%"`` (any percentile ``"p%"``), that percentile of all of a site's ReLU outputs over
        ``images``; a number for every site; or ``{site name: lambda}`` for each (names from
        ``model.program.sites(...)``, ``relu0``, ``relu1``, ... in computing order). A clip
        ``jnp.clip(x, 0, c)`` keeps c as its lambda whatever the mode. A dict's value may be a
        vector ``[C]``, one lambda per channel (the site's last axis).
      per_channel: measure ``"max"`` / ``"p%"`` per channel (over the images and positions of
        each channel of the site's last axis), a lambda ``[C]`` per site, as channel-wise
        threshold balancing does; a channel that is zero on every image keeps its layer's lambda.
      image_shape: one image's shape, when ``images`` is not given.
      batch_size: images per pass when measuring thresholds (one compiled program).

    Returns:
      ``(model, variables)``: a :class:`JaxprNetwork` and ``{"params": {"network": arrays,
      site: {"threshold": lambda}}}``. ``model.apply(variables, images)`` equals
      ``apply_fn(params, images)``.

    Raises:
      ValueError: before anything compiles, naming the operation and the line of ``apply_fn``'s
        code for one an IF network cannot compute (max pooling, softmax inside, GELU, a product
        of activations), a network without a ReLU, a missing or bad ``images`` / ``threshold``.
    """
    if not callable(apply_fn):
        raise ValueError(
            f"apply_fn must be a function apply_fn(params, images) -> logits, got {type(apply_fn).__name__}"
        )
    if images is not None:
        images = check_image_batch(jnp.asarray(images))
        image_shape = tuple(images.shape[1:])
    elif image_shape is None:
        raise ValueError("from_jax needs images (calibration images [N, ...]) or image_shape (one image's shape)")
    mode = _threshold_mode(threshold, images)
    if not isinstance(per_channel, bool):
        raise ValueError(f"per_channel must be True or False, got {per_channel!r}")
    if per_channel and mode[0] == "given":
        raise ValueError(
            f"per_channel=True measures each channel's lambda on images, with threshold='max' or a percentile; "
            f"got threshold={threshold!r}: give thresholds per channel as a dict of vectors, {{'relu0': [...]}}"
        )
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    is_array = [isinstance(leaf, (jax.Array, np.ndarray)) for _, leaf in paths_leaves]
    if not any(is_array):
        raise ValueError("params holds no arrays: pass the pytree of weights apply_fn takes first")
    template = [leaf for _, leaf in paths_leaves]
    names = _leaf_names([path for (path, _), array in zip(paths_leaves, is_array) if array])

    def function(arrays, x):
        it = iter(arrays)
        full = [next(it) if array else leaf for array, leaf in zip(is_array, template)]
        return apply_fn(jax.tree.unflatten(treedef, full), x)

    arrays = [jnp.asarray(leaf) for leaf, array in zip(template, is_array) if array]
    program = _Program(function, jax.tree.structure(arrays), names, _shapes(arrays), image_shape)
    specs = program.sites(arrays)
    if not specs:
        raise ValueError(
            "from_jax found no ReLU in apply_fn (jax.nn.relu, flax.linen.relu, jnp.maximum(x, 0) or "
            "jnp.clip(x, 0, c)): there is nothing to convert into IF neurons"
        )
    model = JaxprNetwork(program)
    network = dict(zip(names, arrays))
    thresholds = _thresholds(model, network, specs, mode, images, batch_size, per_channel)
    qcfs_sites = [spec for spec in specs if spec.levels is not None]
    if qcfs_sites:  # offsetjax's own QCFS sites keep their trained lambda
        thresholds.update(zip((spec.name for spec in qcfs_sites), _qcfs_thresholds(function, arrays, image_shape)))
    params_out = {
        "network": network,
        **{spec.name: {"threshold": _threshold_leaf(thresholds[spec.name])} for spec in specs},
    }
    return model, {"params": params_out}


def _threshold_leaf(theta) -> jax.Array:
    return jnp.float32(theta) if isinstance(theta, float) else jnp.asarray(theta, jnp.float32)


def _leaf_names(paths) -> tuple[str, ...]:
    names = []
    for path in paths:
        name = re.sub(r"[^0-9A-Za-z_]+", ".", jax.tree_util.keystr(path)).strip(".") or "leaf"
        names.append(name if name not in names else f"{name}.{len(names)}")
    return tuple(names)


def _threshold_mode(threshold, images):
    if isinstance(threshold, str):
        if threshold == "max":
            mode = ("max", None)
        elif re.fullmatch(r"\d+(\.\d+)?%", threshold) and 0 < float(threshold[:-1]) <= 100:
            mode = ("percentile", float(threshold[:-1]))
        else:
            raise ValueError(
                f"threshold must be 'max', a percentile such as '99.9%', a number or a dict, got {threshold!r}"
            )
        if images is None:
            raise ValueError(f"threshold={threshold!r} is measured on calibration images: pass images [N, ...]")
        return mode
    if isinstance(threshold, Mapping):
        return ("given", dict(threshold))
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be finite and > 0, got {threshold!r}")
        return ("given", float(threshold))
    raise ValueError(f"threshold must be 'max', a percentile such as '99.9%', a number or a dict, got {threshold!r}")


def _thresholds(model, network, specs, mode, images, batch_size, per_channel: bool) -> dict[str, Any]:
    """Each site's lambda: a float, or with ``per_channel`` (or a vector given) ``[C]`` float32."""
    kind, value = mode
    names = [spec.name for spec in specs]
    if kind == "given":
        if isinstance(value, dict):
            unknown, missing = (
                sorted(set(value) - set(names)),
                [
                    spec.name
                    for spec in specs
                    if spec.name not in value and spec.ceiling is None and spec.levels is None
                ],
            )
            if unknown or missing:
                raise ValueError(f"threshold names sites {names}: unknown {unknown}, missing {missing}")
            given = value
        else:
            given = dict.fromkeys(names, value)
        out = {}
        for spec in specs:
            theta = spec.ceiling if spec.ceiling is not None else 1.0 if spec.levels else given[spec.name]
            array = (
                np.asarray(theta, np.float64) if not isinstance(theta, (jax.Array, np.ndarray)) else np.asarray(theta)
            )
            if array.ndim > 1 or array.size == 0 or not np.issubdtype(array.dtype, np.number):
                raise ValueError(
                    f"threshold of {spec.name} must be a number or one per channel [C], got shape {array.shape}"
                )
            if not (np.all(np.isfinite(array)) and np.all(array > 0)):
                raise ValueError(f"threshold of {spec.name} must be finite and > 0, got {theta!r}")
            out[spec.name] = float(theta) if array.ndim == 0 else array.astype(np.float32)
        return out
    outputs = _site_outputs(model, network, images, batch_size)
    out = {}
    for spec in specs:
        if spec.ceiling is not None or spec.levels is not None:  # a clip's c; QCFS keeps its lambda (from_jax)
            out[spec.name] = spec.ceiling or 1.0
            continue
        values = outputs[spec.name]  # [samples x positions, C]
        statistic = (lambda v, **a: v.max(**a)) if kind == "max" else functools.partial(np.percentile, q=value)
        theta = float(statistic(values))
        if not theta > 0:
            raise ValueError(
                f"site {spec.name} ({spec.where}) never fires on the calibration images (its {kind} output is "
                f"{theta}): give it a threshold, threshold={{'{spec.name}': ...}}, or more images"
            )
        if per_channel:  # a channel silent on every image keeps its layer's lambda
            channels = np.asarray(statistic(values, axis=0), np.float32)
            out[spec.name] = np.where(channels > 0, channels, np.float32(theta))
        else:
            out[spec.name] = theta
    return out


def _site_outputs(model, network, images, batch_size) -> dict[str, np.ndarray]:
    """Every site's ReLU outputs over ``images``, ``[samples x positions, C]`` (float32, on the host)."""
    variables = {
        "params": {"network": network, **{name: {"threshold": jnp.float32(1)} for name in _names(model, network)}}
    }

    @jax.jit
    def outputs(variables, batch):
        _, state = model.apply(
            variables,
            batch,
            capture_intermediates=lambda module, method: method == "__call__" and isinstance(module, ANNSite),
            mutable=["intermediates"],
        )
        return {name: values["__call__"][0] for name, values in state["intermediates"].items()}

    count = images.shape[0]
    size = min(batch_size, count)
    collected: dict[str, list] = {}
    for start in range(0, count, size):
        batch = images[start : start + size]
        real = batch.shape[0]
        if real < size:
            batch = jnp.concatenate([batch, jnp.zeros((size - real, *batch.shape[1:]), batch.dtype)])
        for name, value in outputs(variables, batch).items():
            value = np.asarray(value[:real], np.float32)
            collected.setdefault(name, []).append(value.reshape(-1, value.shape[-1] if value.ndim > 1 else 1))
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def _names(model, network) -> list[str]:
    return [spec.name for spec in model.program.sites(list(network.values()))]
