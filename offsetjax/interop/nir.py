"""Converted networks as NIR graphs (the neuromorphic intermediate representation), and a JAX
runner for the graphs this module writes.

:func:`to_nir` writes a spiking VGG or ResNet of ``offsetjax.models`` in NIR's layout (CHW,
PyTorch-style weights): batch norm folded into each convolution, each site's threshold θ folded
into the next layer's weights (an IF node emits spikes in {0, 1}; offsetjax's site emits θ·s),
average pooling as ``SumPool2d`` with its 1/k² folded into the next layer, flatten in CHW order,
residual additions as several edges into one node, an identity shortcut as a ``Scale`` by θ.

NIR's IF node resets *to* ``v_reset``, starts from v(0) = 0 and fires when v > θ. The
converted network needs reset by subtraction, v(0) = θ/2, firing at v ≥ θ, and (calibrated)
a per-sample v(0) from a pre-simulation, none of which a NIR IF node can state. They are
recorded in each IF node's metadata (``reset``, ``v_init``, ``fire``, ``num_steps``,
``presim_steps``, ``iterations``, ``eps``, ``saturated``); a consumer that ignores them runs a
different network. :func:`from_nir` rebuilds the offsetjax network from a graph written here;
:func:`run_nir` runs a graph with either meaning:

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
from flax import traverse_util

from offsetjax._checks import check_choice, check_image_batch, check_int
from offsetjax.convert import schedule, spiking_model
from offsetjax.models.resnet import ResNet
from offsetjax.models.vgg import VGG
from offsetjax.neuron import if_simulate
from offsetjax.offset import calibrate_initial_potential
from offsetjax.simulation import check_network
from offsetjax.site import BIAS_CORRECTION, INITIAL_POTENTIAL

SEMANTICS = ("offsetjax", "nir")


def _nir():
    try:
        import nir
    except ImportError as error:
        raise ImportError("NIR export needs the nir package: pip install 'offsetjax[nir]'") from error
    return nir


class _Writer:
    """Collects nodes and edges; folds the pending input scale (θ of the last site, 1/k² of a
    pool) into the next linear node."""

    def __init__(self, params, batch_stats, potentials, site: dict, eps: float):
        self.nir = _nir()
        self.params, self.stats, self.potentials, self.site, self.eps = params, batch_stats, potentials, site, eps
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node, *sources: str) -> str:
        name = name.replace("/", ".")  # NIR files store nodes as HDF5 groups: no "/" in names
        self.nodes[name] = node
        self.edges += [(source, name) for source in sources]
        return name

    def conv_bn(self, path: str, source: str, in_scale, stride: int, shape: tuple[int, int, int]) -> tuple[str, tuple]:
        """A ConvBN module as one Conv2d; ``shape`` is the input's (C, H, W)."""
        kernel = np.asarray(_get(self.params, path)["Conv_0"]["kernel"], np.float64)  # [k, k, Cin, Cout]
        bn, stats = _get(self.params, path)["BatchNorm_0"], _get(self.stats, path)["BatchNorm_0"]
        factor = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(stats["var"], np.float64) + self.eps)
        weight = np.transpose(kernel, (3, 2, 0, 1)) * factor[:, None, None, None] * in_scale
        bias = np.asarray(bn["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * factor
        k = kernel.shape[0]
        pad = (k - 1) // 2
        out_hw = tuple((n + 2 * pad - k) // stride + 1 for n in shape[1:])
        node = self.nir.Conv2d(shape[1:], weight, stride, pad, 1, 1, bias, metadata={"input_scale": float(in_scale)})
        return self.add(path, node, source), (kernel.shape[3], *out_hw)

    def if_node(self, path: str, shape: tuple, *sources: str) -> tuple[str, float]:
        """An IF node of the neuron shape ``shape`` (CHW or features); returns it and its θ."""
        theta = float(np.asarray(_get(self.params, path)["threshold"]))
        v0 = np.asarray(_get(self.potentials, path)["v0"], np.float64)
        v0 = np.broadcast_to(v0, (*shape[1:], shape[0]) if len(shape) == 3 else shape)
        v0 = np.transpose(v0, (2, 0, 1)) if len(shape) == 3 else v0
        metadata = {"reset": "subtract", "v_init": v0, "fire": "v >= v_threshold", **self.site}
        node = self.nir.IF(np.ones(shape), np.full(shape, theta), np.zeros(shape), metadata=metadata)
        return self.add(path, node, *sources), theta


def _get(tree: dict, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def to_nir(snn: nn.Module, variables: Any, image_shape: tuple[int, int, int], *, batch_norm_eps: float = 1e-5):
    """The spiking network as a ``nir.NIRGraph``.

    Args:
      snn: a VGG or ResNet of ``offsetjax.models`` with IF sites (:func:`offsetjax.spiking_model`).
      variables: its variables (:func:`offsetjax.convert_variables`); per-site scalar or
        per-neuron v(0).
      image_shape: ``(H, W, C)`` of one input image.
      batch_norm_eps: the networks' batch-norm epsilon.

    Returns:
      A graph from ``input`` (``C, H, W``) to ``output`` (classes per step); weights float64.
    """
    nir = _nir()
    options = schedule(snn)
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C) of one image, three ints >= 1, got {image_shape!r}")
    for axis, size in zip("HWC", image_shape):
        check_int(f"image_shape's {axis}", size, minimum=1)
    if not isinstance(snn, (VGG, ResNet)):
        raise ValueError(f"to_nir writes VGG and ResNet networks of offsetjax.models, got {type(snn).__name__}")
    check_network(snn, variables, np.empty((1, *image_shape), np.float32))
    if options["srp_steps"]:
        raise ValueError("to_nir cannot write SRP's silencing mask (srp_steps > 0): NIR's IF node has no such field")
    if BIAS_CORRECTION in variables:
        raise ValueError(
            f"to_nir does not fold the {BIAS_CORRECTION!r} collection (offsetjax.data_bias) into the graph's biases"
        )
    site = {key: options[key] for key in ("num_steps", "presim_steps", "iterations", "eps", "saturated")}
    height, width, channels = image_shape
    writer = _Writer(
        variables["params"], variables.get("batch_stats", {}), variables[INITIAL_POTENTIAL], site, batch_norm_eps
    )
    shape = (channels, height, width)
    writer.add("input", nir.Input({"input": np.array(shape)}))
    if isinstance(snn, VGG):
        last = _vgg(writer, snn, shape)
    else:
        last = _resnet(writer, snn, shape)
    classes = writer.nodes[last].weight.shape[0]
    writer.add("output", nir.Output({"output": np.array([classes])}), last)
    network = (
        {"network": "VGG", "features": [str(f) for f in snn.features], "hidden": list(snn.hidden)}
        if isinstance(snn, VGG)
        else {"network": "ResNet", "stage_sizes": list(snn.stage_sizes), "widths": list(snn.widths)}
    )
    metadata = {
        "writer": "offsetjax",
        **site,
        **network,
        "num_classes": int(classes),
        "batch_norm_eps": batch_norm_eps,
        "num_edges": len(writer.edges),  # run_nir refuses a graph that lost or gained an edge since
    }
    return nir.NIRGraph(writer.nodes, writer.edges, metadata=metadata)


def _vgg(writer: _Writer, snn: VGG, shape) -> str:
    nir = writer.nir
    source, scale, conv_index, pools = "input", 1.0, 0, 0
    for spec in snn.features:
        if spec == "M":
            pools += 1
            name = writer.add(
                f"pool{pools}", nir.SumPool2d(np.array([2, 2]), np.array([2, 2]), np.array([0, 0])), source
            )
            source, scale, shape = name, scale / 4, (shape[0], shape[1] // 2, shape[2] // 2)
            continue
        conv, shape = writer.conv_bn(f"conv{conv_index}", source, scale, 1, shape)
        source, scale = writer.if_node(f"conv{conv_index}_act", shape, conv)
        conv_index += 1
    source = writer.add("flatten", nir.Flatten({"input": np.array(shape)}, 0, -1), source)
    flat_shape = shape
    for index, _ in enumerate(snn.hidden):
        name = f"fc{index}"
        source = _affine(writer, name, source, scale, flat_shape)
        flat_shape = None
        source, scale = writer.if_node(f"fc{index}_act", (writer.nodes[name].weight.shape[0],), source)
    return _affine(writer, "classifier", source, scale, flat_shape)


def _affine(writer: _Writer, name: str, source: str, scale: float, chw: tuple | None) -> str:
    kernel = np.asarray(writer.params[name]["kernel"], np.float64)  # [in, out], in in HWC order
    if chw is not None:  # the input was flattened from (C, H, W): reorder the rows to CHW
        c, h, w = chw
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
    bias = np.asarray(writer.params[name]["bias"], np.float64)
    metadata = {"input_scale": float(scale), "flattened_from": np.array(chw if chw is not None else [])}
    return writer.add(name, writer.nir.Affine(kernel.T * scale, bias, metadata=metadata), source)


def _resnet(writer: _Writer, snn: ResNet, shape) -> str:
    nir = writer.nir
    stem, shape = writer.conv_bn("stem", "input", 1.0, 1, shape)
    source, scale = writer.if_node("stem_act", shape, stem)
    for stage, (blocks, width) in enumerate(zip(snn.stage_sizes, snn.widths)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            path = f"stage{stage}_block{block}"
            conv_a, inner_shape = writer.conv_bn(f"{path}/conv_a", source, scale, strides, shape)
            act_a, theta_a = writer.if_node(f"{path}/act_a", inner_shape, conv_a)
            conv_b, out_shape = writer.conv_bn(f"{path}/conv_b", act_a, theta_a, 1, inner_shape)
            if strides != 1 or shape[0] != width:
                shortcut, _ = writer.conv_bn(f"{path}/shortcut", source, scale, strides, shape)
            else:  # the identity carries theta * s
                shortcut = writer.add(f"{path}/identity", nir.Scale(np.full(shape, scale)), source)
            source, scale = writer.if_node(f"{path}/act_out", out_shape, conv_b, shortcut)
            shape = out_shape
    channels, height, width = shape
    window = np.array([height, width])
    pool = writer.add("pool", nir.SumPool2d(window, window, np.array([0, 0])), source)
    flat = writer.add("flatten", nir.Flatten({"input": np.array((channels, 1, 1))}, 0, -1), pool)
    return _affine(writer, "classifier", flat, scale / (height * width), None)


def _text(value) -> str:
    """A string from NIR metadata as read back from a file (str, bytes or a 0-d array)."""
    value = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    return value.decode() if isinstance(value, bytes) else str(value)


def from_nir(graph) -> tuple[nn.Module, dict]:
    """The spiking network and its variables back from a graph :func:`to_nir` wrote.

    The architecture comes from the graph's metadata, the weights from its nodes with the
    folded factors divided out again (batch norm stays folded: scale 1, shift the folded bias,
    running mean 0 and variance 1 - eps), thresholds and v(0) from the IF nodes. Simulating
    the result reproduces the original network up to float rounding.

    Raises:
      ValueError: the graph was not written by :func:`to_nir`.
    """
    meta = dict(graph.metadata)
    if _text(meta.get("writer", "")) != "offsetjax":
        raise ValueError("from_nir reads graphs written by offsetjax.interop.nir.to_nir (metadata writer=offsetjax)")
    eps = float(meta["batch_norm_eps"])
    classes = int(meta["num_classes"])
    if _text(meta["network"]) == "VGG":
        features = tuple("M" if _text(f) == "M" else int(_text(f)) for f in meta["features"])
        model = VGG(features, tuple(int(h) for h in meta["hidden"]), classes)
    else:
        model = ResNet(tuple(int(n) for n in meta["stage_sizes"]), tuple(int(w) for w in meta["widths"]), classes)
    params: dict = {}
    stats: dict = {}
    potentials: dict = {}
    nir = _nir()
    for name, node in graph.nodes.items():
        path = tuple(name.split("."))
        if isinstance(node, nir.Conv2d):
            scale = float(node.metadata["input_scale"])
            kernel = np.transpose(np.asarray(node.weight), (2, 3, 1, 0)) / scale
            features = kernel.shape[-1]
            params[(*path, "Conv_0", "kernel")] = kernel
            params[(*path, "BatchNorm_0", "scale")] = np.ones(features)
            params[(*path, "BatchNorm_0", "bias")] = np.asarray(node.bias)
            stats[(*path, "BatchNorm_0", "mean")] = np.zeros(features)
            stats[(*path, "BatchNorm_0", "var")] = np.full(features, 1.0 - eps)
        elif isinstance(node, nir.Affine):
            kernel = np.asarray(node.weight).T / float(node.metadata["input_scale"])
            chw = [int(n) for n in np.asarray(node.metadata["flattened_from"])]
            if chw:
                c, h, w = chw
                kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)
            params[(*path, "kernel")] = kernel
            params[(*path, "bias")] = np.asarray(node.bias)
        elif isinstance(node, nir.IF):
            params[(*path, "threshold")] = np.asarray(node.v_threshold).flat[0]
            v0 = np.asarray(node.metadata["v_init"])
            v0 = np.transpose(v0, (1, 2, 0)) if v0.ndim == 3 else v0
            potentials[(*path, "v0")] = v0.flat[0] if np.all(v0 == v0.flat[0]) else v0
    site = {key: meta[key] for key in ("num_steps", "presim_steps", "iterations", "eps", "saturated")}
    snn = spiking_model(
        model,
        num_steps=int(site["num_steps"]),
        presim_steps=int(site["presim_steps"]),
        iterations=int(site["iterations"]),
        eps=float(site["eps"]),
        saturated=_text(site["saturated"]),
    )
    unflatten = traverse_util.unflatten_dict
    as_arrays = lambda tree: jax.tree.map(jnp.asarray, unflatten(tree))  # noqa: E731
    variables = {"params": as_arrays(params), INITIAL_POTENTIAL: as_arrays(potentials)}
    if stats:
        variables["batch_stats"] = as_arrays(stats)
    return snn, variables


def run_nir(graph, images, *, semantics: str = "offsetjax", num_steps: int | None = None) -> jax.Array:
    """Run a graph written by :func:`to_nir` on ``images`` ``[B, H, W, C]``.

    Returns:
      The running mean of the output over steps, ``[T, B, classes]``, as :func:`offsetjax.simulate`.
    """
    check_choice("semantics", semantics, SEMANTICS)
    nir = _nir()
    incoming = _check_graph(nir, graph, semantics)
    meta = dict(graph.metadata)
    num_steps = check_int("num_steps", int(meta.get("num_steps", 1)) if num_steps is None else num_steps, minimum=1)
    images = check_image_batch(jnp.asarray(images))
    channels, height, width = (int(n) for n in np.asarray(graph.nodes["input"].input_type["input"]))
    if images.ndim != 4 or tuple(images.shape[1:]) != (height, width, channels):
        raise ValueError(
            f"images must be one batch [B, H, W, C] = [B, {height}, {width}, {channels}] for this graph (its input "
            f"is C, H, W = {channels}, {height}, {width}), got shape {tuple(images.shape)}"
        )
    values: dict[str, jax.Array] = {}

    def compute(name: str) -> jax.Array:
        if name in values:
            return values[name]
        node = graph.nodes[name]
        if isinstance(node, nir.Input):
            out = jnp.transpose(jnp.asarray(images), (0, 3, 1, 2))[None]  # [1, B, C, H, W]
        else:
            inputs = [compute(source) for source in incoming[name]]
            steps = max(x.shape[0] for x in inputs)
            x = sum(jnp.broadcast_to(v, (steps, *v.shape[1:])) for v in inputs)
            out = _apply_node(nir, node, x, semantics, num_steps)
        values[name] = out
        return out

    out = compute("output")
    out = jnp.broadcast_to(out, (num_steps, *out.shape[1:]))
    steps = jnp.arange(1, num_steps + 1, dtype=out.dtype).reshape(-1, 1, 1)
    return jnp.cumsum(out, axis=0) / steps


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


def _apply_node(nir, node, x, semantics: str, num_steps: int):
    lead = x.shape[:2]
    if isinstance(node, nir.Conv2d):
        stride = tuple(np.broadcast_to(node.stride, 2))
        pad = tuple(int(p) for p in np.broadcast_to(node.padding, 2))
        folded = x.reshape(-1, *x.shape[2:])
        y = (
            jax.lax.conv_general_dilated(
                folded,
                jnp.asarray(node.weight, x.dtype),
                stride,
                [(pad[0], pad[0]), (pad[1], pad[1])],
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
            )
            + jnp.asarray(node.bias, x.dtype)[None, :, None, None]
        )
        return y.reshape(*lead, *y.shape[1:])
    if isinstance(node, nir.SumPool2d):
        k, s = tuple(int(v) for v in node.kernel_size), tuple(int(v) for v in node.stride)
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, 1, *k), (1, 1, 1, *s), "VALID")
    if isinstance(node, nir.Flatten):
        return x.reshape(*lead, -1)
    if isinstance(node, nir.Affine):
        return x @ jnp.asarray(node.weight, x.dtype).T + jnp.asarray(node.bias, x.dtype)[None, None]
    if isinstance(node, nir.Scale):
        return x * jnp.asarray(node.scale, x.dtype)[None, None]
    if isinstance(node, nir.IF):
        currents = jnp.broadcast_to(x, (num_steps, *x.shape[1:]))
        theta = jnp.asarray(node.v_threshold, x.dtype)
        if semantics == "offsetjax":
            meta = node.metadata
            v0 = jnp.asarray(meta["v_init"], x.dtype)
            if int(meta.get("iterations", 0)):
                v0 = calibrate_initial_potential(
                    currents,
                    theta,
                    v0,
                    presim_steps=int(meta["presim_steps"]),
                    iterations=int(meta["iterations"]),
                    eps=float(meta["eps"]),
                    saturated=str(meta["saturated"]),
                )
            spikes, _ = if_simulate(currents, theta, v0)
            return spikes
        theta = jnp.broadcast_to(theta, currents.shape[1:])
        reset = jnp.broadcast_to(jnp.asarray(node.v_reset, x.dtype), currents.shape[1:])

        def step(v, current):
            v = v + current
            fired = v > theta
            return jnp.where(fired, reset, v), fired.astype(x.dtype)

        _, spikes = jax.lax.scan(step, jnp.zeros(currents.shape[1:], x.dtype), currents)
        return spikes
    if isinstance(node, nir.Output):
        return x
    raise ValueError(f"run_nir does not run {type(node).__name__} nodes")
