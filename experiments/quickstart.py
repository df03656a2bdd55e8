"""Quickstart: the whole pipeline on scikit-learn's digits, offline, in about a minute on 2 CPU cores.

    python -m experiments.quickstart [--workdir results/quickstart] [--methods all]

Trains a small QCFS CNN (L = 4) on 1438 8x8 digits, converts it, and evaluates on 359 held-out
digits the uncalibrated SNN (qcfs) at T = 1..12, the paper's calibration (cos_k1: rho = 4,
k = 1) at T = 1..8, and the data-level bias calibration (data_bias, fitted on 256 training
images once per T) at T = 1..4, where it is the best method at equal total steps; then the
tables and plots. ``--methods all --iterations 1 2 4 --data-max-steps 8`` runs every method of
``docs/method.md`` section 8 as the committed ``results/digits/small_vgg`` run did (about 5 min).
"""

from experiments.config import ExperimentConfig
from experiments.runs import main

CONFIG = ExperimentConfig(
    name="quickstart",
    dataset="digits",
    arch="small_vgg",
    levels=4,
    epochs=12,
    batch_size=32,
    learning_rate=0.05,
    max_steps=8,
    presim_steps=4,
    iterations=(1,),
    methods=("qcfs", "cos", "data_bias"),
    data_max_steps=4,
    eval_batch_size=360,
)

if __name__ == "__main__":
    main(CONFIG)
