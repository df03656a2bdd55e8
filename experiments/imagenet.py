"""ImageNet (ILSVRC-2012) with the reference recipe (SPEC section 4), for a GPU node or TPU slice.

    python experiments/imagenet.py --arch vgg16    --tfds-dir DIR --workdir results/imagenet/vgg16
    python experiments/imagenet.py --arch resnet34 --tfds-dir DIR --workdir results/imagenet/resnet34

Streams the prepared TFDS ``imagenet2012`` (ArrayRecord) batch by batch: random resized crop
224 + flip for training, resize 256 + centre crop 224 for evaluation. QCFS L = 8; SNN at
T = 1..32 with rho = 8, k = 1, 2, 4. Wall time per epoch: see WALL_TIME below.
"""

from pipeline import ExperimentConfig, main

#: Measured seconds per training epoch (1.28M images); None where no run was made.
WALL_TIME = {"vgg16": None, "resnet34": None}

CONFIG = ExperimentConfig(
    name="imagenet",
    dataset="imagenet2012",
    arch="vgg16",
    levels=8,
    epochs=120,
    batch_size=256,
    learning_rate=0.1,
    weight_decay=5e-4,
    max_steps=32,
    presim_steps=8,
    eval_batch_size=100,
)

if __name__ == "__main__":
    main(CONFIG)
