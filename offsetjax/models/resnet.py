"""ResNets with a 3x3 stem, QCFS (or IF) sites wherever a ReLU would be (after each residual
addition too), and global average pooling."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from jaxtyping import Array, ArrayLike, Float

from offsetjax.activation import at_least_float32
from offsetjax.models.layers import ActivationFactory, ConvBN, global_avg_pool, qcfs_l4

__all__ = ["BasicBlock", "ResNet", "resnet20", "resnet18", "resnet34", "small_resnet"]


class BasicBlock(nn.Module):
    """conv-BN-act-conv-BN plus a (1x1 conv-BN when the shape changes) shortcut, then act."""

    features: int
    strides: int
    activation: ActivationFactory
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Float[ArrayLike, "*lead H W C"], train: bool) -> Float[Array, "*out h w F"]:
        residual = ConvBN(self.features, self.strides, dtype=self.dtype, name="conv_a")(x, train)
        residual = self.activation(name="act_a")(residual)
        residual = ConvBN(self.features, dtype=self.dtype, name="conv_b")(residual, train)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = ConvBN(self.features, self.strides, kernel=1, dtype=self.dtype, name="shortcut")(x, train)
        return self.activation(name="act_out")(residual + shortcut)


class ResNet(nn.Module):
    """3x3 stem, stages of :class:`BasicBlock`, global average pool, dense classifier.

    Shapes: the ANN maps ``[B, H, W, C]`` to logits ``[B, classes]``; the SNN
    (:func:`offsetjax.spiking_model`) maps the image entered once, ``[1, B, H, W, C]``, to the
    output of every step, ``[T, B, classes]``.

    Attributes:
      stage_sizes: blocks per stage.
      widths: channels per stage (the stem has ``widths[0]``); stages after the first stride 2.
      num_classes: output classes.
      activation: activation-site factory (QCFS for the ANN, IF for the SNN).
      dtype: computation dtype of convolutions, batch norm and the classifier (``jnp.bfloat16``
        for mixed precision); parameters stay float32, activation sites compute in float32 at
        least, and the logits come back in float32 at least. ``None``: the input's dtype.
    """

    stage_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    num_classes: int
    activation: ActivationFactory = qcfs_l4
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Float[ArrayLike, "*lead H W C"], train: bool = False) -> Float[Array, "*out classes"]:
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(f"stage_sizes {self.stage_sizes} and widths {self.widths} must have equal length")
        x = ConvBN(self.widths[0], dtype=self.dtype, name="stem")(x, train)
        x = self.activation(name="stem_act")(x)
        for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, strides, self.activation, self.dtype, name=f"stage{stage}_block{block}")(x, train)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(global_avg_pool(x))
        return logits.astype(at_least_float32(logits.dtype))


def resnet20(num_classes: int, *, activation: ActivationFactory = qcfs_l4, dtype: Any = None) -> ResNet:
    """ResNet-20 for 32x32 inputs: 3 stages of 3 blocks, 16-32-64 channels."""
    return ResNet((3, 3, 3), (16, 32, 64), num_classes, activation, dtype)


def resnet18(num_classes: int, *, activation: ActivationFactory = qcfs_l4, dtype: Any = None) -> ResNet:
    """ResNet-18 with a 3x3 stem: 2-2-2-2 blocks, 64-128-256-512 channels."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, activation, dtype)


def resnet34(num_classes: int, *, activation: ActivationFactory = qcfs_l4, dtype: Any = None) -> ResNet:
    """ResNet-34 with a 3x3 stem: 3-4-6-3 blocks, 64-128-256-512 channels."""
    return ResNet((3, 4, 6, 3), (64, 128, 256, 512), num_classes, activation, dtype)


def small_resnet(num_classes: int, *, activation: ActivationFactory = qcfs_l4, dtype: Any = None) -> ResNet:
    """A CPU-sized ResNet-style network: 2 stages of 1 block, 32-64 channels."""
    return ResNet((1, 1), (32, 64), num_classes, activation, dtype)
