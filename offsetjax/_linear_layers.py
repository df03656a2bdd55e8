"""The linear layers of a network, seen through Flax method interception, for counting.

A *linear layer* is a module that owns a ``kernel`` parameter (``nn.Dense``, ``nn.Conv``,
:class:`offsetjax.models.layers.Conv`, ...): every multiply-accumulate of a network happens in
one. Two interceptors read them without changing the network:

* :func:`count_macs` replaces each linear layer's input by ones: with every weight 1 and every
  bias 0 (the connectivity view of :mod:`offsetjax.operations`), the sum of the layer's output is
  its number of multiply-accumulates, each layer at its own input's resolution;
* :func:`count_input_events` leaves the network's computation as it is and sows, per step and
  image, the synaptic operations NeuroBench's ``SynapticOperations`` would charge the layer: its
  nonzero inputs times their connections to nonzero weights, as accumulates when the nonzero
  inputs all have one magnitude (spikes, whatever their scale theta) and as multiply-accumulates
  otherwise (analog images, average-pooled spikes).

Convolution padding taps are never counted: a zero that is padding is no input (NeuroBench's
``Dense`` count does the same).
"""

from __future__ import annotations

import contextvars
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

#: The collection :func:`count_macs` sows each layer's multiply-accumulates into.
MACS = "linear_layer_macs"
#: The collection :func:`count_input_events` sows each layer's ``accumulates`` and
#: ``multiply_accumulates`` (``[T', B]``) into.
INPUT_EVENTS = "linear_layer_events"


#: Set while :func:`count_input_events` applies its own copy of a layer (not to be counted).
_COUNTING = contextvars.ContextVar("offsetjax_counting_layer", default=False)


def is_linear_layer(context: nn.module.InterceptorContext) -> bool:
    """Whether an intercepted call is a linear layer's ``__call__`` (its module owns a kernel)."""
    return context.method_name == "__call__" and not _COUNTING.get() and context.module.has_variable("params", "kernel")


def count_macs(next_fun, args, kwargs, context):
    """Interceptor: each linear layer computed on ones, its output's sum sown into :data:`MACS`."""
    if not is_linear_layer(context):
        return next_fun(*args, **kwargs)
    out = next_fun(jnp.ones_like(args[0]), *args[1:], **kwargs)
    context.module.sow(MACS, "macs", jnp.sum(out.astype(jnp.float32)))
    return out


def count_input_events(next_fun, args, kwargs, context):
    """Interceptor: each linear layer's NeuroBench synaptic operations per step and image (module
    docstring), sown into :data:`INPUT_EVENTS` as ``[T', B]`` (``T'`` the leading axis of its
    input: 1 for the image entered once)."""
    if not is_linear_layer(context):
        return next_fun(*args, **kwargs)
    inputs = args[0]
    out = next_fun(*args, **kwargs)
    module = context.module
    own = module.variables["params"]
    binary = {
        name: (value != 0).astype(jnp.float32) if name == "kernel" else jnp.zeros_like(value, jnp.float32)
        for name, value in own.items()
    }
    float32 = {"dtype": jnp.float32} if "dtype" in {field.name for field in dataclasses.fields(module)} else {}
    counter = module.clone(parent=None, name=None, **float32)
    magnitude = jnp.abs(inputs.astype(jnp.float32))
    nonzero = magnitude > 0
    token = _COUNTING.set(True)
    try:
        connections = counter.apply({"params": binary}, nonzero.astype(jnp.float32))
    finally:
        _COUNTING.reset(token)
    sow_input_events(module, inputs, connections)
    return out


def sow_input_events(module: nn.Module, inputs, connections) -> None:
    """Sow one layer's NeuroBench events into :data:`INPUT_EVENTS`, ``[T', B]``: ``connections``
    (``[T', B, ...]``, the layer applied to its nonzero inputs with its nonzero weights as ones)
    summed per step and image, as accumulates where the nonzero ``inputs`` share one magnitude
    (spikes), else as multiply-accumulates."""
    events = jnp.sum(connections, axis=tuple(range(2, connections.ndim)))  # [T', B]
    magnitude = jnp.abs(inputs.astype(jnp.float32))
    nonzero = magnitude > 0
    values = tuple(range(2, inputs.ndim))
    largest = jnp.max(jnp.where(nonzero, magnitude, 0.0), axis=values)
    smallest = jnp.min(jnp.where(nonzero, magnitude, jnp.inf), axis=values)
    spikes = (largest == smallest) | ~jnp.any(nonzero, axis=values)
    module.sow(INPUT_EVENTS, "accumulates", jnp.where(spikes, events, 0.0))
    module.sow(INPUT_EVENTS, "multiply_accumulates", jnp.where(spikes, 0.0, events))
