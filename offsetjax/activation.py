"""QCFS activation: quantization, clip, floor, shift (Bu et al., ICLR 2022; ``docs/method.md`` section 1).

    a = lambda * clip(floor(z * L / lambda + 1/2) / L, 0, 1)

``floor`` has a straight-through gradient, so ``a`` is differentiable in ``z`` and in the
threshold ``lambda``. After conversion the same ``lambda`` is the IF neuron's threshold.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from offsetjax._checks import check_int, check_positive
from offsetjax._deprecation import keyword_only_since

__all__ = ["DEFAULT_THRESHOLD", "ANNSite", "QCFS", "qcfs", "straight_through_floor"]

#: The threshold every activation site starts from (``docs/method.md`` section 1).
DEFAULT_THRESHOLD = 8.0


def at_least_float32(dtype) -> jnp.dtype:
    """``dtype`` if it is a float wider than 32 bits, else float32 (no implicit promotion, so it
    holds under ``jax_numpy_dtype_promotion='strict'``): the dtype QCFS computes in and membrane
    potentials are kept in, whatever the currents' dtype.

    >>> at_least_float32(jnp.bfloat16)
    dtype('float32')
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits > 32:
        return dtype
    return jnp.dtype(jnp.float32)


def straight_through_floor(x: Array) -> Array:
    """``floor(x)`` in the forward pass, identity in the backward pass."""
    return x + jax.lax.stop_gradient(jnp.floor(x) - x)


@keyword_only_since("0.2")
def qcfs(z: Float[ArrayLike, "..."], theta: Float[ArrayLike, "..."], *, levels: int) -> Float[Array, "..."]:
    """QCFS activation with threshold ``theta`` and ``levels`` quantization steps.

    Args:
      z: pre-activations, any shape.
      theta: threshold (lambda), broadcastable to ``z``; must be > 0.
      levels: number of quantization levels L >= 1.

    Returns:
      Activations of ``z``'s shape and dtype, in ``{0, theta/L, ..., theta}``.

    >>> import jax.numpy as jnp
    >>> qcfs(jnp.array([-1.0, 0.2, 0.6, 1.0, 3.0]), 1.0, levels=2).tolist()
    [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    check_int("levels", levels, minimum=1)
    check_positive("theta", theta)
    z = jnp.asarray(z)
    theta = jnp.asarray(theta, dtype=z.dtype)
    quantized = straight_through_floor(z * levels / theta + 0.5) / levels
    return theta * jnp.clip(quantized, 0.0, 1.0)


class QCFS(nn.Module):
    """QCFS activation site with a trainable scalar threshold ``params['threshold']``.

    The parameter name is shared with :class:`offsetjax.IFActivation`, so an ANN's params
    tree is also its converted SNN's params tree (theta = lambda).

    Attributes:
      levels: quantization levels L.
      threshold_init: initial lambda.
    """

    levels: int
    threshold_init: float = DEFAULT_THRESHOLD

    @nn.compact
    def __call__(self, z: Float[Array, "..."]) -> Float[Array, "..."]:
        """QCFS of ``z``, computed in float32 at least and returned in ``z``'s dtype."""
        threshold = self.param("threshold", nn.initializers.constant(self.threshold_init), (), jnp.float32)
        wide = at_least_float32(z.dtype)
        return qcfs(z.astype(wide), threshold.astype(wide), levels=self.levels).astype(z.dtype)


class ANNSite(nn.Module):
    """An activation site of a network converted by :func:`offsetjax.from_jax`, on the ANN side:
    the ReLU ``max(z, 0)``, a clip ``min(max(z, 0), ceiling)`` (a ``jnp.clip(z, 0, c)``), or with
    ``levels`` QCFS (the network's own :class:`QCFS`, computed as it computes it), exactly as the
    network computed it. It owns the site's threshold lambda, ``params['threshold']``, which the
    converted IF site reads as theta (and QCFS uses as its lambda)."""

    ceiling: float | None = None
    levels: int | None = None
    threshold_init: float = DEFAULT_THRESHOLD

    @nn.compact
    def __call__(self, z):
        """The ReLU, clip or QCFS of ``z``, any shape, in ``z``'s dtype."""
        if self.levels is not None:
            threshold = self.param("threshold", nn.initializers.constant(self.threshold_init), (), jnp.float32)
            wide = at_least_float32(z.dtype)
            return qcfs(z.astype(wide), threshold.astype(wide), levels=self.levels).astype(z.dtype)
        if not self.has_variable("params", "threshold"):  # a ReLU's lambda: a scalar, or [C] per channel
            self.param("threshold", nn.initializers.constant(self.threshold_init), (), jnp.float32)
        out = jnp.maximum(z, jnp.zeros((), z.dtype))
        return out if self.ceiling is None else jnp.minimum(out, jnp.asarray(self.ceiling, z.dtype))
