"""A run's working directory: never overwritten by accident, used by one run at a time.

* :func:`claim` refuses a directory that already holds a run unless the caller resumes it,
  re-evaluates it, or asked to overwrite it; it takes an exclusive advisory lock
  (``.lock``, holding the pid) for the life of the process, so a second run on the same
  directory stops at once, naming the holder.
* :func:`check_resumable` compares a new configuration with the stored one: a change of any
  field that alters the trained network is refused, naming the fields.
* :func:`write_atomic` writes a file so that it is either the old or the new one, never half;
  :func:`write_output` also records it as this project's output (:func:`record`).
* ``--overwrite`` removes only what offsetjax wrote: the files recorded in ``OUTPUTS`` with the
  digest they had when written, and checkpoints whose own manifest lists every file. Anything
  else in the directory (a file of the user's, or one of ours edited since) makes
  :func:`claim` refuse, listing it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

#: What a directory holding a run contains (any one of them).
RUN_FILES = ("config.json", "train_log.jsonl", "results.json", "checkpoints")
LOCK = ".lock"
#: The record of every file offsetjax wrote in a run directory: ``{relative path: sha256}``.
OUTPUTS = ".offsetjax-outputs.json"
#: Where the pipeline keeps its checkpoints (each verified by its own manifest).
CHECKPOINTS = "checkpoints"


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
        foreign = foreign_files(workdir)
        if foreign:
            lock.close()
            shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
            raise RunError(
                f"--workdir {workdir} holds files offsetjax did not write, or changed since it wrote them: "
                f"{shown}; --overwrite removes only offsetjax's own outputs: move these away or choose "
                "another --workdir"
            )
        remove_outputs(workdir)
    return lock


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded_outputs(workdir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the files offsetjax recorded writing in ``workdir``."""
    path = workdir / OUTPUTS
    return json.loads(path.read_text()) if path.exists() else {}


def record(workdir: Path, *paths: Path) -> None:
    """Record ``paths`` (files in ``workdir`` or below) as offsetjax's outputs, with their digests now."""
    outputs = recorded_outputs(workdir)
    for path in paths:
        outputs[Path(path).relative_to(workdir).as_posix()] = _digest(Path(path))
    write_atomic(workdir / OUTPUTS, json.dumps(outputs, indent=1, sort_keys=True))


def write_output(workdir: Path, name: str, text: str | bytes) -> Path:
    """:func:`write_atomic` ``workdir / name`` and :func:`record` it; returns the path."""
    path = workdir / name
    write_atomic(path, text)
    record(workdir, path)
    return path


def _files(workdir: Path) -> list[Path]:
    """Every file and link below ``workdir``, links not followed."""
    found = []
    for root, directories, files in os.walk(workdir):
        found += [Path(root) / name for name in files]
        found += [Path(root) / name for name in directories if (Path(root) / name).is_symlink()]
    return sorted(found)


def _checkpoint_file(workdir: Path, path: Path) -> bool:
    """Whether ``path`` belongs to a checkpoint offsetjax wrote: listed, with its digest, in the
    manifest of its checkpoint, or inside a staging copy that a crash left behind."""
    parts = path.relative_to(workdir).parts
    if len(parts) < 3 or parts[0] != CHECKPOINTS or path.is_symlink():
        return False
    name = parts[1]
    if name.endswith((".staging", ".previous")):
        return True
    directory = workdir / CHECKPOINTS / name
    inside = Path(*parts[2:]).as_posix()
    if inside in ("manifest.json", "manifest.sha256"):
        return True
    try:
        listed = json.loads((directory / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return listed.get(inside) == _digest(path)


def foreign_files(workdir: Path) -> list[str]:
    """The files below ``workdir`` that offsetjax did not write or that changed since it did
    (relative paths); its lock and record of outputs excepted."""
    outputs = recorded_outputs(workdir)
    foreign = []
    for path in _files(workdir):
        name = path.relative_to(workdir).as_posix()
        if name in (LOCK, OUTPUTS) or _checkpoint_file(workdir, path):
            continue
        if path.is_symlink() or outputs.get(name) != _digest(path):
            foreign.append(name)
    return foreign


def remove_outputs(workdir: Path) -> None:
    """Delete offsetjax's outputs in ``workdir`` (call after :func:`foreign_files` found none):
    the recorded files, the checkpoints, the record, then the folders left empty."""
    for name in recorded_outputs(workdir):
        (workdir / name).unlink(missing_ok=True)
    if (workdir / CHECKPOINTS).is_dir():
        shutil.rmtree(workdir / CHECKPOINTS)
    (workdir / OUTPUTS).unlink(missing_ok=True)
    for root, _, _ in sorted(os.walk(workdir), key=lambda entry: -len(entry[0])):
        if Path(root) != workdir and not any(Path(root).iterdir()):
            Path(root).rmdir()


def check_resumable(stored: dict, new: dict, training_fields: tuple[str, ...], source: str = "config.json") -> None:
    """Refuse a resumed or re-evaluated run whose training configuration differs from the stored
    one (read from ``source``)."""
    changed = [
        f"{name} {stored.get(name)!r} -> {new[name]!r}"
        for name in training_fields
        if name in stored and _normal(stored[name]) != _normal(new[name])
    ]
    if changed:
        raise RunError(
            "the run in --workdir was trained with a different configuration: "
            + ", ".join(changed)
            + f"; use the stored values ({source}) or start a new run (--overwrite or another --workdir)"
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


def run_id(workdir: Path) -> str:
    """The identity of the trained network in ``workdir``: the first 16 hex digits of the sha256
    of its ``train_log.jsonl``, which only training (a new run or a resumed one) changes. Files
    derived from a run record it, so a table never shows them beside another run's results."""
    log = Path(workdir) / "train_log.jsonl"
    if not log.is_file():
        raise RunError(f"{workdir} holds no train_log.jsonl: not a trained run of offsetjax's experiments")
    return _digest(log)[:16]


def check_derived(workdir: Path, name: str, script: str) -> dict:
    """``workdir / name`` (a JSON report derived from the run), refused unless it records this
    run's :func:`run_id`."""
    report = json.loads((Path(workdir) / name).read_text())
    made_from, this_run = report.get("run"), run_id(workdir)
    if made_from != this_run:
        raise RunError(
            f"{Path(workdir) / name} was made from {f'run {made_from}' if made_from else 'an unrecorded run'}, "
            f"not the run now in {workdir} (run {this_run}): make it again with "
            f"python experiments/{script} --workdir {workdir}"
        )
    return report


def results_directory(value: str) -> Path:
    """An ``argparse`` type: a directory holding a run's ``results.json``."""
    import argparse

    path = Path(value)
    if not (path / "results.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{value} holds no results.json (not a finished run of offsetjax's experiments)"
        )
    return path
