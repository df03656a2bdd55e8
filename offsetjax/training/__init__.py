"""Training a QCFS ANN: data readers and augmentation, the optimiser and train step, checkpoints.

Its own subpackage, which ``import offsetjax`` does not load: ``from offsetjax import training``.
Checkpoints (orbax) load only when asked for: ``from offsetjax.training import checkpoint``;
TFDS loads only inside :func:`offsetjax.training.data.load_tfds`.
"""

from offsetjax.training import data
from offsetjax.training.loop import (
    TrainState,
    check_finite_loss,
    create_train_state,
    cross_entropy,
    fit,
    sgd_cosine,
    train_step,
)

__all__ = [
    "TrainState",
    "check_finite_loss",
    "create_train_state",
    "cross_entropy",
    "data",
    "fit",
    "sgd_cosine",
    "train_step",
]
