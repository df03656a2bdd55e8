"""Tracing a spiking network with its IF sites in view: the one place that intercepts them.

Everything that reads a network's structure goes through here: the abstract shape check
(:func:`trace_network`), the data-level calibrations (:func:`intercepting_sites`), and the
step-by-step executor and the NIR export, which read a network from its jaxpr
(:func:`trace_sites`): there each site is one ``offsetjax_if_site`` equation whose operands are
a :class:`SiteOperands` (parameters: the site's ``path`` and ``has_bias``), everything else as
JAX traced it. How ``offsetjax.models`` draw a layer in a trace (pools averaging or summing,
convolutions as one operation or CPU's matmul form) is an explicit argument of every trace
(:func:`tracing_view`), never state left over from a caller.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from offsetjax import _jax_internals as internals
from offsetjax.models.layers import pools_as_sums, xla_convolutions
from offsetjax.site import BIAS_CORRECTION, INITIAL_POTENTIAL, IFActivation

site_p = internals.Primitive("offsetjax_if_site")
site_p.def_abstract_eval(lambda currents, theta, v0, bias, **_: internals.ShapedArray(currents.shape, currents.dtype))


class SiteOperands(NamedTuple):
    """What an IF site computes from: its input ``currents`` ``[T or 1, B, ...]``, its threshold
    ``theta`` (a scalar), its ``v0`` (the neuron shape, or ``[B, ...]`` per sample) and its
    ``bias`` current (:data:`offsetjax.site.BIAS_CORRECTION`; ``None`` when it has none)."""

    currents: Any
    theta: Any
    v0: Any
    bias: Any = None

    @classmethod
    def of(cls, site: IFActivation, currents) -> SiteOperands:
        """The operands of ``site`` (bound, inside its network's apply) called on ``currents``."""
        has_bias = site.has_variable(BIAS_CORRECTION, "b")
        return cls(
            currents,
            site.get_variable("params", "threshold"),
            site.get_variable(INITIAL_POTENTIAL, "v0"),
            site.get_variable(BIAS_CORRECTION, "b") if has_bias else None,
        )

    @classmethod
    def of_equation(cls, equation, values: list) -> SiteOperands:
        """The operands of a marked site's equation, from the values of its inputs."""
        currents, theta, v0, bias = values
        return cls(currents, theta, v0, bias if equation.params["has_bias"] else None)


@contextlib.contextmanager
def intercepting_sites(handler: Callable[[IFActivation, Any, Callable[[], Any]], Any]) -> Iterator[None]:
    """While active, each IF site's call returns ``handler(site, currents, call)`` instead, where
    ``call()`` runs the site itself."""

    def intercept(next_fun, args, kwargs, context):
        if isinstance(context.module, IFActivation) and context.method_name == "__call__":
            return handler(context.module, args[0], lambda: next_fun(*args, **kwargs))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
        yield


@contextlib.contextmanager
def tracing_view(*, convolutions: bool = False, pools: str = "mean") -> Iterator[None]:
    """How ``offsetjax.models`` draw their layers while this is active: ``convolutions=True``
    traces every convolution as one ``conv_general_dilated`` (no matmul form for tiny maps on
    CPU: the graph NIR reads); ``pools="sum"`` sums where pools average (the connectivity the
    operation counts read). Every trace here sets both, so a caller's context never changes it."""
    if pools not in ("mean", "sum"):
        raise ValueError(f"pools must be 'mean' or 'sum', got {pools!r}")
    with xla_convolutions(convolutions), pools_as_sums(pools == "sum"):
        yield


def _mark(site: IFActivation, currents, call) -> Any:
    """One marker operation in place of the site, holding its operands."""
    del call
    operands = SiteOperands.of(site, currents)
    return site_p.bind(
        currents,
        operands.theta,
        operands.v0,
        jnp.zeros((), currents.dtype) if operands.bias is None else operands.bias,
        path="/".join(site.path),
        has_bias=operands.bias is not None,
    )


def trace_sites(snn: nn.Module, treedef: Any, leaves: list, frame: Any, *, convolutions: bool = False):
    """The closed jaxpr of ``snn.apply(variables, frame)`` with its sites marked; its inputs are
    the variables' leaves (``treedef`` rebuilds the tree), then ``frame`` ``[1, B, ...]``
    (abstract values or arrays). ``convolutions``: as :func:`tracing_view`."""

    def forward(leaves, frame):
        with intercepting_sites(_mark), tracing_view(convolutions=convolutions):
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

    def record(site, currents, call):
        name = "/".join(site.path)
        if name not in sites:
            sites.append(name)
        return call()

    example = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with intercepting_sites(record), tracing_view():
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
