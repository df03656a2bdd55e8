"""CIFAR-100 with the reference recipe (``docs/method.md`` section 6), for a GPU or TPU.

    python experiments/cifar100.py --arch vgg16    --workdir results/cifar100/vgg16
    python experiments/cifar100.py --arch resnet20 --workdir results/cifar100/resnet20
    python experiments/cifar100.py --arch resnet18 --workdir results/cifar100/resnet18

The CIFAR-10 recipe (``experiments/cifar10.py``) with 100 classes and Cutout 8. Wall time per
epoch: as CIFAR-10's (the classifier is the only difference), about 14 min (VGG-16), 3.4 min
(ResNet-20), 17 min (ResNet-18) on 2 CPU cores; on a GPU, not measured here.
"""

import dataclasses

import cifar10
from pipeline import main

CONFIG = dataclasses.replace(cifar10.CONFIG, name="cifar100", dataset="cifar100", cutout=8)

if __name__ == "__main__":
    main(CONFIG)
