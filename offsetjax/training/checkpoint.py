"""Atomic, resumable checkpoints of a training run with orbax.

A run directory holds ``latest/`` and ``best/``; each is written to a temporary directory
and renamed into place by orbax, so a crash mid-write leaves the previous checkpoint intact.
Alongside each, ``meta.json`` records the epoch and metrics; a checkpoint whose files do not
restore is reported, never silently replaced by a fresh start.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META = "meta.json"


def _host_copy(leaf):
    """A NumPy copy of a (replicated) array, also when other processes hold part of the mesh."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return np.asarray(leaf.addressable_data(0))
    return np.asarray(leaf)


def _target(state) -> dict:
    tree = {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }
    return jax.tree.map(_host_copy, tree)


def save(directory: str | os.PathLike, state, meta: dict[str, Any]) -> None:
    """Write ``state`` (a :class:`offsetjax.train.TrainState`) and ``meta`` to ``directory`` atomically."""
    directory = Path(directory).absolute()
    staging = directory.with_name(directory.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging / "state", _target(state))
    (staging / META).write_text(json.dumps(meta, indent=2))
    previous = directory.with_name(directory.name + ".previous")
    if directory.exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(directory, previous)
    os.replace(staging, directory)
    if previous.exists():
        shutil.rmtree(previous)


def restore(directory: str | os.PathLike, state):
    """Restore a state saved by :func:`save` into the structure of ``state``; returns ``(state, meta)``.

    Raises:
      FileNotFoundError: no checkpoint in ``directory``.
      ValueError: the checkpoint exists but is incomplete or corrupt.
    """
    directory = Path(directory).absolute()
    if not directory.exists() and directory.with_name(directory.name + ".previous").exists():
        directory = directory.with_name(directory.name + ".previous")  # crashed between the two renames
    if not (directory / "state").exists():
        raise FileNotFoundError(f"no checkpoint in {directory}")
    try:
        meta = json.loads((directory / META).read_text())
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory / "state", _target(state))
    except Exception as error:
        raise ValueError(
            f"checkpoint in {directory} is incomplete or corrupt: {type(error).__name__}: {error}"
        ) from error
    return state.replace(**restored), meta
