"""A run's lifecycle in its directory: :func:`main` / :func:`run` train, evaluate and report.

A run writes into ``--workdir`` (default ``results/NAME/``):

    .lock                  held (flock) by the running process; its pid inside
    config.json            the resolved configuration
    checkpoints/latest/    verified orbax checkpoint after every epoch (``--resume`` continues from it)
    train_log.jsonl        one line per epoch
    results.json           ANN and SNN accuracies per T, offset statistics, wall times
    results.md             the same as tables
    *.png                  accuracy vs T / total steps, |psi| per layer, zero ratio and MSE vs k

The directory is never overwritten by accident and used by one run at a time:

* :func:`claim` refuses a directory that already holds a run unless the caller resumes it,
  re-evaluates it, or asked to overwrite it; it takes an exclusive advisory lock (``.lock``,
  holding the pid) for the life of the process, so a second run on the same directory stops at
  once, naming the holder.
* ``--overwrite`` removes only what offsetjax wrote: the files recorded in
  :data:`~experiments.results.OUTPUTS` with the digest they had when written, and checkpoints
  whose own manifest lists every file. Anything else in the directory (a file of the user's, or
  one of ours edited since) makes :func:`claim` refuse, listing it.

User errors print one line and exit with status 2 (:data:`USER_ERRORS`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

import jax

from experiments.config import (
    TRAINING_FIELDS,
    ExperimentConfig,
    check_resumable,
    load_config,
    parse_args,
    read_config,
    validate,
)
from experiments.datasets import check_data, load_splits
from experiments.evaluation import PREDICTIONS, evaluate_all, predictions_file
from experiments.report import REPORT_FILES, write_markdown, write_plots
from experiments.results import (
    LOCK,
    OUTPUTS,
    RunError,
    check_outputs,
    command,
    digest,
    record,
    recorded_outputs,
    write_output,
)
from experiments.training import build_model, read_train_log, restore_trained, train_ann
from offsetjax import parallel
from offsetjax.training import checkpoint, data

#: What a directory holding a run contains (any one of them).
RUN_FILES = ("config.json", "train_log.jsonl", "results.json", "checkpoints")
#: Where the pipeline keeps its checkpoints (each verified by its own manifest).
CHECKPOINTS = "checkpoints"


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
    return listed.get(inside) == digest(path)


def foreign_files(workdir: Path) -> list[str]:
    """The files below ``workdir`` that offsetjax did not write or that changed since it did
    (relative paths); its lock and record of outputs excepted."""
    outputs = recorded_outputs(workdir)
    foreign = []
    for path in _files(workdir):
        name = path.relative_to(workdir).as_posix()
        if name in (LOCK, OUTPUTS) or _checkpoint_file(workdir, path):
            continue
        if path.is_symlink() or outputs.get(name) != digest(path):
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


def load_finished(workdir: Path):
    """A finished run, as scripts that study it need it: ``(config, model, variables, train_split,
    test_split)``, the configuration read from ``workdir/config.json``. A directory without a
    run is a :class:`RunError` naming it."""
    config = load_config(workdir)
    train_split, test_split = load_splits(config)
    model = build_model(config, data.NUM_CLASSES[config.dataset])
    state = restore_trained(config, model, test_split, Path(workdir))
    return config, model, state.variables, train_split, test_split


def run(config: ExperimentConfig, *, command_line: str | None = None) -> dict:
    """One run in ``config.resolved_workdir()``: see the module docstring and docs/usage.md, "Runs and
    checkpoints", for what it refuses, locks and writes when."""
    validate(config)
    workdir = config.resolved_workdir()
    primary = jax.process_index() == 0
    lock = claim(workdir, resume=config.resume, eval_only=config.eval_only, overwrite=config.overwrite, primary=primary)
    try:
        return _run_locked(config, workdir, primary, command_line or command())
    finally:
        if lock is not None:
            lock.close()


def _run_locked(config: ExperimentConfig, workdir: Path, primary: bool, command_line: str) -> dict:
    stored = read_config(workdir)
    if (config.resume or config.eval_only) and stored is not None:
        check_resumable(stored, dataclasses.asdict(config), TRAINING_FIELDS)
    if primary and (config.eval_only or config.resume):  # before any work: hand edits of its reports survive
        check_outputs(workdir, ["config.json", "results.json", *REPORT_FILES])
    began = time.perf_counter()
    train_split, test_split = load_splits(config)
    check_data(config, train_split, test_split)
    model = build_model(config, num_classes=data.NUM_CLASSES[config.dataset])
    config_text = json.dumps(dataclasses.asdict(config), indent=2)
    if config.eval_only:
        state = restore_trained(config, model, test_split, workdir)
    else:
        if primary:
            write_output(workdir, "config.json", config_text)
        state = train_ann(config, model, train_split, test_split, workdir)
    # every epoch's logged seconds, those of earlier sessions of a resumed run included
    train_seconds = sum(row["seconds"] for row in read_train_log(workdir / "train_log.jsonl"))
    results, predictions = evaluate_all(config, model, state.variables, train_split, test_split)
    results["wall_time_seconds"]["train"] = train_seconds
    results["wall_time_seconds"]["total"] = time.perf_counter() - began
    results["command"] = command_line
    if primary:  # only after the evaluation succeeded, each file whole or not at all
        write_output(workdir, "results.json", json.dumps(results, indent=2))
        write_output(workdir, "results.md", write_markdown(results))
        num_classes = data.NUM_CLASSES[config.dataset]
        write_output(workdir, PREDICTIONS, predictions_file(predictions, num_classes))
        record(workdir, *write_plots(results, workdir))
        if config.eval_only:
            write_output(workdir, "config.json", config_text)
        print(f"wrote {workdir}/results.json, results.md and plots", flush=True)
    return results


#: Errors of the user's making: one line on stderr and exit status 2 (others keep their traceback).
USER_ERRORS = (RunError, checkpoint.CheckpointError, FileNotFoundError)


def main(config: ExperimentConfig, argv: list[str] | None = None) -> dict:
    parallel.initialize_distributed()  # a no-op unless a multi-process launcher is present
    config = parse_args(config, argv)
    try:
        return run(config, command_line=command(argv=argv))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
