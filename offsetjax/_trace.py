"""A spiking network traced to a jaxpr with each IF site as one marker operation.

The step-by-step executor (:mod:`offsetjax.executor`) and the NIR export
(:mod:`offsetjax.interop.nir`) both read a network from its jaxpr: the sites become
``offsetjax_if_site`` equations (inputs: currents, threshold, v(0), bias current; parameters:
the site's ``path`` and ``has_bias``), everything else stays as JAX traced it.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from offsetjax import _jax_internals as internals
from offsetjax.models.layers import xla_convolutions
from offsetjax.site import BIAS_CORRECTION, INITIAL_POTENTIAL, IFActivation

site_p = internals.Primitive("offsetjax_if_site")
site_p.def_abstract_eval(lambda currents, theta, v0, bias, **_: internals.ShapedArray(currents.shape, currents.dtype))


def _mark_sites(next_fun, args, kwargs, context):
    """Replace each IF site's call by one marker operation holding its threshold, v(0) and bias."""
    site = context.module
    if not isinstance(site, IFActivation) or context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    currents = args[0]
    theta = site.get_variable("params", "threshold")
    v0 = site.get_variable(INITIAL_POTENTIAL, "v0")
    bias = site.get_variable(BIAS_CORRECTION, "b") if site.has_variable(BIAS_CORRECTION, "b") else None
    return site_p.bind(
        currents,
        theta,
        v0,
        jnp.zeros((), currents.dtype) if bias is None else bias,
        path="/".join(site.path),
        has_bias=bias is not None,
    )


def trace_sites(snn: nn.Module, treedef: Any, leaves: list, frame: Any, *, convolutions: bool = False):
    """The closed jaxpr of ``snn.apply(variables, frame)`` with its sites marked; its inputs are
    the variables' leaves (``treedef`` rebuilds the tree), then ``frame`` ``[1, B, ...]``
    (abstract values or arrays). ``convolutions=True`` traces every convolution of
    ``offsetjax.models`` as one ``conv_general_dilated`` (no matmul form for tiny maps on CPU)."""

    def forward(leaves, frame):
        with nn.intercept_methods(_mark_sites), xla_convolutions(convolutions):
            return snn.apply(jax.tree.unflatten(treedef, leaves), frame)

    return jax.make_jaxpr(forward)(leaves, frame)


class TracedNetwork(NamedTuple):
    """What one abstract ``init`` of a network shows: its variables' shapes,
    ``{collection: {"a/b/name": shape}}``, the module paths of its IF sites in call order, and
    the shape of its output (``None`` when it is not one array)."""

    variables: dict[str, dict[str, tuple[int, ...]]]
    sites: tuple[str, ...]
    output: tuple[int, ...] | None = None


@functools.lru_cache(maxsize=128)
def trace_network(model, input_shape: tuple[int, ...]) -> TracedNetwork:
    """``model.init`` traced abstractly for a float32 input of ``input_shape`` (nothing is
    compiled), cached per network and shape."""
    sites: list[str] = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, IFActivation) and context.method_name == "__call__":
            name = "/".join(context.module.path)
            if name not in sites:
                sites.append(name)
        return next_fun(*args, **kwargs)

    example = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with nn.intercept_methods(record):
        output, shapes = jax.eval_shape(functools.partial(model.init_with_output, jax.random.key(0)), example)
    variables = {
        collection: {
            "/".join(path): tuple(leaf.shape)
            for path, leaf in traverse_util.flatten_dict(tree).items()
            if hasattr(leaf, "shape")  # (sown values are tuples)
        }
        for collection, tree in shapes.items()
    }
    output = tuple(output.shape) if isinstance(output, jax.ShapeDtypeStruct) else None
    return TracedNetwork(variables, tuple(sites), output)
