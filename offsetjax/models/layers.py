"""Building blocks shared by the networks.

Every block works on inputs with any number of leading batch axes (``[B, H, W, C]`` for the
ANN, ``[T, B, H, W, C]`` for the SNN), so one definition serves both.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from offsetjax.activation import QCFS

__all__ = [
    "Activation",
    "MATMUL_MAX_PIXELS",
    "Conv",
    "ConvBN",
    "avg_pool",
    "flatten",
    "global_avg_pool",
    "pools_as_sums",
    "xla_convolutions",
]

#: A factory of activation sites: ``QCFS`` (ANN) or ``IFActivation`` (SNN), called with ``name=``.
ActivationFactory = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True, init=False)
class Activation:
    """A hashable activation factory: ``Activation(QCFS, levels=4)(name="act")`` is
    ``QCFS(levels=4, name="act")``.

    Equal settings give equal factories (a ``functools.partial`` or a lambda compares by
    identity), so two networks built with equal settings are equal, hash alike, and hit the same
    compiled program wherever a network is a static ``jit`` argument.

    >>> Activation(QCFS, levels=4) == Activation(QCFS, levels=4)
    True
    """

    module: type[nn.Module]
    options: tuple[tuple[str, Any], ...]

    def __init__(self, module: type[nn.Module], **options: Any):
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "options", tuple(sorted(options.items())))

    def __call__(self, **kwargs: Any) -> nn.Module:
        return self.module(**dict(self.options), **kwargs)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options)
        return f"Activation({self.module.__name__}{', ' if options else ''}{options})"


#: The default ANN activation: QCFS with L = 4.
qcfs_l4 = Activation(QCFS, levels=4)

#: Batch norm as in PyTorch (running statistics updated with weight 0.1).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


#: On the CPU backend, stride-1 convolutions over feature maps of at most this many pixels run as
#: shifted matmuls (on GPU and TPU the backend's convolution is used). XLA's CPU convolution is ~85x slower than the matmul form on VGG-16's 2x2x512 maps
#: (0.37 s vs 4.4 ms at batch 32, measured here); from 4x4 up the two are on par or XLA wins.
MATMUL_MAX_PIXELS = 4


class Conv(nn.Module):
    """Bias-free convolution padded by (k-1)//2 on each side, with ``nn.Conv``'s parameter
    (``kernel`` [k, k, C, F]); at stride 2 this is PyTorch's padding, not XLA's 'SAME'.

    Works on any number of leading batch axes; on the CPU backend, tiny feature maps (stride 1,
    at most :data:`MATMUL_MAX_PIXELS` pixels) are computed as a sum of shifted matmuls, with the
    same result up to float rounding. ``dtype`` (e.g. ``jnp.bfloat16``) is the computation dtype
    (input and kernel are cast to it); ``None`` computes in the input's dtype.
    """

    features: int
    kernel: int = 3
    strides: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Float[ArrayLike, "*batch H W C"]) -> Float[Array, "*batch h w F"]:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (self.kernel, self.kernel, x.shape[-1], self.features)
        )
        if self.dtype is not None:
            x = x.astype(self.dtype)
        kernel = kernel.astype(x.dtype)
        height, width = x.shape[-3:-1]
        low = (self.kernel - 1) // 2  # symmetric padding, as PyTorch's padding=k//2 (not XLA's 'SAME' at stride 2)
        matmul_form = height * width <= MATMUL_MAX_PIXELS and jax.default_backend() == "cpu"
        if self.strides == 1 and matmul_form and not _XLA_CONVOLUTIONS.get():
            pad = [(0, 0)] * (x.ndim - 3) + [(low, self.kernel - 1 - low)] * 2 + [(0, 0)]
            padded = jnp.pad(x, pad)
            return sum(
                padded[..., i : i + height, j : j + width, :] @ kernel[i, j]
                for i in range(self.kernel)
                for j in range(self.kernel)
            )
        # Fold the leading axes into one batch axis, the last of them (the sample axis) major, so a
        # batch sharded over devices stays sharded: [T, B, ...] -> [B, T, ...] -> [B*T, ...].
        batch_shape = x.shape[:-3]
        leading = tuple(range(len(batch_shape)))
        order = leading[-1:] + leading[:-1]
        folded = jnp.transpose(x, (*order, *range(len(batch_shape), x.ndim))).reshape((-1, *x.shape[-3:]))
        out = jax.lax.conv_general_dilated(
            folded,
            kernel,
            (self.strides, self.strides),
            [(low, self.kernel - 1 - low)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        out = out.reshape((*(batch_shape[i] for i in order), *out.shape[1:]))
        return jnp.transpose(out, (*np.argsort(order), *range(len(batch_shape), out.ndim)))


class ConvBN(nn.Module):
    """3x3 (or ``kernel``) convolution without bias, then batch norm, both computed in ``dtype``
    (``None``: the input's); parameters and batch statistics stay float32."""

    features: int
    strides: int = 1
    kernel: int = 3
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Float[ArrayLike, "*batch H W C"], train: bool) -> Float[Array, "*batch h w F"]:
        x = Conv(self.features, self.kernel, self.strides, dtype=self.dtype, name="Conv_0")(x)
        return BatchNorm(use_running_average=not train, dtype=self.dtype)(x)


def avg_pool(x: Float[ArrayLike, "*batch H W C"], size: int = 2) -> Float[Array, "*batch h w C"]:
    """Non-overlapping average pooling (the converted network's replacement for max pooling)."""
    window = (size, size)
    # Summed, then divided by a Python int (weakly typed), so that bfloat16 stays bfloat16 and
    # strict dtype promotion holds (flax's avg_pool divides by a NumPy integer).
    summed = nn.pool(x, 0.0, jax.lax.add, window, window, "VALID")
    return summed if _SUM_POOLS.get() else summed / (size * size)


def flatten(x: Float[ArrayLike, "*batch H W C"]) -> Float[Array, "*batch F"]:
    """Flatten the three trailing axes."""
    return x.reshape((*x.shape[:-3], -1))


def global_avg_pool(x: Float[ArrayLike, "*batch H W C"]) -> Float[Array, "*batch C"]:
    """Mean over the two spatial axes."""
    return jnp.sum(x, axis=(-3, -2)) if _SUM_POOLS.get() else jnp.mean(x, axis=(-3, -2))


#: While set (only by :func:`pools_as_sums`, while tracing), pooling sums instead of averaging.
_SUM_POOLS = contextvars.ContextVar("offsetjax_sum_pools", default=False)


@contextlib.contextmanager
def pools_as_sums(enabled: bool = True):
    """Trace networks with sum pooling instead of average pooling: the connectivity view
    :func:`offsetjax.count_operations` needs (a pooled input drives the next layer's synapses
    once per connection, as with the 1/k^2 folded into that layer's weights)."""
    token = _SUM_POOLS.set(enabled)
    try:
        yield
    finally:
        _SUM_POOLS.reset(token)


#: While set (only by :func:`xla_convolutions`, while tracing), every :class:`Conv` is one
#: ``conv_general_dilated``, also where the CPU backend would use the matmul form.
_XLA_CONVOLUTIONS = contextvars.ContextVar("offsetjax_xla_convolutions", default=False)


@contextlib.contextmanager
def xla_convolutions(enabled: bool = True):
    """Trace every :class:`Conv` as one convolution operation (the graph view the NIR export
    reads; the result is the same up to float rounding)."""
    token = _XLA_CONVOLUTIONS.set(enabled)
    try:
        yield
    finally:
        _XLA_CONVOLUTIONS.reset(token)
