"""A run's working directory: never overwritten by accident, used by one run at a time.

* :func:`claim` refuses a directory that already holds a run unless the caller resumes it,
  re-evaluates it, or asked to overwrite it; it takes an exclusive advisory lock
  (``.lock``, holding the pid) for the life of the process, so a second run on the same
  directory stops at once, naming the holder.
* :func:`check_resumable` compares a new configuration with the stored one: a change of any
  field that alters the trained network is refused, naming the fields.
* :func:`write_atomic` writes a file so that it is either the old or the new one, never half.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

#: What a directory holding a run contains (any one of them).
RUN_FILES = ("config.json", "train_log.jsonl", "results.json", "checkpoints")
#: Files :func:`claim` removes on ``--overwrite`` (plots too).
OUTPUT_GLOBS = ("config.json", "train_log.jsonl", "results.json", "results.md", "*.png", "checkpoints")
LOCK = ".lock"


class RunError(Exception):
    """A user error about the run directory or configuration: printed as one line, exit status 2."""


def holds_run(workdir: Path) -> bool:
    return any((workdir / name).exists() for name in RUN_FILES)


def claim(workdir: Path, *, resume: bool, eval_only: bool, overwrite: bool, primary: bool = True):
    """Create/lock ``workdir`` for this run; returns the open lock file (keep it referenced).

    Refuses (:class:`RunError`): a path that is a file or cannot be written, a directory locked
    by a live run, and a directory holding a run when neither ``resume``, ``eval_only`` nor
    ``overwrite`` is set. ``overwrite`` removes the old run's outputs after taking the lock.
    Only the primary process locks and removes (the others share its directory).
    """
    if workdir.exists() and not workdir.is_dir():
        raise RunError(f"--workdir {workdir} exists and is not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create --workdir {workdir}: {error.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise RunError(f"--workdir {workdir} is not writable")
    if not primary:
        return None
    lock = open(workdir / LOCK, "a+")  # noqa: SIM115 - held open for the life of the run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise RunError(
            f"--workdir {workdir} is in use by another run (pid {holder}, lock {workdir / LOCK}); "
            "wait for it to finish or choose another --workdir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    if holds_run(workdir) and not (resume or eval_only):
        if not overwrite:
            lock.close()
            raise RunError(
                f"--workdir {workdir} already holds a run; continue it with --resume, evaluate it "
                "again with --eval-only, or replace it with --overwrite"
            )
        for pattern in OUTPUT_GLOBS:
            for path in workdir.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return lock


def check_resumable(stored: dict, new: dict, training_fields: tuple[str, ...]) -> None:
    """Refuse a resumed or re-evaluated run whose training configuration differs from the stored one."""
    changed = [
        f"{name} {stored.get(name)!r} -> {new[name]!r}"
        for name in training_fields
        if name in stored and _normal(stored[name]) != _normal(new[name])
    ]
    if changed:
        raise RunError(
            "the run in --workdir was trained with a different configuration: "
            + ", ".join(changed)
            + "; use the stored values (config.json) or start a new run (--overwrite or another --workdir)"
        )


def _normal(value):
    return list(value) if isinstance(value, tuple | list) else value


def read_config(workdir: Path) -> dict | None:
    path = workdir / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)
