"""VGG networks with QCFS (or IF) activation sites and average pooling."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from jaxtyping import Array, ArrayLike, Float

from offsetjax.activation import at_least_float32
from offsetjax.models.layers import ActivationFactory, ConvBN, avg_pool, flatten, qcfs_l4

__all__ = ["VGG16_FEATURES", "VGG", "vgg16", "small_vgg"]

#: VGG-16 feature layers: channel counts, ``"M"`` for a 2x2 average pool.
VGG16_FEATURES = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """Conv-BN-activation stacks, average pools, then a dense classifier.

    Shapes: the ANN maps ``[B, H, W, C]`` to logits ``[B, classes]``; the SNN
    (:func:`offsetjax.spiking_model`) maps the image entered once, ``[1, B, H, W, C]``, to the
    output of every step, ``[T, B, classes]``.

    Attributes:
      features: channel counts, with ``"M"`` for a 2x2 average pool.
      hidden: widths of the hidden dense layers of the classifier.
      num_classes: output classes.
      activation: activation-site factory (QCFS for the ANN, IF for the SNN).
      dropout_rate: dropout after each hidden dense layer, in training only.
      dtype: computation dtype of convolutions, batch norm and dense layers (``jnp.bfloat16``
        for mixed precision); parameters stay float32, activation sites compute in float32 at
        least, and the logits come back in float32 at least. ``None``: the input's dtype.
    """

    features: tuple
    hidden: tuple[int, ...]
    num_classes: int
    activation: ActivationFactory = qcfs_l4
    dropout_rate: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Float[ArrayLike, "*lead H W C"], train: bool = False) -> Float[Array, "*out classes"]:
        conv_index = 0
        for spec in self.features:
            if spec == "M":
                x = avg_pool(x)
                continue
            x = ConvBN(spec, dtype=self.dtype, name=f"conv{conv_index}")(x, train)
            x = self.activation(name=f"conv{conv_index}_act")(x)
            conv_index += 1
        x = flatten(x)
        for index, width in enumerate(self.hidden):
            x = nn.Dense(width, dtype=self.dtype, name=f"fc{index}")(x)
            x = self.activation(name=f"fc{index}_act")(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return logits.astype(at_least_float32(logits.dtype))


def vgg16(num_classes: int, *, activation: ActivationFactory = qcfs_l4, dtype: Any = None) -> VGG:
    """VGG-16 with batch norm after every conv and a 4096-4096 classifier with dropout 0.5.

    The classifier's input width follows the image size: 512 for 32x32 (CIFAR heads),
    25088 = 7*7*512 for 224x224 (ImageNet heads).
    """
    return VGG(VGG16_FEATURES, (4096, 4096), num_classes, activation, dropout_rate=0.5, dtype=dtype)


def small_vgg(num_classes: int, *, activation: ActivationFactory = qcfs_l4, dtype: Any = None) -> VGG:
    """A CPU-sized VGG-style network: 32-32-M-64-64-M-128-M, then 256 -> C."""
    return VGG((32, 32, "M", 64, 64, "M", 128, "M"), (256,), num_classes, activation, dtype=dtype)
