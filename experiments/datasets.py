"""The data of a configuration: its train and test splits, checked, and its calibration images."""

from __future__ import annotations

import functools

import numpy as np

from experiments.config import ExperimentConfig
from experiments.results import RunError
from offsetjax.training import data


def load_splits(config: ExperimentConfig) -> tuple[data.Split | data.StreamingSplit, ...]:
    """Train split as stored (uint8 or [0, 1] floats; augmented and normalised per batch) and the
    normalised test split; ImageNet is streamed from TFDS and normalised as it is read."""
    limits = {"train": config.train_limit or None, "test": config.test_limit or None}
    if config.dataset == "imagenet2012":
        source = functools.partial(data.load_tfds, "imagenet2012", data_dir=config.tfds_dir or None)
        return (
            data.StreamingSplit(
                source("train"),
                preprocess=data.imagenet_train_preprocess,
                dataset=config.dataset,
                limit=limits["train"],
            ),
            data.StreamingSplit(
                source("validation"),
                preprocess=data.imagenet_eval_preprocess,
                dataset=config.dataset,
                limit=limits["test"],
            ),
        )
    if config.dataset == "digits":
        splits = data.load_digits(seed=config.seed)
    elif config.dataset in ("fashion_mnist", "mnist") and config.idx_dir != "tfds":
        splits = data.load_idx(config.idx_dir or None)
    else:
        splits = {
            split: data.source_to_split(
                data.load_tfds(config.dataset, split, data_dir=config.tfds_dir or None), limit=limits[split]
            )
            for split in ("train", "test")
        }
    train_split, test_split = (data.Split(s.images[: limits[n]], s.labels[: limits[n]]) for n, s in splits.items())
    return train_split, data.Split(data.normalize(test_split.images, config.dataset), test_split.labels)


def check_data(config: ExperimentConfig, train_split, test_split) -> None:
    """The errors that need the data's sizes, found before anything is written."""
    problems = []
    train_count, test_count = data.num_examples(train_split), data.num_examples(test_split)
    if not config.eval_only and train_count < config.batch_size:
        problems.append(
            f"batch-size {config.batch_size} is larger than the {train_count} training images (--train-limit "
            f"{config.train_limit}): training drops partial batches, so no step would run"
        )
    if test_count < 1:
        problems.append(f"the test split is empty (--test-limit {config.test_limit})")
    if problems:
        raise RunError("; ".join(problems))


def calibration_set(config: ExperimentConfig, train_split) -> np.ndarray:
    """``calibration_images`` training images, drawn without replacement with the run's seed and
    normalised as the test images are (no augmentation). Never test images."""
    count = data.num_examples(train_split)
    indices = np.sort(
        np.random.default_rng(config.seed).choice(count, min(config.calibration_images, count), replace=False)
    )
    images, _ = data.take(train_split, indices)
    return images if isinstance(train_split, data.StreamingSplit) else data.normalize(images, config.dataset)
