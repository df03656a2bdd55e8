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
import hashlib
import json
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
    """Write ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


def recorded_outputs(workdir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the files offsetjax recorded writing in ``workdir``."""
    path = Path(workdir) / OUTPUTS
    return json.loads(path.read_text()) if path.exists() else {}


def record(workdir: Path, *paths: Path) -> None:
    """Record ``paths`` (files in ``workdir`` or below) as offsetjax's outputs, with their digests now."""
    outputs = recorded_outputs(workdir)
    for path in paths:
        outputs[Path(path).relative_to(workdir).as_posix()] = digest(path)
    write_atomic(Path(workdir) / OUTPUTS, json.dumps(outputs, indent=1, sort_keys=True))


def write_output(workdir: Path, name: str, text: str | bytes) -> Path:
    """:func:`write_atomic` ``workdir / name`` and :func:`record` it; returns the path."""
    path = Path(workdir) / name
    write_atomic(path, text)
    record(workdir, path)
    return path


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


def results_directory(value: str) -> Path:
    """An ``argparse`` type: a directory holding a run's ``results.json``."""
    path = Path(value)
    if not (path / "results.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{value} holds no results.json (not a finished run of offsetjax's experiments)"
        )
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


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, whole or not at all, and close it."""
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(path)
