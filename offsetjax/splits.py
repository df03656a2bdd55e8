"""Evaluation data: a split held in memory, or any split that reads its examples on demand.

``images`` are ``[N, H, W, C]`` (uint8, or float in [0, 1]; normalised for evaluation) and
``labels`` ``[N]`` int. A streaming split is any object with ``len(split)`` and
``split.take(indices, rng)`` returning ``(images, labels)`` (e.g.
:class:`offsetjax.training.data.StreamingSplit`), so the core reads data without loading the
training package.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = ["Split", "StreamingSource", "num_examples", "take"]


class Split(NamedTuple):
    """One split: ``images`` ``[N, H, W, C]`` (uint8, or float in [0, 1]) and ``labels`` ``[N]``."""

    images: np.ndarray
    labels: np.ndarray


@runtime_checkable
class StreamingSource(Protocol):
    """A split read on demand: its length, and ``take(indices, rng)`` -> ``(images, labels)``."""

    def __len__(self) -> int: ...

    def take(self, indices, rng=None) -> tuple[np.ndarray, np.ndarray]: ...


def num_examples(split: Split | StreamingSource) -> int:
    """Number of examples in an in-memory or streaming split; a :class:`Split` whose images and
    labels differ in number is refused (``ValueError``)."""
    if isinstance(split, Split):
        if len(split.images) != len(split.labels):
            raise ValueError(
                f"split holds {len(split.images)} images and {len(split.labels)} labels: one label per image expected"
            )
        return len(split.labels)
    return len(split)


def take(
    split: Split | StreamingSource, indices, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of the examples at ``indices``."""
    if isinstance(split, Split):
        return split.images[indices], split.labels[indices]
    return split.take(indices, rng)


# The named tuples' generated constructors name a module of their own; point them at this one,
# so that tools reading their signatures (pdoc, inspect.getmodule) resolve the annotations here.
Split.__new__.__module__ = __name__
