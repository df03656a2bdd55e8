"""CIFAR-100 with the reference recipe (``docs/method.md`` section 6), for a GPU or TPU.

    python -m experiments.cifar100 --arch vgg16    --workdir results/cifar100/vgg16
    python -m experiments.cifar100 --arch resnet20 --workdir results/cifar100/resnet20
    python -m experiments.cifar100 --arch resnet18 --workdir results/cifar100/resnet18

The CIFAR-10 recipe (``experiments.cifar10``) with 100 classes and Cutout 8. Wall time per
epoch: as CIFAR-10's (the classifier is the only difference), about 14 min (VGG-16), 3.4 min
(ResNet-20), 17 min (ResNet-18) on 2 CPU cores; on a GPU, not measured here.
"""

import dataclasses

from experiments import cifar10
from experiments.runs import main

CONFIG = dataclasses.replace(cifar10.CONFIG, name="cifar100", dataset="cifar100", cutout=8)

if __name__ == "__main__":
    main(CONFIG)
