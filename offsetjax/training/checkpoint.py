"""Atomic, verified, resumable checkpoints of a training run with orbax.

A checkpoint is a directory: ``state/`` (orbax's files), ``meta.json`` (epoch, metrics) and
``manifest.json``, which holds a SHA-256 digest of every file of the checkpoint, of every
array of the state and of the metadata; ``manifest.sha256`` is the digest of the manifest
itself. :func:`save` writes everything into ``<name>.staging`` and renames it into place, so a
crash mid-write leaves the previous checkpoint intact. :func:`restore` verifies every file
before orbax reads any, then every restored array against its digest: any flipped bit
anywhere is reported as a :class:`CheckpointError` naming the checkpoint and the files that
changed. (Corrupt files are not handed to orbax: its failed reads leave asyncio errors behind,
and orbax's data files mix arrays, so a corrupt file cannot be traced to one array without
reading it.) On several processes, every process writes its share of the arrays
through orbax and only process 0 writes the manifest, renames and deletes.

(orbax's ``CheckpointManager`` also finalises atomically, but the manifest must be covered by
the same rename as the files it describes; the staging directory does that in a few lines.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

__all__ = ["META", "MANIFEST", "MANIFEST_DIGEST", "CheckpointError", "array_digests", "save", "seal", "restore"]

META = "meta.json"
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt; the message names it and what failed."""


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_digests(tree) -> dict[str, str]:
    """SHA-256 of every array leaf (dtype, shape and bytes), keyed by its path ``params/conv0/kernel``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    digests = {}
    for path, leaf in leaves:
        array = np.ascontiguousarray(_host_copy(leaf))
        header = f"{array.dtype.str}{array.shape}".encode()
        digests[jax.tree_util.keystr(path, simple=True, separator="/")] = _sha256(header + array.tobytes())
    return digests


def _shapes(tree) -> dict[str, tuple]:
    """``{path: (shape, dtype)}`` of every array leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): (tuple(np.shape(leaf)), str(np.asarray(leaf).dtype))
        for path, leaf in leaves
    }


def _file_digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): _sha256(path.read_bytes())
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name not in (MANIFEST, MANIFEST_DIGEST)
    }


def _primary() -> bool:
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def save(directory: str | os.PathLike, state, meta: dict[str, Any]) -> None:
    """Write ``state`` (an :class:`offsetjax.training.TrainState`) and ``meta`` to ``directory``
    atomically, with the digest manifest described in the module docstring."""
    directory = Path(directory).absolute()
    staging = directory.with_name(directory.name + ".staging")
    if _primary() and staging.exists():
        shutil.rmtree(staging)
    _barrier("checkpoint-staging-clean")
    target = _target(state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging / "state", target)
    if _primary():
        (staging / META).write_text(json.dumps(meta, indent=2))
        _write_manifest(staging, array_digests(target))
        previous = directory.with_name(directory.name + ".previous")
        if directory.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(directory, previous)
        os.replace(staging, directory)
        if previous.exists():
            shutil.rmtree(previous)
    _barrier("checkpoint-renamed")


def _write_manifest(directory: Path, arrays: dict[str, str]) -> None:
    manifest = {"files": _file_digests(directory), "arrays": arrays}
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    (directory / MANIFEST).write_bytes(manifest_bytes)
    (directory / MANIFEST_DIGEST).write_text(_sha256(manifest_bytes) + "\n")


def seal(directory: str | os.PathLike, state) -> None:
    """Add the digest manifest to a checkpoint written without one (offsetjax < 0.2), after
    reading it into the structure of ``state``. This vouches for its current bytes: seal only a
    checkpoint you trust."""
    directory = Path(directory).absolute()
    if (directory / MANIFEST).exists():
        raise CheckpointError(f"checkpoint {directory} already has a manifest")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory / "state", _target(state))
        json.loads((directory / META).read_text())
    except Exception as error:  # orbax raises many types
        raise CheckpointError(f"checkpoint {directory} does not restore: {type(error).__name__}: {error}") from None
    _write_manifest(directory, array_digests(restored))


def _read_manifest(directory: Path) -> dict:
    try:
        manifest_bytes = (directory / MANIFEST).read_bytes()
        recorded = (directory / MANIFEST_DIGEST).read_text().strip()
    except FileNotFoundError as error:
        hint = ""
        if not (directory / MANIFEST).exists() and not (directory / MANIFEST_DIGEST).exists():
            hint = (
                " (a checkpoint written before offsetjax 0.2 has none: if you trust it, "
                "offsetjax.training.checkpoint.seal(directory, state) adds one)"
            )
        raise CheckpointError(
            f"checkpoint {directory} is incomplete: {Path(error.filename).name} is missing{hint}"
        ) from None
    if _sha256(manifest_bytes) != recorded:
        raise CheckpointError(f"checkpoint {directory} is corrupt: {MANIFEST} does not match its digest")
    return json.loads(manifest_bytes)


def restore(directory: str | os.PathLike, state):
    """Restore a state saved by :func:`save` into the structure of ``state``; returns ``(state, meta)``.

    Raises:
      FileNotFoundError: no checkpoint in ``directory``.
      CheckpointError: the checkpoint is incomplete or any byte of it differs from what was
        written (naming the files), it holds arrays of other shapes or dtypes than ``state``
        (another network: naming them), or a restored array differs from its digest.
    """
    directory = Path(directory).absolute()
    if not directory.exists() and directory.with_name(directory.name + ".previous").exists():
        directory = directory.with_name(directory.name + ".previous")  # crashed between the two renames
    if not (directory / "state").exists():
        raise FileNotFoundError(f"no checkpoint in {directory}")
    manifest = _read_manifest(directory)
    actual = _file_digests(directory)
    changed = sorted(
        name for name in set(manifest["files"]) | set(actual) if manifest["files"].get(name) != actual.get(name)
    )
    if changed:
        raise CheckpointError(
            f"checkpoint {directory} is corrupt: {len(changed)} file(s) differ from their digests "
            f"({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''}); nothing was read from it"
        )
    target = _target(state)
    wanted = _shapes(target)
    missing, extra = sorted(set(wanted) - set(manifest["arrays"])), sorted(set(manifest["arrays"]) - set(wanted))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {directory} holds another network than the state it is restored into: "
            f"{len(missing)} array(s) missing from it ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), "
            f"{len(extra)} not in the state ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})"
        )
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory / "state", target)
        meta = json.loads((directory / META).read_text())
    except Exception as error:  # orbax raises many types
        message = " ".join(str(error).split())  # one line
        raise CheckpointError(f"checkpoint {directory} does not restore: {type(error).__name__}: {message}") from None
    saved = _shapes(restored)
    different = [
        f"{name} {saved.get(name)} (wanted {shape})" for name, shape in wanted.items() if saved.get(name) != shape
    ]
    if different:  # e.g. a 10-class network's checkpoint restored into a 100-class state
        raise CheckpointError(
            f"checkpoint {directory} holds another network than the state it is restored into: "
            f"{', '.join(different[:5])}{', ...' if len(different) > 5 else ''}"
        )
    digests = array_digests(restored)
    arrays = sorted(name for name, digest in manifest["arrays"].items() if digests.get(name) != digest)
    if arrays:  # the files are as written, so this is a restore bug rather than corruption
        raise CheckpointError(f"checkpoint {directory} restored different arrays: {', '.join(arrays)}")
    return state.replace(**jax.tree.map(jnp.asarray, restored)), meta
