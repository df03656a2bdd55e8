"""Fashion-MNIST: a real benchmark that runs on a CPU, for a VGG-style and a ResNet-style network.

    python -m experiments.fashion_mnist --arch small_vgg    --workdir results/fashion_mnist/small_vgg
    python -m experiments.fashion_mnist --arch small_resnet --workdir results/fashion_mnist/small_resnet

Reads the IDX files from ``--idx-dir`` or, by default, /usr/share/datasets/fashion-mnist
(``apt-get install dataset-fashion-mnist``). QCFS L = 4, rho = 4, T = 1..8 on all 10000 test
images. Wall time on 2 CPU cores: see results/fashion_mnist/*/results.json.
"""

from experiments.config import ExperimentConfig
from experiments.runs import main

CONFIG = ExperimentConfig(
    name="fashion_mnist",
    dataset="fashion_mnist",
    arch="small_vgg",
    levels=4,
    epochs=5,
    batch_size=128,
    learning_rate=0.05,
    augment_pad=2,
    max_steps=8,
    presim_steps=4,
    eval_batch_size=500,
)

if __name__ == "__main__":
    main(CONFIG)
