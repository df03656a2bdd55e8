"""ImageNet (ILSVRC-2012) with the reference recipe (``docs/method.md`` section 6), for a GPU node or TPU slice.

    python -m experiments.imagenet --arch vgg16    --tfds-dir DIR --workdir results/imagenet/vgg16
    python -m experiments.imagenet --arch resnet34 --tfds-dir DIR --workdir results/imagenet/resnet34

Streams the prepared TFDS ``imagenet2012`` (ArrayRecord) batch by batch: random resized crop
224 + flip for training, resize 256 + centre crop 224 for evaluation. QCFS L = 8; SNN at
T = 1..32 with rho = 8, k = 1, 2, 4. Wall time per epoch: 11 days (VGG-16) and 50 days (ResNet-34)
on 2 CPU cores (WALL_TIME_CPU_2_CORES below); on a GPU, not measured here.
"""

from experiments.config import ExperimentConfig
from experiments.runs import main

#: Seconds per training epoch (1.28M images) on this project's 2-core CPU, extrapolated from
#: ``python -m experiments.epoch_time --batch 16 --steps 2`` (results/epoch_time/epoch_time.json):
#: 11 and 50 days, i.e. GPU or TPU only. Not measured on a GPU: none was available to the project.
#: ResNet-34 with the reference's 3x3 stride-1 stem keeps 224x224 maps through its first stage,
#: which makes it 4.4x VGG-16's cost.
WALL_TIME_CPU_2_CORES = {"vgg16": 982_959, "resnet34": 4_309_923}

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
