"""Building blocks shared by the networks.

Every block works on inputs with any number of leading batch axes (``[B, H, W, C]`` for the
ANN, ``[T, B, H, W, C]`` for the SNN), so one definition serves both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from offsetjax.qcfs import QCFS

#: A factory of activation sites: ``QCFS`` (ANN) or ``IFActivation`` (SNN), called with ``name=``.
ActivationFactory = Callable[..., nn.Module]

#: The default ANN activation: QCFS with L = 4.
qcfs_l4: ActivationFactory = functools.partial(QCFS, levels=4)

#: Batch norm as in PyTorch (running statistics updated with weight 0.1).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


class ConvBN(nn.Module):
    """3x3 (or ``kernel``) convolution without bias, then batch norm."""

    features: int
    strides: int = 1
    kernel: int = 3

    @nn.compact
    def __call__(self, x: Float[Array, "*batch H W C"], train: bool) -> Float[Array, "*batch h w F"]:
        x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.strides, padding="SAME", use_bias=False)(x)
        return BatchNorm(use_running_average=not train)(x)


def avg_pool(x: Float[Array, "*batch H W C"], size: int = 2) -> Float[Array, "*batch h w C"]:
    """Non-overlapping average pooling (the converted network's replacement for max pooling)."""
    return nn.avg_pool(x, (size, size), strides=(size, size))


def flatten(x: Float[Array, "*batch H W C"]) -> Float[Array, "*batch F"]:
    """Flatten the three trailing axes."""
    return x.reshape((*x.shape[:-3], -1))


def global_avg_pool(x: Float[Array, "*batch H W C"]) -> Float[Array, "*batch C"]:
    """Mean over the two spatial axes."""
    return jnp.mean(x, axis=(-3, -2))
