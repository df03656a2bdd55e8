"""A traced spiking network (:func:`offsetjax._trace.trace_sites`) read as a NIR graph.

The jaxpr is interpreted once with the network's variables as constants. Every value that does
not depend on the input (batch-norm factors, reshaped biases) is computed; every value that
does is a :class:`_Signal`: a sum of NIR nodes' outputs, each times a pending per-neuron scale,
plus a pending per-neuron offset. Scales and offsets travel with the signal until a node can
absorb them: a scale on a layer's input is folded into that layer's weights (a site's
threshold theta, a pool's 1/k^2), and a scale or offset on a convolution's or dense layer's
output is folded into its weights and bias (batch norm, a bias current). What cannot be
absorbed becomes a diagonal 1x1 convolution or dense layer (a scale per channel; the PyTorch
readers have no ``Scale`` node) or a ``Scale`` node (per neuron), or is refused with the
operation and where it is.

Layouts: JAX values are ``[*lead, H, W, C]`` (or ``[*lead, F]``), NIR's are ``C, H, W`` (or
``F``). A signal keeps its pending arrays in JAX's neuron layout; a 1-D signal made by a flatten
also keeps ``order``, the NIR index of each JAX feature (NIR flattens C, H, W; JAX H, W, C).
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any

import numpy as np

from offsetjax import _jax_internals as internals
from offsetjax._trace import SiteOperands, site_p

#: Operations that only move values between the time and batch axes, or change nothing.
_IDENTITY = {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}
_ADD = {"add", "add_any"}


@dataclasses.dataclass
class _Signal:
    terms: list[tuple[str, np.ndarray]]  # (NIR node, scale [neuron shape, JAX layout])
    bias: np.ndarray  # [neuron shape, JAX layout]
    lead: int  # leading (time, batch) axes of the JAX value
    shape: tuple[int, ...]  # neuron shape, JAX layout
    order: np.ndarray | None = None  # 1-D signal from a flatten: the NIR index of each JAX feature

    def replace(self, **changes) -> _Signal:
        return dataclasses.replace(self, **changes)


def _nir_layout(array: np.ndarray, signal: _Signal) -> np.ndarray:
    """A neuron-shaped array in JAX layout as NIR lays out that node's neurons."""
    array = np.broadcast_to(array, signal.shape)
    if len(signal.shape) == 3:
        return np.ascontiguousarray(np.transpose(array, (2, 0, 1)))
    if signal.order is not None:
        out = np.empty_like(array)
        out[signal.order] = array
        return out
    return np.array(array)


def _per_channel(array: np.ndarray) -> np.ndarray | None:
    """The channel vector of an ``[H, W, C]`` (or ``[F]``) array constant over space, else None."""
    if array.ndim == 1:
        return array
    channels = array[0, 0]
    return channels if np.array_equal(np.broadcast_to(channels, array.shape), array) else None


def _nir_channels(array: np.ndarray, signal: _Signal) -> np.ndarray | None:
    """A neuron-shaped array (JAX layout) as one value per NIR output channel (C of a map, or
    each feature of a vector in NIR's order); None when it varies within a channel."""
    full = np.broadcast_to(array, signal.shape)
    return _per_channel(full) if full.ndim == 3 else _nir_layout(full, signal)


class GraphWriter:
    """Interprets the traced network's jaxpr into NIR nodes and edges."""

    def __init__(self, nir, site_metadata: dict, batch: int):
        self.nir = nir
        self.site_metadata = site_metadata
        self.batch = batch  # the traced frame's leading axes hold this many samples
        self.layouts: dict[str, _Signal] = {}  # each node's output as a signal of scale 1 (its shape, order)
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.linear: set[str] = set()  # nodes with weights a scale or offset can be folded into
        self.used: set[str] = set()  # nodes with an outgoing edge
        self.folded: set[str] = set()  # linear nodes that absorbed their output's scale or offset
        self.inputs: dict[str, list[str]] = {}  # each node's sources
        self.originals: dict[str, Any] = {}  # a folded node as it was before its first fold
        self.copies: dict[str, str] = {}  # a folded node -> its unfolded copy, for its other readers

    # -- nodes and edges -------------------------------------------------------------------

    def add(self, name: str, node, sources: list[str], layout: _Signal | None = None) -> str:
        """Add ``node`` fed by ``sources`` under a free name derived from ``name`` (a scope
        path, joined by "_": NIR files store nodes as HDF5 groups, no "/", and PyTorch readers
        name modules after nodes, no ".")."""
        name = name.replace("/", "_").replace(".", "_") or type(node).__name__.lower()
        base, count = name, 1
        while name in self.nodes:
            name, count = f"{base}_{count}", count + 1
        # A node whose weights absorbed the scale or offset its first reader wanted is read by the
        # others as it was: an unfolded copy (the same weights, the same inputs).
        sources = [
            self._unfolded(source) if source in self.folded and source in self.used else source for source in sources
        ]
        for source in sources:
            self.used.add(source)
            self.edges.append((source, name))
        self.nodes[name] = node
        self.inputs[name] = list(sources)
        if layout is not None:
            self.layouts[name] = layout.replace(terms=[(name, np.ones(layout.shape))], bias=np.zeros(layout.shape))
        return name

    def materialize(self, signal: _Signal, where: str) -> list[str]:
        """Nodes whose summed outputs are ``signal`` (every scale 1, no offset left). An offset
        goes into the bias of a convolution or dense layer among them that nothing else reads
        yet, else into a diagonal node (an identity 1x1 convolution or dense layer) on one of them."""
        sources = [self._unscaled(node, scale) for node, scale in signal.terms]
        if np.any(signal.bias != 0):
            bias = _nir_channels(signal.bias, signal)
            if bias is None:
                raise ValueError(
                    f"to_nir: a constant offset added in {where or 'the network'} varies over space within a "
                    "channel: NIR's convolutions and dense layers hold one bias per output channel"
                )
            target = next((node for node in sources if self._foldable(node)), None)
            if target is None:  # e.g. the bias current of a site fed by a sum of sites
                sources[0] = self._diagonal(sources[0], np.ones(len(bias)), bias)
            else:
                self._fold(target)
                self.nodes[target].bias = self.nodes[target].bias + bias
        return sources

    def _fold(self, node: str) -> None:
        """Mark ``node`` (a linear node nothing reads yet) as about to absorb a scale or offset,
        keeping it as it was for any later reader (:meth:`_unfolded`)."""
        self.originals.setdefault(node, dataclasses.replace(self.nodes[node]))
        self.folded.add(node)

    def _unfolded(self, node: str) -> str:
        """A copy of the folded ``node`` as it was before folding, reading the same inputs."""
        if node not in self.copies:
            self.copies[node] = self.add(
                f"{node}_unfolded", dataclasses.replace(self.originals[node]), self.inputs[node]
            )
            self.layouts[self.copies[node]] = self.layouts[node].replace(
                terms=[(self.copies[node], np.ones(self.layouts[node].shape))]
            )
        return self.copies[node]

    def _diagonal(self, node: str, channels: np.ndarray, bias: np.ndarray) -> str:
        """``node``'s output times ``channels`` plus ``bias`` (one each per channel) as a diagonal
        1x1 convolution or dense layer (sinabs and norse read no Scale node)."""
        layout = self.layouts[node]
        diagonal = np.diag(channels)
        if len(layout.shape) == 3:
            diagonal = self._conv(layout.shape[:2], diagonal[:, :, None, None], 1, 0, 1, 1, bias)
        else:
            diagonal = self.nir.Affine(weight=diagonal, bias=bias)
        return self.add(f"{node}_scale", diagonal, [node], layout)

    def _foldable(self, node: str) -> bool:
        return node in self.linear and node not in self.used

    def _unscaled(self, node: str, scale: np.ndarray) -> str:
        """``node``'s output times ``scale`` as a node: folded into its weights (a convolution or
        dense layer no other node reads yet), else a diagonal 1x1 convolution or dense layer (one
        scale per channel), else a Scale node."""
        if np.all(scale == 1):
            return node
        layout = self.layouts[node]
        channels = _nir_channels(scale, layout)
        if channels is None:  # a scale per neuron: only NIR's Scale node holds it
            return self.add(f"{node}_scale", self.nir.Scale(scale=_nir_layout(scale, layout)), [node], layout)
        if self._foldable(node):
            self._fold(node)
            weights = self.nodes[node]
            weights.weight = weights.weight * channels.reshape(-1, *([1] * (weights.weight.ndim - 1)))
            weights.bias = weights.bias * channels
            return node
        # A scale per channel (an identity shortcut's theta is one) as a diagonal node.
        return self._diagonal(node, channels, np.zeros(len(channels)))

    def common_scale(self, signal: _Signal, per_channel: bool) -> tuple[list[str], np.ndarray]:
        """The signal as nodes times one scale for all (per channel if ``per_channel``), and no
        offset: the form a convolution, a dense layer, a pool or a flatten takes as input."""
        scales = [np.broadcast_to(scale, signal.shape) for _, scale in signal.terms]
        common = scales[0]
        shared = all(np.array_equal(common, other) for other in scales[1:])
        if np.any(signal.bias != 0) or not shared or (per_channel and _per_channel(common) is None):
            return self.materialize(signal, ""), np.ones(signal.shape)
        return [node for node, _ in signal.terms], common

    def _conv(self, input_shape, weight, stride, padding, dilation, groups, bias):
        """A ``nir.Conv2d`` node, its fields named (NIR's order is not relied on)."""
        return self.nir.Conv2d(
            input_shape=input_shape,
            weight=weight,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    # -- the jaxpr ---------------------------------------------------------------------------

    def run(self, closed, inputs: list, scope: str = "") -> list:
        jaxpr = closed.jaxpr
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts))
        env.update(zip(jaxpr.invars, inputs))

        def read(v):
            return v.val if isinstance(v, internals.Literal) else env[v]

        for equation in jaxpr.eqns:
            values = [read(v) for v in equation.invars]
            where = "/".join(part for part in (scope, internals.name_stack(equation)) if part)
            where = where.partition("/")[2] if not scope else where  # the top module's name is not a layer's
            if not any(isinstance(value, _Signal) for value in values):
                params = internals.bind_params(equation)
                outs = equation.primitive.bind(*values, **params)
                outs = outs if equation.primitive.multiple_results else [outs]
            else:
                outs = self.apply(equation, values, where)
            for var, value in zip(equation.outvars, outs):
                env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def apply(self, equation, values: list, where: str) -> list:
        name = equation.primitive.name
        out_shape = tuple(equation.outvars[0].aval.shape)
        signals = [value for value in values if isinstance(value, _Signal)]
        nested = [equation.params.get(key) for key in ("jaxpr", "call_jaxpr", "fun_jaxpr")]
        nested = [inner for inner in nested if inner is not None and hasattr(inner, "jaxpr") or hasattr(inner, "eqns")]
        if nested:  # a call (jit, custom_jvp, remat ...): its body, inlined (remat's is an open jaxpr)
            inner = nested[0]
            closed = inner if hasattr(inner, "jaxpr") else types.SimpleNamespace(jaxpr=inner, consts=[])
            return self.run(closed, values, where)
        if equation.primitive is site_p:
            return [self.site(equation, values, where)]
        if name in _IDENTITY:
            return [values[0]]
        if name == "transpose":
            return [self.transpose(signals[0], equation.params["permutation"], where)]
        if name == "reshape":
            return [self.reshape(signals[0], out_shape, where)]
        if name in _ADD | {"sub"}:
            sign = -1.0 if name == "sub" else 1.0
            a, b = values
            if len(signals) == 2:
                return [self.add_signals(a, b, sign)]
            if isinstance(a, _Signal):
                return [a.replace(bias=a.bias + sign * self.constant(b, a, out_shape, where))]
            scaled = self.scaled(b, np.asarray(sign))
            return [scaled.replace(bias=scaled.bias + self.constant(a, b, out_shape, where))]
        if name in ("mul", "div", "neg"):
            if len(signals) != len(values) - (name != "neg"):
                raise ValueError(f"to_nir: {where or 'the network'} multiplies spikes by spikes: NIR cannot express it")
            if name == "neg":
                return [self.scaled(values[0], np.asarray(-1.0))]
            signal = signals[0]
            if name == "div" and not isinstance(values[0], _Signal):
                raise ValueError(f"to_nir: {where or 'the network'} divides by spikes: NIR cannot express it")
            factor = self.constant(values[1] if isinstance(values[0], _Signal) else values[0], signal, out_shape, where)
            return [self.scaled(signal, 1.0 / factor if name == "div" else factor)]
        if name == "conv_general_dilated" and isinstance(values[0], _Signal) and len(signals) == 1:
            return [self.conv(equation, signals[0], np.asarray(values[1], np.float64), where)]
        if name == "dot_general" and isinstance(values[0], _Signal) and len(signals) == 1:
            return [self.dense(equation, signals[0], np.asarray(values[1], np.float64), where)]
        if name == "concatenate" and len(signals) == len(values):
            return [self.concatenate(signals, equation.params["dimension"], out_shape, where)]
        if name == "reduce_window_sum":
            return [self.sum_pool(equation, signals[0], where)]
        if name == "reduce_sum":
            return [self.global_sum(equation, signals[0], where)]
        raise ValueError(
            f"to_nir cannot express `{name}` applied to spikes ({where or 'at the top level'}): NIR graphs hold "
            "convolutions, dense layers, batch norm (folded), sum and average pooling, flattening, scaling, "
            "residual additions, concatenation and IF sites"
        )

    def constant(self, value, signal: _Signal, out_shape: tuple, where: str) -> np.ndarray:
        """A constant operand as a neuron-shaped array (it must not vary over time or batch)."""
        value = np.asarray(value, np.float64)
        if value.ndim > len(out_shape) or np.broadcast_shapes(value.shape, out_shape) != out_shape:
            raise ValueError(f"to_nir: a constant in {where or 'the network'} reshapes the spikes it is applied to")
        full = np.broadcast_to(value, out_shape)
        first = full[(0,) * signal.lead]
        if not np.array_equal(np.broadcast_to(first, full.shape), full):
            raise ValueError(f"to_nir: a constant in {where or 'the network'} varies over time or batch")
        return np.array(first)

    def scaled(self, signal: _Signal, factor: np.ndarray) -> _Signal:
        return signal.replace(terms=[(node, scale * factor) for node, scale in signal.terms], bias=signal.bias * factor)

    def add_signals(self, a: _Signal, b: _Signal, sign: float) -> _Signal:
        if (a.lead, a.shape) != (b.lead, b.shape) or (a.order is None) != (b.order is None):
            raise ValueError(f"to_nir: spikes of shapes {a.shape} and {b.shape} are added")
        if a.order is not None and not np.array_equal(a.order, b.order):
            raise ValueError("to_nir: two flattened spike tensors of different orders are added")
        terms = dict(a.terms)
        for node, scale in b.terms:
            terms[node] = terms.get(node, 0.0) + sign * scale
        return a.replace(terms=list(terms.items()), bias=a.bias + sign * b.bias)

    def transpose(self, signal: _Signal, permutation, where: str) -> _Signal:
        lead = signal.lead
        if sorted(permutation[:lead]) != list(range(lead)) or list(permutation[lead:]) != list(
            range(lead, len(permutation))
        ):
            raise ValueError(
                f"to_nir: {where or 'the network'} transposes the neurons' axes (permutation {tuple(permutation)}); "
                "NIR graphs keep one layout"
            )
        return signal

    def reshape(self, signal: _Signal, out_shape: tuple, where: str) -> _Signal:
        neurons = len(signal.shape)
        batch = self.batch
        if tuple(out_shape[-neurons:]) == signal.shape and math.prod(out_shape[:-neurons]) == batch:
            return signal.replace(lead=len(out_shape) - neurons)
        if math.prod(out_shape[:-1]) == batch and out_shape[-1] == math.prod(signal.shape) and neurons == 3:
            return self.flatten(signal, len(out_shape) - 1, where)
        neurons_out = next(
            (tuple(out_shape[k:]) for k in range(len(out_shape) + 1) if math.prod(out_shape[:k]) == batch), out_shape
        )
        raise ValueError(
            f"to_nir: {where or 'the network'} reshapes neurons {signal.shape} to {neurons_out}; NIR's Flatten "
            "flattens (H, W, C) feature maps into vectors, nothing else (no node turns a vector back into a map)"
        )

    def flatten(self, signal: _Signal, lead: int, where: str) -> _Signal:
        sources, scale = self.common_scale(signal, per_channel=False)
        height, width, channels = signal.shape
        node = self.nir.Flatten(input_type={"input": np.array([channels, height, width])}, start_dim=-3, end_dim=-1)
        order = np.arange(channels * height * width).reshape(channels, height, width).transpose(1, 2, 0).reshape(-1)
        flat = _Signal([], np.zeros(order.size), lead, (order.size,), order)
        name = self.add(f"{where}/flatten" if where else "flatten", node, sources, flat)
        return flat.replace(terms=[(name, scale.reshape(-1))])

    def site(self, equation, values: list, where: str) -> _Signal:
        signal, theta, v0, bias = SiteOperands.of_equation(equation, values)
        if not isinstance(signal, _Signal) or any(isinstance(v, _Signal) for v in values[1:]):
            raise ValueError(f"to_nir: the site {equation.params['path']} is not fed by the input")
        if bias is not None:  # the data_bias current, added before the neurons integrate
            signal = signal.replace(bias=signal.bias + np.broadcast_to(np.asarray(bias, np.float64), signal.shape))
        theta = np.broadcast_to(np.asarray(theta, np.float64), signal.shape)  # one per site or per channel
        v_init = _nir_layout(np.asarray(v0, np.float64), signal)
        shape = v_init.shape
        metadata = {"reset": "subtract", "v_init": v_init, "fire": "v >= v_threshold", **self.site_metadata}
        node = self.nir.IF(
            r=np.ones(shape), v_threshold=_nir_layout(theta, signal), v_reset=np.zeros(shape), metadata=metadata
        )
        sources = self.materialize(signal, where)
        name = self.add(equation.params["path"], node, sources, signal)
        return signal.replace(terms=[(name, np.array(theta))], bias=np.zeros(signal.shape))

    def conv(self, equation, signal: _Signal, kernel: np.ndarray, where: str) -> _Signal:
        params = equation.params
        numbers = params["dimension_numbers"]
        channels_last = (0, 3, 1, 2)
        if (
            signal.lead != 1
            or len(signal.shape) != 3
            or tuple(numbers.lhs_spec) != channels_last
            or tuple(numbers.out_spec) != channels_last
        ):
            raise ValueError(
                f"to_nir: the convolution in {where or 'the network'} is not a 2-D convolution of [B, H, W, C]"
            )
        padding = [tuple(int(p) for p in pair) for pair in params["padding"]]
        if any(low != high for low, high in padding):
            raise ValueError(
                f"to_nir: the convolution in {where or 'the network'} pads {tuple(padding)}, unequally on the two sides "
                "(e.g. flax's padding='SAME' at stride 2); NIR's Conv2d pads both sides alike: give the convolution "
                "explicit symmetric padding"
            )
        if any(d != 1 for d in params["lhs_dilation"]) or params["batch_group_count"] != 1:
            raise ValueError(f"to_nir: the convolution in {where or 'the network'} is transposed or batch-grouped")
        weight = np.transpose(kernel, tuple(numbers.rhs_spec))  # [out, in / groups, kh, kw]
        groups = int(params["feature_group_count"])
        sources, scale = self.common_scale(signal, per_channel=True)
        channels = _per_channel(scale)
        per_group_in, per_group_out = weight.shape[1], weight.shape[0] // groups
        index = (np.arange(weight.shape[0]) // per_group_out)[:, None] * per_group_in + np.arange(per_group_in)
        weight = weight * channels[index][:, :, None, None]
        if groups > 1:  # as a dense (block-diagonal) kernel: nir's type check reads Cin off the weight
            full = np.zeros((weight.shape[0], per_group_in * groups, *weight.shape[2:]))
            full[np.arange(weight.shape[0])[:, None], index] = weight
            weight, groups = full, 1
        height, width = signal.shape[:2]
        node = self._conv(
            (height, width),
            weight,
            tuple(int(s) for s in params["window_strides"]),
            tuple(low for low, _ in padding),
            tuple(int(d) for d in params["rhs_dilation"]),
            groups,
            np.zeros(weight.shape[0]),
        )
        return self._linear_out(where, node, sources, signal, tuple(equation.outvars[0].aval.shape))

    def dense(self, equation, signal: _Signal, kernel: np.ndarray, where: str) -> _Signal:
        (contract_lhs, contract_rhs), (batch_lhs, _) = equation.params["dimension_numbers"]
        rank = signal.lead + len(signal.shape)
        if tuple(contract_lhs) != (rank - 1,) or tuple(contract_rhs) != (0,) or batch_lhs or kernel.ndim != 2:
            raise ValueError(
                f"to_nir: the matrix product in {where or 'the network'} is not a dense layer over the last axis"
            )
        sources, scale = self.common_scale(signal, per_channel=True)
        weight = kernel * _per_channel(scale)[:, None]  # [in, out], JAX order
        out_shape = tuple(equation.outvars[0].aval.shape)
        if len(signal.shape) == 3:  # a dense layer over channels: a 1x1 convolution
            height, width = signal.shape[:2]
            node = self._conv((height, width), weight.T[:, :, None, None], 1, 0, 1, 1, np.zeros(weight.shape[1]))
            return self._linear_out(where, node, sources, signal, out_shape)
        if signal.order is not None:
            rows = np.empty_like(weight)
            rows[signal.order] = weight
            weight = rows
        node = self.nir.Affine(weight=np.ascontiguousarray(weight.T), bias=np.zeros(weight.shape[1]))
        return self._linear_out(where, node, sources, signal, out_shape)

    def concatenate(self, signals: list[_Signal], axis: int, out_shape: tuple, where: str) -> _Signal:
        """Spike tensors joined along their channels (or features): each into its slice of the
        result by a placement 1x1 convolution (or dense layer) holding its scale, all summed."""
        first = signals[0]
        rank = len(first.shape)
        if (
            rank not in (1, 3)
            or axis != first.lead + rank - 1
            or any(s.lead != first.lead or s.shape[:-1] != first.shape[:-1] or s.order is not None for s in signals)
        ):
            raise ValueError(
                f"to_nir: {where or 'the network'} concatenates spikes along axis {axis}; NIR graphs join feature "
                "maps along their channels (or vectors along their features) only"
            )
        neurons = tuple(out_shape[first.lead :])
        total, offset, terms = neurons[-1], 0, []
        for index, signal in enumerate(signals):
            sources, scale = self.common_scale(signal, per_channel=True)
            channels = signal.shape[-1]
            weight = np.zeros((total, channels))
            weight[offset + np.arange(channels), np.arange(channels)] = _per_channel(
                np.broadcast_to(scale, signal.shape)
            )
            if rank == 3:
                node = self._conv(signal.shape[:2], weight[:, :, None, None], 1, 0, 1, 1, np.zeros(total))
            else:
                node = self.nir.Affine(weight=weight, bias=np.zeros(total))
            layout = _Signal([], np.zeros(neurons), first.lead, neurons)
            name = self.add(f"{where}/concat{index}" if where else f"concat{index}", node, sources, layout)
            self.linear.add(name)
            terms.append((name, np.ones(neurons)))
            offset += channels
        return _Signal(terms, np.zeros(neurons), first.lead, neurons)

    def _linear_out(self, where: str, node, sources: list[str], signal: _Signal, out_shape: tuple) -> _Signal:
        neurons = out_shape[signal.lead :]
        name = self.add(where, node, sources, _Signal([], np.zeros(neurons), signal.lead, neurons))
        self.linear.add(name)
        return self.layouts[name]

    def sum_pool(self, equation, signal: _Signal, where: str) -> _Signal:
        params = equation.params
        lead, rank = signal.lead, signal.lead + len(signal.shape)
        window, strides = tuple(params["window_dimensions"]), tuple(params["window_strides"])
        padding = [tuple(pair) for pair in params["padding"]]
        others = [axis for axis in range(rank) if axis not in (lead, lead + 1)]
        plain = (
            len(signal.shape) == 3
            and all(window[a] == 1 and strides[a] == 1 and padding[a] == (0, 0) for a in others)
            and all(low == high for low, high in padding[lead : lead + 2])
            and all(d == 1 for d in (*params["base_dilation"], *params["window_dilation"]))
        )
        if not plain:
            raise ValueError(f"to_nir: the pooling in {where or 'the network'} is not a 2-D pooling over (H, W)")
        pad = tuple(low for low, _ in padding[lead : lead + 2])
        neurons = tuple(equation.outvars[0].aval.shape[lead:])
        return self.pool(signal, window[lead : lead + 2], strides[lead : lead + 2], pad, neurons, where)

    def global_sum(self, equation, signal: _Signal, where: str) -> _Signal:
        axes = tuple(sorted(equation.params["axes"]))
        if len(signal.shape) != 3 or axes != (signal.lead, signal.lead + 1):
            raise ValueError(f"to_nir: {where or 'the network'} sums spikes over axes {axes}, not over (H, W)")
        height, width, channels = signal.shape
        pooled = self.pool(signal, (height, width), (height, width), (0, 0), (1, 1, channels), where)
        return self.flatten(pooled, signal.lead, where)

    def pool(self, signal: _Signal, kernel, stride, pad, neurons: tuple, where: str) -> _Signal:
        """A SumPool2d; a per-channel scale passes through it, an offset is multiplied by the
        window's size (with padding, it is folded before instead)."""
        if any(pad):
            signal = self._no_offset(signal)
        bias = _per_channel(np.broadcast_to(signal.bias, signal.shape))
        if bias is None:
            raise ValueError(f"to_nir: the offset pooled in {where or 'the network'} varies over space")
        sources, scale = self.common_scale(signal.replace(bias=np.zeros(signal.shape)), per_channel=True)
        node = self.nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(pad))
        out = _Signal([], np.broadcast_to(bias * math.prod(kernel), neurons), signal.lead, neurons)
        name = self.add(f"{where}/pool" if where else "pool", node, sources, out)
        return out.replace(terms=[(name, np.broadcast_to(_per_channel(scale), neurons))])

    def _no_offset(self, signal: _Signal) -> _Signal:
        sources = self.materialize(signal, "")
        return signal.replace(terms=[(node, np.ones(signal.shape)) for node in sources], bias=np.zeros(signal.shape))
