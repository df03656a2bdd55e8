"""CIFAR-10 with the reference recipe (``docs/method.md`` section 6), for a GPU or TPU.

    python -m experiments.cifar10 --arch vgg16    --workdir results/cifar10/vgg16
    python -m experiments.cifar10 --arch resnet20 --workdir results/cifar10/resnet20
    python -m experiments.cifar10 --arch resnet18 --workdir results/cifar10/resnet18

Needs the prepared TFDS dataset (``--tfds-dir``; the error message gives the command that
prepares it). 300 epochs of SGD (momentum 0.9, weight decay 5e-4, cosine from 0.1), pad-4 crop,
flip, AutoAugment's CIFAR policy and Cutout 16; QCFS L = 4; SNN at T = 1..32 with rho = 4, k = 1, 2, 4.
Wall time per epoch: about 14 min (VGG-16), 3.4 min (ResNet-20), 17 min (ResNet-18) on 2 CPU
cores (WALL_TIME_CPU_2_CORES below); on a GPU, not measured here.
For a local smoke run: ``--epochs 1 --train-limit 512 --test-limit 256 --max-steps 4``.
"""

from experiments.config import ExperimentConfig
from experiments.runs import main

#: Seconds per training epoch (50000 images) on this project's 2-core CPU, extrapolated from
#: ``python -m experiments.epoch_time --batch 16 --steps 2`` (results/epoch_time/epoch_time.json).
#: Not measured on a GPU: none was available to the project.
WALL_TIME_CPU_2_CORES = {"vgg16": 824, "resnet20": 206, "resnet18": 991}

CONFIG = ExperimentConfig(
    name="cifar10",
    dataset="cifar10",
    arch="vgg16",
    levels=4,
    epochs=300,
    batch_size=128,
    learning_rate=0.1,
    weight_decay=5e-4,
    augment_pad=4,
    autoaugment=True,
    cutout=16,
    max_steps=32,
    presim_steps=4,
    eval_batch_size=200,
)

if __name__ == "__main__":
    main(CONFIG)
