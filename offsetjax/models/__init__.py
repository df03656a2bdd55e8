"""Networks whose activation sites are swappable: QCFS for the ANN, IF for the SNN."""

from collections.abc import Callable

from offsetjax.models.layers import Activation, ActivationFactory, qcfs_l4
from offsetjax.models.resnet import BasicBlock, ResNet, resnet18, resnet20, resnet34, small_resnet
from offsetjax.models.vgg import VGG, small_vgg, vgg16

#: Constructors by name: ``ARCHITECTURES[name](num_classes, activation=...)``.
ARCHITECTURES: dict[str, Callable] = {
    "vgg16": vgg16,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "small_vgg": small_vgg,
    "small_resnet": small_resnet,
}

__all__ = [
    "ARCHITECTURES",
    "Activation",
    "ActivationFactory",
    "BasicBlock",
    "ResNet",
    "VGG",
    "qcfs_l4",
    "resnet18",
    "resnet20",
    "resnet34",
    "small_resnet",
    "small_vgg",
    "vgg16",
]
