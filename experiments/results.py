"""What runs write and read: atomic writes and their record, table cells, reproduce commands.

* :func:`write_atomic` writes a file so that it is either the old or the new one, never half;
  :func:`write_output` also records it, with its digest, in the run directory's ``OUTPUTS``
  (``--overwrite`` removes only recorded files: :mod:`experiments.runs`).
* :func:`command` is the command line that reproduces the current process's output.
* :func:`load_results`, :func:`run_id` and :func:`check_derived` read finished runs and the
  reports derived from them; :data:`STEPS` and :func:`accuracy_cell` are the tables' columns and
  cells; :func:`pyplot` / :func:`save_figure` draw when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: A run directory's lock file: held exclusively (flock) by the run writing it, shared by studies.
LOCK = ".lock"
#: The record of every file offsetjax wrote in a run directory: ``{relative path: sha256}``.
OUTPUTS = ".offsetjax-outputs.json"
#: The T columns of the summary tables.
STEPS = ("1", "2", "4", "8")
#: Seconds between progress-bar refreshes: often on a terminal, every half minute in a log file.
PROGRESS_INTERVAL = 1.0 if sys.stderr.isatty() else 30.0


class RunError(Exception):
    """A user error about a run, its directory or its configuration: one line, exit status 2."""


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``path`` through a temporary file of its own (a unique name beside it, so that
    processes writing the same file concurrently never share one) and a rename."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Names a script may not take for an output file it names after a flag: a run's own files.
RESERVED_NAMES = ("results", "config", "train_log", "checkpoints", "nir", "nir_peers", "latency", "levels_sweep")


def inside(workdir: Path, name: str | Path) -> Path:
    """``workdir / name``, refused (:class:`RunError`) unless it lies inside ``workdir``: a name
    with ``..``, an absolute one, or one through a link leading out would write elsewhere."""
    workdir, path = Path(workdir), Path(name)
    path = path if path.is_absolute() or path.is_relative_to(workdir) else workdir / path
    if (
        not path.is_relative_to(workdir)
        or ".." in path.relative_to(workdir).parts
        or not path.resolve().is_relative_to(workdir.resolve())
    ):
        raise RunError(f"{name} is not inside {workdir}: offsetjax writes a run's files only in its directory")
    return path


def check_outputs(workdir: Path, names, *, overwrite: bool = False) -> None:
    """Refuse (:class:`RunError`), before any work, to replace a file of ``names`` (relative to
    ``workdir``) that offsetjax did not record writing there or that changed since it did (a hand
    edit), unless ``overwrite``. A recorded, unchanged output is simply made again."""
    recorded = recorded_outputs(workdir)
    blocked = []
    for name in names:
        path = inside(workdir, name)
        if path.exists() and not overwrite and recorded.get(Path(name).as_posix()) != digest(path):
            blocked.append(Path(name).as_posix())
    if blocked:
        raise RunError(
            f"{workdir} holds {', '.join(blocked)}, which offsetjax did not write or which changed since it wrote "
            "them (edited by hand?): move them away, or pass --overwrite to replace them"
        )


def recorded_outputs(workdir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the files offsetjax recorded writing in ``workdir``."""
    path = Path(workdir) / OUTPUTS
    outputs = json.loads(path.read_text()) if path.exists() else {}
    # only names inside the directory: a record naming ../ (older versions wrote them) is never followed
    return {name: sha for name, sha in outputs.items() if not (Path(name).is_absolute() or ".." in Path(name).parts)}


def record(workdir: Path, *paths: Path) -> None:
    """Record ``paths`` (files in ``workdir`` or below) as offsetjax's outputs, with their digests now."""
    outputs = recorded_outputs(workdir)
    for path in paths:
        path = inside(workdir, path)
        outputs[path.relative_to(workdir).as_posix()] = digest(path)
    write_atomic(Path(workdir) / OUTPUTS, json.dumps(outputs, indent=1, sort_keys=True))


def write_output(workdir: Path, name: str, text: str | bytes, *, overwrite: bool = False) -> Path:
    """:func:`write_atomic` ``workdir / name`` and :func:`record` it; returns the path. Refuses a
    name outside ``workdir`` and, unless ``overwrite``, an existing file :func:`check_outputs`
    would not replace."""
    check_outputs(workdir, [name], overwrite=overwrite)
    path = inside(workdir, name)
    write_atomic(path, text)
    record(workdir, path)
    return path


def report_names(out: Path) -> list[str]:
    """The files of a probe's report at ``out`` (a path without suffix): ``<out>.json``, ``<out>.md``."""
    return [out.name + ".json", out.name + ".md"]


def check_report(out: Path, *, overwrite: bool = False) -> None:
    """:func:`check_outputs` for the report at ``out`` (:func:`report_names`), before any measurement."""
    check_outputs(out.parent, report_names(out), overwrite=overwrite)


def write_report(out: Path, data: str, markdown: str, *, overwrite: bool = False) -> None:
    """Write the report at ``out``: ``data`` (JSON text) to ``<out>.json``, ``markdown`` to ``<out>.md``."""
    for name, text in zip(report_names(out), (data, markdown), strict=True):
        write_output(out.parent, name, text, overwrite=overwrite)


def command(module: str | None = None, argv: list[str] | None = None) -> str:
    """The command that reproduces this process's output, ``python -m MODULE ARGS``: ``module``
    (default: the one run as ``__main__``) with ``argv`` (default: the process's arguments)."""
    if module is None:
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).stem
    arguments = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *map(shlex.quote, arguments)])


def machine() -> dict:
    """What a timing was measured on."""
    import jax

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(device) for device in jax.devices()],
    }


def accuracy_cell(row: dict, t: str) -> str:
    """A results row's accuracy at T = ``t`` with its total steps, ``"97.50 (9)"`` (``"—"``: not run)."""
    return f"{100 * row['accuracy'][t]:.2f} ({row['total_steps'][t]})" if t in row["accuracy"] else "—"


def best_lines(label: str, keys: list, columns: dict[str, dict]) -> list[str]:
    """A markdown table comparing methods: a row per key (a total of steps, a tick), a column per
    method (``columns[name][key]``, an accuracy), the best of each row bold and named at its
    end; "—" where a method has no value, and for a row where none has."""
    names = list(columns)
    lines = [f"| {label} | " + " | ".join(names) + " | best |", "|---|" + "---|" * (len(names) + 1)]
    for key in keys:
        values = {name: columns[name][key] for name in names if key in columns[name]}
        best = max(values.values(), default=None)
        cells = [
            "—"
            if name not in values
            else (f"**{100 * values[name]:.2f}**" if values[name] == best else f"{100 * values[name]:.2f}")
            for name in names
        ]
        winners = ", ".join(name for name in names if name in values and values[name] == best) or "—"
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {winners} |")
    return lines


def load_results(workdir: Path) -> dict:
    return json.loads((Path(workdir) / "results.json").read_text())


def read_results_argument(value: str) -> tuple[Path, object]:
    """The directory named by a command-line argument and its ``results.json``, read; an
    ``argparse`` error saying why not."""
    path = Path(value)
    if not (path / "results.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{value} holds no results.json (not a finished run of offsetjax's experiments)"
        )
    try:
        return path, json.loads((path / "results.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{value}/results.json cannot be read ({error}): make the run again") from None


def results_directory(value: str) -> Path:
    """An ``argparse`` type: a directory holding an experiment run's ``results.json``."""
    path, results = read_results_argument(value)
    if not isinstance(results, dict) or not {"dataset", "arch", "snn"} <= set(results):
        raise argparse.ArgumentTypeError(f"{value}/results.json is not a run's results (no dataset, arch, snn)")
    return path


def run_id(workdir: Path) -> str:
    """The identity of the trained network in ``workdir``: the first 16 hex digits of the sha256
    of its ``train_log.jsonl``, which only training (a new run or a resumed one) changes. Files
    derived from a run record it, so a table never shows them beside another run's results."""
    log = Path(workdir) / "train_log.jsonl"
    if not log.is_file():
        raise RunError(f"{workdir} holds no train_log.jsonl: not a trained run of offsetjax's experiments")
    return digest(log)[:16]


def check_derived(workdir: Path, name: str, module: str) -> dict:
    """``workdir / name`` (a JSON report derived from the run), refused unless it records this
    run's :func:`run_id`; ``module`` (``experiments.nir_export``) is the one that makes it."""
    report = json.loads((Path(workdir) / name).read_text())
    made_from, this_run = report.get("run"), run_id(workdir)
    if made_from != this_run:
        raise RunError(
            f"{Path(workdir) / name} was made from {f'run {made_from}' if made_from else 'an unrecorded run'}, "
            f"not the run now in {workdir} (run {this_run}): make it again with "
            f"python -m {module} --workdir {workdir}"
        )
    return report


@contextlib.contextmanager
def studying(workdir: Path, outputs=(), *, overwrite: bool = False):
    """Hold the finished run in ``workdir`` for a script that studies it, and yield its run id.

    Takes a shared lock on the run's ``.lock`` for the life of the script: other studies read
    alongside, but a run that would retrain or overwrite the directory (which locks it
    exclusively) is refused, and a study of a directory a run holds is refused. The run id is
    read once, here, so a report records the run it was computed from. ``outputs`` (names in
    ``workdir``) are checked before any work (:func:`~experiments.results.check_outputs`).
    """
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise RunError(f"--workdir {workdir} holds no run of offsetjax's experiments (no config.json)")
    try:
        lock = open(workdir / LOCK, "a+")  # noqa: SIM115 - held for the life of the study
    except OSError as error:
        raise RunError(f"cannot open {workdir / LOCK}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise RunError(
                f"--workdir {workdir} is in use by a run (pid {holder}): study it once that run has finished"
            ) from None
        identity = run_id(workdir)
        check_outputs(workdir, outputs, overwrite=overwrite)
        if outputs and not os.access(workdir, os.W_OK | os.X_OK):
            raise RunError(f"--workdir {workdir} is not writable")
        yield identity
    finally:
        lock.close()


def progress_bar(**options):
    """A tqdm bar that refreshes every :data:`PROGRESS_INTERVAL` and, in a log file, keeps its last line."""
    from tqdm.auto import tqdm

    return tqdm(leave=not sys.stderr.isatty(), mininterval=PROGRESS_INTERVAL, **options)


def pyplot():
    """``matplotlib.pyplot`` with a file backend, or None (and a message) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'offsetjax[plots]'): skipping plots")
        return None
    return plt


def save_figure(fig, path: Path, *, overwrite: bool = False) -> Path:
    """Write ``fig`` to ``path`` as a PNG, whole or not at all, and close it (refusing, as
    :func:`write_output`, a file of its directory offsetjax did not write, unless ``overwrite``)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    check_outputs(path.parent, [path.name], overwrite=overwrite)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path
