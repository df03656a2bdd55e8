"""Converted networks as NIR graphs (the neuromorphic intermediate representation), and a JAX
runner for them.

:func:`to_nir` writes any Flax network with offsetjax IF sites (a network of
``offsetjax.models`` or one of your own, from :func:`offsetjax.spiking_model`) in NIR's layout
(C, H, W; PyTorch-style weights). The graph is read from the network's own computation, traced
once in float64: convolutions and dense layers with batch norm folded into them, each site's
threshold theta folded into the next layer's weights (an IF node emits spikes in {0, 1};
offsetjax's site emits theta * s), sum or average pooling as ``SumPool2d`` with its 1/k^2
folded into the next layer, flatten as ``Flatten(start_dim=-3, end_dim=-1)`` over (C, H, W),
residual additions as several edges into one node, a scale nothing can absorb as ``Scale``.
An operation NIR cannot express is refused, naming it and the layer it is in.

NIR's IF node resets *to* ``v_reset``, starts from v(0) = 0 and fires when v > theta. The
converted network needs reset by subtraction, v(0) = theta/2 (or the data-calibrated v(0)),
firing at v >= theta, and with COS a per-sample v(0) from a pre-simulation, none of which a NIR
IF node can state. They are recorded in each IF node's metadata (``reset``, ``v_init`` in the
node's C, H, W layout, ``fire``, ``num_steps``, ``presim_steps``, ``iterations``, ``eps``,
``saturated``); :func:`initial_potentials` reads the ``v_init`` arrays for another simulator.
:func:`from_nir` rebuilds an offsetjax network (a :class:`GraphNetwork`) from a graph written
here; :func:`run_nir` runs a graph with either meaning:

* ``semantics="offsetjax"``: the metadata's, reproducing :func:`offsetjax.simulate`;
* ``semantics="nir"``: NIR's literal IF (reset to ``v_reset``, v(0) = 0, strict ``>``).

Needs the optional ``nir`` package: ``pip install 'offsetjax[nir]'``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from offsetjax._checks import check_choice, check_image_batch, check_int, nonfinite, widen_half
from offsetjax._trace import trace_sites
from offsetjax.convert import schedule, spiking_model
from offsetjax.interop._nir_graph import GraphWriter, _Signal
from offsetjax.models.layers import Activation, qcfs_l4
from offsetjax.schedule import Schedule
from offsetjax.simulation import check_network, running_mean, simulate
from offsetjax.site import INITIAL_POTENTIAL

__all__ = [
    "SEMANTICS",
    "SCHEDULE_KEYS",
    "to_nir",
    "initial_potentials",
    "GraphNetwork",
    "LiteralIF",
    "from_nir",
    "run_nir",
]

SEMANTICS = ("offsetjax", "nir")
#: The :class:`offsetjax.Schedule` fields every IF node's metadata (and the graph's) records
#: (SRP is refused; ``unroll`` is the simulator's choice, not the network's).
SCHEDULE_KEYS = ("num_steps", "presim_steps", "iterations", "eps", "saturated")
#: Samples in the traced frame (a prime, so that no neuron axis is mistaken for the batch).
_TRACE_BATCH = 7


def _nir():
    try:
        import nir
    except ImportError as error:
        raise ImportError("NIR export needs the nir package: pip install 'offsetjax[nir]'") from error
    return nir


def to_nir(snn: nn.Module, variables: Any, image_shape: tuple[int, int, int]):
    """The spiking network as a ``nir.NIRGraph``.

    Args:
      snn: a Flax network with IF sites (:func:`offsetjax.spiking_model`), built of
        convolutions (symmetric padding), dense layers, batch norm, sum or average pooling,
        flattening of (H, W, C) maps, residual additions and scalings.
      variables: its variables (:func:`offsetjax.convert_variables`, or calibrated by
        :func:`offsetjax.data_potential` / :func:`offsetjax.data_bias`: the per-neuron v(0)
        goes into each IF node's ``v_init``, a per-channel bias current into the bias of the
        layer before the site), checked as :func:`offsetjax.simulate` checks them (a per-sample
        v(0) is refused: a graph holds one per neuron).
      image_shape: ``(H, W, C)`` of one input image.

    Returns:
      A graph from ``input`` (``C, H, W``) to ``output`` (classes per step); weights float64.

    Raises:
      ValueError: ``snn`` uses an operation a NIR graph of these nodes cannot express (named,
        with the layer it is in), or SRP (``srp_steps > 0``: NIR has no silencing mask).
    """
    nir = _nir()
    snn_schedule = schedule(snn)
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C) of one image, three ints >= 1, got {image_shape!r}")
    for axis, size in zip("HWC", image_shape):
        check_int(f"image_shape's {axis}", size, minimum=1)
    image_shape = tuple(int(n) for n in image_shape)
    check_network(
        snn,
        variables,
        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32),
        per_sample_refused="a NIR graph holds one v_init per neuron",
    )
    if snn_schedule.srp_steps:
        raise ValueError("to_nir cannot write SRP's silencing mask (srp_steps > 0): NIR's IF node has no such field")
    site = {key: value for key, value in snn_schedule.as_dict().items() if key in SCHEDULE_KEYS}
    leaves, treedef = jax.tree.flatten(variables)
    with jax.enable_x64(True):
        leaves = [
            np.asarray(leaf, np.float64) if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) else np.asarray(leaf)
            for leaf in leaves
        ]
        abstract = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
        frame = jax.ShapeDtypeStruct((1, _TRACE_BATCH, *image_shape), jnp.float64)
        closed = trace_sites(snn, treedef, abstract, frame, convolutions=True)
        writer = GraphWriter(nir, site, _TRACE_BATCH)
        height, width, channels = image_shape
        image = _Signal([], np.zeros(image_shape), 2, image_shape)
        writer.add("input", nir.Input({"input": np.array([channels, height, width])}), [], image)
        (out,) = writer.run(closed, [*leaves, writer.layouts["input"]])
    if not isinstance(out, _Signal) or len(out.shape) != 1 or out.order is not None:
        raise ValueError(
            "to_nir: the network's output must be a vector of class scores [*lead, classes] computed "
            "by a dense layer from the spikes"
        )
    sources = writer.materialize(out, "the output")
    writer.add("output", nir.Output({"output": np.array([out.shape[0]])}), sources)
    metadata = {
        "writer": "offsetjax",
        **site,
        "num_edges": len(writer.edges),  # run_nir refuses a graph that lost or gained an edge since
    }
    return nir.NIRGraph(writer.nodes, writer.edges, metadata=metadata)


def initial_potentials(graph) -> dict[str, np.ndarray]:
    """Each IF node's initial membrane potential v(0), in the node's layout (``C, H, W`` or
    ``F``): what a simulator reading the graph sets its neurons' state to before the first
    step (theta/2 for a converted network; per neuron for ``data_potential``). COS computes v(0)
    per input during a pre-simulation, so a COS graph's ``v_init`` is the uncalibrated theta/2."""
    nir = _nir()
    found = {
        name: np.array(node.metadata["v_init"])  # a copy: arrays nir.read returns are read-only
        for name, node in graph.nodes.items()
        if isinstance(node, nir.IF) and "v_init" in node.metadata
    }
    if not found:
        raise ValueError(
            "graph has no IF node with v_init metadata (is it a graph offsetjax.interop.nir.to_nir wrote?)"
        )
    return found


class GraphNetwork(nn.Module):
    """A network read from a NIR graph (:func:`from_nir`), computed in NIR's layout: images
    ``[*lead, H, W, C]`` are moved to ``[*lead, C, H, W]`` and each node runs as NIR defines it;
    each IF node is a site ``activation(name=node)``: an :class:`offsetjax.IFActivation` once
    :func:`offsetjax.spiking_model` has swapped it in (its output theta * s divided by theta), or
    a :class:`LiteralIF` (NIR's own IF, for ``run_nir(semantics="nir")``).

    Attributes:
      nodes: ``(name, kind, attributes)`` in an order where every node follows its sources;
        ``attributes`` are (key, value) pairs: strides, paddings, shapes.
      edges: ``(source, target)`` pairs; a node sums its sources' outputs.
    """

    nodes: tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...]
    edges: tuple[tuple[str, str], ...]
    activation: Any = qcfs_l4

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no batch statistics: batch norm is folded into the weights
        values: dict[str, Any] = {}
        for name, kind, attributes in self.nodes:
            a = dict(attributes)
            sources = [source for source, target in self.edges if target == name]
            if kind == "Input":
                y = jnp.moveaxis(x, -1, -3) if len(a["shape"]) == 3 else x
            else:
                y = sum(values[source] for source in sources)
            if kind == "Conv2d":
                w = self.param(name, _zeros({"weight": a["weight"], "bias": a["weight"][:1]}))
                lead = y.shape[:-3]
                out = jax.lax.conv_general_dilated(
                    y.reshape(-1, *y.shape[-3:]),
                    w["weight"].astype(y.dtype),
                    a["stride"],
                    [(p, p) for p in a["padding"]],
                    rhs_dilation=a["dilation"],
                    dimension_numbers=("NCHW", "OIHW", "NCHW"),
                    feature_group_count=a["groups"],
                )
                y = out.reshape(*lead, *out.shape[1:]) + _lead(w["bias"][:, None, None], len(lead), y)
            elif kind == "Affine":
                w = self.param(name, _zeros({"weight": a["weight"], "bias": a["weight"][:1]}))
                y = y @ w["weight"].astype(y.dtype).T
                y = y + _lead(w["bias"], y.ndim - 1, y)
            elif kind == "Scale":
                scale = self.param(name, _zeros({"scale": a["scale"]}))["scale"]
                y = y * _lead(scale, y.ndim - len(a["scale"]), y)
            elif kind == "SumPool2d":
                window = (1,) * (y.ndim - 2) + a["kernel"]
                strides = (1,) * (y.ndim - 2) + a["stride"]
                padding = [(0, 0)] * (y.ndim - 2) + [(p, p) for p in a["padding"]]
                y = jax.lax.reduce_window(y, jnp.zeros((), y.dtype), jax.lax.add, window, strides, padding)
            elif kind == "Flatten":
                rank = a["rank"]
                start, end = (d + rank if d < 0 else d for d in (a["start_dim"], a["end_dim"]))
                lead = y.ndim - rank
                y = y.reshape(*y.shape[: lead + start], -1, *y.shape[lead + end + 1 :])
            elif kind == "IF":
                site = self.activation(name=name)
                y = site(y)
                if not isinstance(site, LiteralIF):  # an offsetjax site emits theta * s, NIR's IF node s
                    y = y / jnp.broadcast_to(self.get_variable("params", name)["threshold"].astype(y.dtype), y.shape)
            values[name] = y
        return values["output"]


class LiteralIF(nn.Module):
    """NIR's IF node read literally, the ``semantics="nir"`` of :func:`run_nir`: per step
    v <- v + r * I, a spike where v > v_threshold, then v <- v_reset where it fired; v(0) = 0,
    or the node's ``v_init`` with ``from_v_init``. Its parameters are the node's own arrays
    (``v_threshold``, ``v_reset``, ``r``, ``v_init``; NIR's C, H, W layout). Takes currents
    ``[1 or T, B, ...]``, emits the spikes s in {0, 1}, ``[T, B, ...]``.
    """

    num_steps: int
    from_v_init: bool = False

    @nn.compact
    def __call__(self, currents):
        node = self.param("node", lambda key: {})
        currents = jnp.broadcast_to(currents, (self.num_steps, *currents.shape[1:]))
        neurons = currents.shape[1:]
        theta, reset, r = (
            jnp.broadcast_to(jnp.asarray(node[k], currents.dtype), neurons) for k in ("v_threshold", "v_reset", "r")
        )
        v0 = jnp.asarray(node["v_init"], currents.dtype) if self.from_v_init else jnp.zeros((), currents.dtype)

        def step(v, current):
            v = v + r * current
            fired = v > theta
            return jnp.where(fired, reset, v), fired.astype(currents.dtype)

        _, spikes = jax.lax.scan(step, jnp.broadcast_to(v0, neurons), currents)
        return spikes


def _lead(array, lead: int, like):
    """``array`` with ``lead`` leading axes of size 1, in ``like``'s dtype."""
    return array.astype(like.dtype).reshape((1,) * lead + array.shape)


def _zeros(shapes: dict[str, tuple[int, ...]]):
    return lambda key: {key_: jnp.zeros(shape) for key_, shape in shapes.items()}


def _text(value) -> str:
    """A string from NIR metadata as read back from a file (str, bytes or a 0-d array)."""
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _ints(value, size: int = 2) -> tuple[int, ...]:
    return tuple(int(v) for v in np.broadcast_to(np.asarray(value), (size,)))


def from_nir(graph, *, num_steps: int | None = None) -> tuple[nn.Module, dict]:
    """The spiking network and its variables from a graph :func:`to_nir` wrote.

    The network is a :class:`GraphNetwork` (the graph's nodes as NIR defines them, batch norm
    folded) with the graph's schedule (``num_steps`` overrides T); thresholds and v(0) come from
    the IF nodes. Simulating it reproduces the written network up to float rounding, with
    :func:`offsetjax.simulate`, :func:`offsetjax.run_step_by_step` or any offsetjax function.

    Raises:
      ValueError: the graph was not written by :func:`to_nir` (its metadata lacks the
        schedule), holds a node it cannot run (named), or a weight, bias, threshold or v_init that
        is not finite (named with its node).
    """
    nir = _nir()
    return _network(nir, graph, _check_graph(nir, graph, "offsetjax"), num_steps)


def _network(
    nir, graph, incoming: dict[str, list[str]], num_steps: int | None, *, literal: LiteralIF | None = None
) -> tuple[nn.Module, dict]:
    """:func:`from_nir` of a graph :func:`_check_graph` passed (``incoming``: its sources); with
    ``literal`` (a :class:`LiteralIF` holding T), the same network with NIR's own IF nodes."""
    meta = dict(graph.metadata)
    order = _topological(graph, incoming)
    nodes, params, potentials = [], {}, {}
    for name in order:
        node = graph.nodes[name]
        kind, attributes = type(node).__name__, {}
        if isinstance(node, nir.Input):
            attributes["shape"] = tuple(int(n) for n in np.asarray(node.input_type["input"]))
        elif isinstance(node, nir.Conv2d):
            if isinstance(node.padding, str):
                raise ValueError(f"from_nir runs Conv2d nodes with integer padding, {name} pads {node.padding!r}")
            weight = np.asarray(node.weight)
            attributes.update(
                weight=weight.shape,
                stride=_ints(node.stride),
                padding=_ints(node.padding),
                dilation=_ints(node.dilation),
                groups=int(node.groups),
            )
            params[name] = {"weight": weight, "bias": np.broadcast_to(np.asarray(node.bias), weight.shape[:1])}
        elif isinstance(node, (nir.Affine, nir.Linear)):
            kind, weight = "Affine", np.asarray(node.weight)
            bias = np.asarray(node.bias) if isinstance(node, nir.Affine) else np.zeros(weight.shape[0])
            attributes["weight"] = weight.shape
            params[name] = {"weight": weight, "bias": bias}
        elif isinstance(node, nir.Scale):
            attributes["scale"] = np.shape(node.scale)
            params[name] = {"scale": np.asarray(node.scale)}
        elif isinstance(node, nir.SumPool2d):
            attributes.update(kernel=_ints(node.kernel_size), stride=_ints(node.stride), padding=_ints(node.padding))
        elif isinstance(node, nir.Flatten):
            rank = len(np.asarray(node.input_type["input"]))
            attributes.update(start_dim=int(node.start_dim), end_dim=int(node.end_dim), rank=rank)
        elif isinstance(node, nir.IF) and literal is not None:
            v_init = node.metadata.get("v_init", 0.0) if literal.from_v_init else 0.0
            arrays = {"v_threshold": node.v_threshold, "v_reset": node.v_reset, "r": node.r, "v_init": v_init}
            params[name] = {"node": {key: np.asarray(value) for key, value in arrays.items()}}
        elif isinstance(node, nir.IF):
            theta, r = np.asarray(node.v_threshold), np.asarray(node.r)
            if np.any(r != 1):
                raise ValueError(f"from_nir runs IF nodes with r = 1; {name} has other")
            # one threshold per node, or per neuron (a per-channel network's, in the node's layout)
            params[name] = {"threshold": theta.flat[0] if np.all(theta == theta.flat[0]) else theta}
            potentials[name] = {"v0": np.asarray(node.metadata["v_init"])}
        elif not isinstance(node, nir.Output):
            raise ValueError(f"from_nir does not run {kind} nodes ({name})")
        nodes.append((name, kind, tuple(sorted(attributes.items()))))
    network = GraphNetwork(tuple(nodes), tuple((str(s), str(t)) for s, t in graph.edges))
    as_arrays = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
    if literal is not None:
        sites = Activation(LiteralIF, num_steps=literal.num_steps, from_v_init=literal.from_v_init)
        return network.clone(activation=sites), {"params": as_arrays(params)}
    snn = spiking_model(network, schedule=_metadata_schedule(meta, num_steps))
    return snn, {"params": as_arrays(params), INITIAL_POTENTIAL: as_arrays(potentials)}


def _metadata_schedule(meta: dict, num_steps: int | None) -> Schedule:
    """The :class:`offsetjax.Schedule` a graph's metadata records (the one place it is read),
    ``num_steps`` replacing its T when given."""
    missing = [key for key in SCHEDULE_KEYS if key not in meta and not (key == "num_steps" and num_steps is not None)]
    if missing:
        raise ValueError(
            f"graph metadata lacks {', '.join(missing)}, the schedule to_nir records: from_nir rebuilds graphs "
            "offsetjax.interop.nir.to_nir wrote (run_nir(graph, images, semantics='nir', num_steps=...) runs "
            "any graph with NIR's literal IF)"
        )
    return Schedule(
        num_steps=int(meta["num_steps"]) if num_steps is None else check_int("num_steps", num_steps, minimum=1),
        presim_steps=int(meta["presim_steps"]),
        iterations=int(meta["iterations"]),
        eps=float(meta["eps"]),
        saturated=_text(meta["saturated"]),
    )


def _topological(graph, incoming: dict[str, list[str]]) -> list[str]:
    """The graph's nodes, each after its sources (refusing a cycle: NIR's recurrent graphs are
    not what this module writes)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError(f"graph has a cycle through {name}: from_nir runs feed-forward graphs")
        state[name] = "visiting"
        for source in incoming.get(name, []):
            visit(source)
        state[name] = "done"
        order.append(name)

    visit("output")
    return order


def run_nir(
    graph, images, *, semantics: str = "offsetjax", num_steps: int | None = None, from_v_init: bool = False
) -> jax.Array:
    """Run a graph on ``images`` ``[B, H, W, C]``: with ``semantics="offsetjax"`` (a graph
    :func:`to_nir` wrote) as :func:`offsetjax.simulate` runs :func:`from_nir`'s network; with
    ``"nir"`` (any graph of these nodes) with NIR's literal IF, from v(0) = 0 or, with
    ``from_v_init=True``, from each IF node's ``v_init`` (what a NIR-literal simulator computes
    when the :func:`initial_potentials` are set as its state).

    Returns:
      The running mean of the output over steps, ``[T, B, classes]``, as :func:`offsetjax.simulate`.

    The graph's input is an image ``(C, H, W)`` (images ``[B, H, W, C]``) or a vector ``(F,)``
    (inputs ``[B, F]``). T is ``num_steps``, else the graph's ``num_steps`` metadata; a graph with
    neither (one another tool wrote) is refused rather than run for a guessed T. Images are
    checked as :func:`offsetjax.simulate` checks them (integer inputs refused, half precision
    cast up to float32, or float64 under ``jax_enable_x64``); the graph's weights, biases,
    thresholds and v_init are checked finite, naming the node.
    """
    check_choice("semantics", semantics, SEMANTICS)
    if from_v_init and semantics != "nir":
        raise ValueError("from_v_init=True starts NIR's literal IF from v_init: it needs semantics='nir'")
    nir = _nir()
    incoming = _check_graph(nir, graph, semantics)
    meta = dict(graph.metadata)
    if num_steps is None and "num_steps" not in meta:
        raise ValueError(
            "graph records no num_steps in its metadata (a graph offsetjax did not write?): pass "
            "run_nir(graph, images, num_steps=T)"
        )
    num_steps = check_int(
        "num_steps", int(np.asarray(meta["num_steps"])) if num_steps is None else num_steps, minimum=1
    )
    if from_v_init:
        unmarked = sorted(
            n for n, node in graph.nodes.items() if isinstance(node, nir.IF) and "v_init" not in node.metadata
        )
        if unmarked:
            raise ValueError(f"from_v_init=True starts each IF node from its v_init metadata, which {unmarked} lack")
    images = check_image_batch(jnp.asarray(images))
    images = widen_half(images, jnp.zeros((), float).dtype)
    shape = tuple(int(n) for n in np.asarray(graph.nodes["input"].input_type["input"]).reshape(-1))
    if len(shape) == 3:
        channels, height, width = shape
        if images.ndim != 4 or tuple(images.shape[1:]) != (height, width, channels):
            raise ValueError(
                f"images must be one batch [B, H, W, C] = [B, {height}, {width}, {channels}] for this graph (its "
                f"input is C, H, W = {channels}, {height}, {width}), got shape {tuple(images.shape)}"
            )
    elif len(shape) == 1:
        if images.ndim != 2 or images.shape[1] != shape[0]:
            raise ValueError(
                f"images must be one batch [B, F] = [B, {shape[0]}] for this graph (its input is a vector of "
                f"{shape[0]}), got shape {tuple(images.shape)}"
            )
    else:
        raise ValueError(
            f"run_nir runs graphs whose input is an image (C, H, W) or a vector (F,); this graph's input has shape {shape}"
        )
    if semantics == "offsetjax":
        snn, variables = _network(nir, graph, incoming, num_steps)
        return simulate(snn, variables, images)
    literal = LiteralIF(num_steps=num_steps, from_v_init=from_v_init)
    network, variables = _network(nir, graph, incoming, num_steps, literal=literal)
    out = network.apply(variables, images[None])  # [1 or T, B, classes]
    return running_mean(jnp.broadcast_to(out, (num_steps, *out.shape[1:])))


def _check_graph(nir, graph, semantics: str) -> dict[str, list[str]]:
    """Check that ``graph`` is a NIR graph :func:`run_nir` can run; return each node's sources."""
    if not isinstance(graph, nir.NIRGraph):
        raise ValueError(f"graph must be a nir.NIRGraph (nir.read of a file to_nir wrote), got {type(graph).__name__}")
    for name, kind in (("input", nir.Input), ("output", nir.Output)):
        if not isinstance(graph.nodes.get(name), kind):
            raise ValueError(
                f"graph must have a nir.{kind.__name__} node named {name!r}, got nodes {sorted(graph.nodes)}"
            )
    unknown = sorted({n for edge in graph.edges for n in edge} - set(graph.nodes))
    if unknown:
        raise ValueError(f"graph has edges to or from nodes it does not hold: {unknown}")
    incoming: dict[str, list[str]] = {}
    for source, target in graph.edges:
        incoming.setdefault(target, []).append(source)
    unfed = sorted(name for name in graph.nodes if name != "input" and name not in incoming)
    if unfed:
        raise ValueError(f"graph nodes {unfed} have no incoming edge: every node but 'input' needs one")
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Conv2d) and isinstance(node.padding, str):
            raise ValueError(
                f"graph node {name} is a Conv2d padded {node.padding!r}: offsetjax runs Conv2d nodes with integer "
                "padding (the pads on each side), as NIR's other readers do"
            )
        _check_node_values(name, node)
    if semantics == "offsetjax":
        unmarked = sorted(
            name for name, node in graph.nodes.items() if isinstance(node, nir.IF) and "v_init" not in node.metadata
        )
        meta = dict(graph.metadata)
        writer = _text(meta.get("writer", ""))
        written = int(np.asarray(meta["num_edges"])) if "num_edges" in meta else len(graph.edges)
        problem = (
            f"its metadata names writer {writer!r}, not 'offsetjax'"
            if writer != "offsetjax"
            else f"IF nodes {unmarked} have no v_init metadata"
            if unmarked
            else f"it has {len(graph.edges)} edges where to_nir wrote {written} (an edge removed or added?)"
            if written != len(graph.edges)
            else None
        )
        if problem:
            raise ValueError(
                f"semantics='offsetjax' runs graphs written by offsetjax.interop.nir.to_nir, but {problem}; "
                "semantics='nir' runs any graph with NIR's literal IF"
            )
    return incoming


def _check_node_values(name: str, node) -> None:
    """Every floating array a node holds (weights, biases, scales, thresholds, v_init) is finite."""
    fields = dict(vars(node))
    fields.update({f"metadata['{key}']": value for key, value in dict(fields.pop("metadata", {}) or {}).items()})
    for field, value in fields.items():
        if isinstance(value, (np.ndarray, jax.Array, float)) and (problem := nonfinite(np.asarray(value))):
            raise ValueError(
                f"graph node {name} ({type(node).__name__}) holds {problem} in {field}: its weights, biases, "
                "thresholds and v_init must be finite"
            )
