"""CIFAR-100 with the reference recipe (SPEC section 4), for a GPU or TPU.

    python experiments/cifar100.py --arch vgg16    --workdir results/cifar100/vgg16
    python experiments/cifar100.py --arch resnet20 --workdir results/cifar100/resnet20
    python experiments/cifar100.py --arch resnet18 --workdir results/cifar100/resnet18

Needs the prepared TFDS dataset (``--tfds-dir``; the error message gives the command that
prepares it). 300 epochs of SGD (momentum 0.9, weight decay 5e-4, cosine from 0.1), pad-4 crop,
flip, AutoAugment's CIFAR policy and Cutout 8; QCFS L = 4; SNN at T = 1..32 with rho = 4, k = 1, 2, 4.
Wall time per epoch: see WALL_TIME below.
For a local smoke run: ``--epochs 1 --train-limit 512 --test-limit 256 --max-steps 4``.
"""

from pipeline import ExperimentConfig, main

#: Measured seconds per training epoch (50000 images, batch 128); see the README's Performance
#: section for how. None where no run was made.
WALL_TIME = {"vgg16": None, "resnet20": None, "resnet18": None}

CONFIG = ExperimentConfig(
    name="cifar100",
    dataset="cifar100",
    arch="vgg16",
    levels=4,
    epochs=300,
    batch_size=128,
    learning_rate=0.1,
    weight_decay=5e-4,
    augment_pad=4,
    autoaugment=True,
    cutout=8,
    max_steps=32,
    presim_steps=4,
    eval_batch_size=200,
)

if __name__ == "__main__":
    main(CONFIG)
