"""Quickstart: the whole pipeline on scikit-learn's digits, offline, in a few minutes on 2 CPU cores.

    python experiments/quickstart.py [--workdir results/quickstart] [--epochs 12]

Trains a small QCFS CNN (L = 4) on 1438 8x8 digits, converts it, and evaluates the
uncalibrated SNN and the calibrated SNNs (rho = 4, k = 1, 2, 4) at T = 1..8 on 359 held-out digits.
"""

from pipeline import ExperimentConfig, main

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
    eval_batch_size=360,
)

if __name__ == "__main__":
    main(CONFIG)
