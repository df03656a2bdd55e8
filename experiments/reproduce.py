"""Run a committed run's recorded command again in a scratch directory and compare the results.

    python -m experiments.reproduce --from-weights results/digits/quickstart [RUN ...]   # any machine
    python -m experiments.reproduce results/digits/quickstart [RUN ...] [--keep]         # retrains
    python -m experiments.reproduce --from-weights --studies results/fashion_mnist/small_vgg  # + its studies
    python -m experiments.reproduce --studies-only results/fashion_mnist/small_vgg  # its studies alone

Reads ``results.json``'s ``command``, runs it with ``--workdir`` pointing to a new directory and
compares the new ``results.json`` with the committed one field by field, every float bit for
bit; only wall times and the command itself (which names the other directory) may differ.
Prints each differing field and exits with status 1 if there is one. ``--studies`` then runs
again, on the re-made run, each study whose report the run's directory holds (``nir.json``,
``latency.json``, ``levels_sweep.json``, ``calibration_sweep.json``, ...: any JSON report
recording an experiments command with ``--workdir``) and compares its report the same way
(calibration timings aside). ``--studies-only`` runs the studies alone, on a copy of the
committed run (its committed ``results.json``, checkpoint and predictions, the studies' own
outputs removed): for a run whose ``results.json`` was already checked from its weights.

``--from-weights`` evaluates the run's committed weights again (its command with
``--eval-only``, the checkpoint, ``config.json`` and ``train_log.jsonl`` copied first; for
``experiments.relu_fashion``, whose run keeps ``weights.npz``, the file copied, which the script
evaluates instead of training) and compares every post-training field: this is what reproduces
on any machine (docs/results.md, "What reproduces where"). Without it the command runs as
recorded, training included: training reproduces bit for bit only on the CPU and XLA build that
made the run; elsewhere XLA's kernels sum in another order and the network departs within a few
epochs, so a retrained run is compared with the seed spread instead (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from experiments import cli
from experiments.evaluation import PREDICTIONS
from experiments.results import OUTPUTS, ROOT, RunError, load_results, read_results_argument

#: Fields that differ between two runs of the same command by design: timings (``train_seconds``: a
#: run that finds its weights loads them instead of training; ``calibration_seconds``: a
#: calibration sweep's) and the command itself.
UNCOMPARED = ("wall_time_seconds", "train_seconds", "calibration_seconds", "command")
#: The files a run may keep its weights in: an experiment run's checkpoints (evaluated again with
#: ``--eval-only``), or the weights ``experiments.relu_fashion`` writes and evaluates when it finds them.
CHECKPOINTS, WEIGHTS_FILE = "checkpoints", "weights.npz"


def differences(committed, new, path: str = "") -> list[str]:
    """The fields where ``new`` differs from ``committed`` (``"snn.cos_k1.accuracy.5: 0.98 -> 0.97"``);
    floats are compared exactly, NaN equal to NaN."""
    if isinstance(committed, dict) and isinstance(new, dict):
        found = [f"{path}{key}: missing" for key in committed if key not in new and key not in UNCOMPARED]
        found += [f"{path}{key}: new field" for key in new if key not in committed and key not in UNCOMPARED]
        for key in committed:
            if key in new and key not in UNCOMPARED:
                found += differences(committed[key], new[key], f"{path}{key}.")
        return found
    if isinstance(committed, list) and isinstance(new, list) and len(committed) == len(new):
        return [d for i, (a, b) in enumerate(zip(committed, new)) for d in differences(a, b, f"{path}{i}.")]
    both_nan = isinstance(committed, float) and isinstance(new, float) and math.isnan(committed) and math.isnan(new)
    if (committed == new and type(committed) is type(new)) or both_nan:
        return []
    return [f"{path.rstrip('.')}: {committed!r} -> {new!r}"]


#: Flags of a recorded command that say how to treat an existing directory (the scratch one is new).
DIRECTORY_FLAGS = ("--overwrite", "--resume", "--no-overwrite", "--no-resume")


def experiments_command(command) -> list[str]:
    """The words of a recorded ``python -m experiments.NAME ...`` command, or ``[]`` where
    ``command`` is none."""
    words = shlex.split(command) if isinstance(command, str) else []
    if len(words) < 3 or words[:2] != ["python", "-m"] or not words[2].startswith("experiments."):
        return []
    return words


def check_reproducible(workdir: Path, *, from_weights: bool) -> list[str]:
    """The recorded command's module and arguments, or a :class:`RunError` saying why the run in
    ``workdir`` cannot be re-run here."""
    command = load_results(workdir).get("command")
    words = experiments_command(command)
    if not words:
        raise RunError(f"{workdir}/results.json records no experiments command ({command!r}): it cannot be re-run")
    if from_weights and not ((workdir / CHECKPOINTS).is_dir() or (workdir / WEIGHTS_FILE).is_file()):
        raise RunError(
            f"{workdir} holds no weights ({CHECKPOINTS}/ or {WEIGHTS_FILE}): it cannot be evaluated again from them here"
        )
    if "--eval-only" in words and not (workdir / CHECKPOINTS).is_dir():
        raise RunError(f"{workdir} holds no checkpoints: it cannot be evaluated again from its weights here")
    return words


def rerun(workdir: Path, scratch: Path, *, from_weights: bool = False) -> dict:
    """Run ``workdir``'s recorded command into ``scratch`` (with ``--eval-only`` from its
    checkpoint when ``from_weights``); returns the new results."""
    words = check_reproducible(workdir, from_weights=from_weights)
    arguments = words[3:]
    if from_weights and (workdir / WEIGHTS_FILE).is_file() and not (workdir / CHECKPOINTS).is_dir():
        for name in (WEIGHTS_FILE, "train_log.jsonl"):  # found there, the weights are evaluated, not trained
            if (workdir / name).is_file():
                shutil.copy2(workdir / name, scratch / name)
    else:
        if from_weights and "--eval-only" not in arguments:
            arguments.append("--eval-only")
        if "--eval-only" in arguments:
            shutil.copytree(workdir / CHECKPOINTS, scratch / CHECKPOINTS)
            for name in ("config.json", "train_log.jsonl", OUTPUTS):
                shutil.copy2(workdir / name, scratch / name)
    run_into(words[:3] + arguments, scratch)
    return load_results(scratch)


def run_into(words: list[str], scratch: Path) -> None:
    """Run a recorded ``python -m experiments.X ...`` command with ``--workdir scratch`` (its own
    ``--workdir`` and directory flags dropped)."""
    arguments = [word for word in words[3:] if word not in DIRECTORY_FLAGS]
    if "--workdir" in arguments:
        index = arguments.index("--workdir")
        del arguments[index : index + 2]
    command = [sys.executable, "-m", words[2], *arguments, "--workdir", str(scratch)]
    print("running", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def studies(workdir: Path) -> dict[str, list[str]]:
    """The reports other scripts wrote into a run's directory from the finished run (``nir.json``,
    ``latency.json``, ``levels_sweep.json``, ...): file name -> the recorded command's words, for
    each JSON report whose ``command`` is an experiments script run with ``--workdir``."""
    found = {}
    for path in sorted(workdir.glob("*.json")):
        if path.name in ("results.json", "config.json", OUTPUTS):
            continue
        try:
            report = json.loads(path.read_text())
        except ValueError:
            continue
        words = experiments_command(report.get("command") if isinstance(report, dict) else None)
        if "--workdir" in words:
            found[path.name] = words
    return found


def restudy(workdir: Path, scratch: Path) -> dict[str, list[str]]:
    """Run each of :func:`studies` again on the re-made run in ``scratch`` and compare its report
    with the committed one: report name -> the fields that differ (timings aside), or one line
    saying the study wrote no such report this time."""
    compared = {}
    for name, words in studies(workdir).items():
        run_into(words, scratch)
        if not (scratch / name).is_file():
            compared[name] = [f"{name}: not written again by {words[2]}"]
            continue
        committed, new = (json.loads((directory / name).read_text()) for directory in (workdir, scratch))
        compared[name] = differences(committed, new)
    return compared


def copy_for_studies(workdir: Path, scratch: Path) -> None:
    """Copy the committed run in ``workdir`` into the empty ``scratch``, without the outputs of
    its :func:`studies` (each report and its ``.md`` / ``.png``), which :func:`restudy` makes again."""
    shutil.copytree(workdir, scratch, dirs_exist_ok=True)
    for name in studies(workdir):
        for path in scratch.glob(name.removesuffix(".json") + ".*"):
            path.unlink()


def print_studies(workdir: Path, scratch: Path) -> bool:
    """:func:`restudy` with its verdicts printed; whether any report differs."""
    compared = restudy(workdir, scratch)
    if not compared:
        print(f"{workdir}: holds no study reports")
    for name, moved in compared.items():
        print(f"{workdir}/{name}: " + (f"{len(moved)} fields differ" if moved else "every compared field equal"))
        print("\n".join(f"  {line}" for line in moved))
    return any(compared.values())


def committed_run(value: str) -> Path:
    """An ``argparse`` type: a directory holding the ``results.json`` of any experiments script
    (the experiment runs' and ``experiments.relu_fashion``'s, whose fields differ), a JSON object."""
    path, results = read_results_argument(value)
    if not isinstance(results, dict):
        raise argparse.ArgumentTypeError(f"{value}/results.json is not a run's results (a JSON object)")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=committed_run, help="committed runs (holding results.json)")
    parser.add_argument(
        "--from-weights", action="store_true", help="evaluate the committed checkpoint again instead of retraining"
    )
    parser.add_argument(
        "--studies",
        action="store_true",
        help="also run again the studies whose reports the run holds (nir.json, latency.json, levels_sweep.json, ...)",
    )
    parser.add_argument(
        "--studies-only",
        action="store_true",
        help="run again only the studies, on a copy of the committed run (its results.json as committed)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories (printed)")
    return parser


#: Method families whose variables come from a data-level calibration: a bisection over float32
#: sums of 256 images, whose outcome XLA's CPU kernels can move (docs/results.md, "What
#: reproduces where"). Their rows are compared within :data:`CALIBRATION_TOLERANCE`.
CALIBRATED_FAMILIES = ("data_v0", "data_bias", "warm_cos")
#: The tolerance of those rows, from weights (docs/results.md, "What reproduces where"): an
#: accuracy may move by ``images`` test images or by ``test_fraction`` of the test split, whichever
#: is more (measured: at most 2 of 359 digits images under XLA CPU settings, 13 of 10 000
#: Fashion-MNIST images under a changed compiled calibration), an operation count by
#: ``relative_operations``.
CALIBRATION_TOLERANCE = {"images": 3, "test_fraction": 2e-3, "relative_operations": 5e-3}


def tolerated_images(num_test_images: int) -> float:
    """How many test images a data-level row's accuracy may move by, from weights."""
    return max(CALIBRATION_TOLERANCE["images"], CALIBRATION_TOLERANCE["test_fraction"] * num_test_images)


#: A data-level accuracy in ``experiments.relu_fashion``'s results: ``modes.THRESHOLD.METHOD.T.accuracy``
#: (a threshold such as ``99.9%`` holds dots, so the method and T are read from the right).
RELU_FASHION_ACCURACY = re.compile(r"modes\.(?P<threshold>.+)\.(?P<method>[a-z0-9_]+)\.(?P<steps>\d+)\.accuracy")


def is_relu_fashion(results: dict) -> bool:
    """Whether ``results`` were written by ``experiments.relu_fashion`` (rows under ``modes``, no
    ``snn`` table) rather than by an experiment run."""
    return "snn" not in results


def calibrated_field(committed: dict, path: str) -> str | None:
    """``"accuracy"`` or ``"operations"`` where the field at ``path`` (as :func:`differences` names
    it) belongs to a row of a data-level calibration, else ``None``. Reads both kinds of results:
    the experiment runs' (``snn.NAME.accuracy.T``, ``operations.NAME...``, rows named by their
    ``family``) and ``experiments.relu_fashion``'s (:data:`RELU_FASHION_ACCURACY`)."""
    accuracy = prediction_cell(path)
    if is_relu_fashion(committed):
        return "accuracy" if accuracy and accuracy[0].rpartition(".")[2] in CALIBRATED_FAMILIES else None
    parts = path.split(".")
    row = committed["snn"].get(parts[1]) if len(parts) >= 4 else None
    if not isinstance(row, dict) or row.get("family") not in CALIBRATED_FAMILIES:
        return None
    if accuracy:
        return "accuracy"
    return "operations" if parts[0] == "operations" else None


def within_tolerance(committed: dict, found: list[str]) -> tuple[list[str], list[str]]:
    """Split the differing fields of a from-weights comparison into (beyond the tolerance,
    within it): only the data-level rows' accuracies and operations may move
    (:func:`calibrated_field`), and only by :data:`CALIBRATION_TOLERANCE`."""
    count = committed["num_test_images"] if is_relu_fashion(committed) else committed["num_test_examples"]
    beyond, within = [], []
    for line in found:
        path, _, change = line.partition(": ")
        old, _, moved = change.partition(" -> ")
        try:
            old, moved = float(old), float(moved)
        except ValueError:
            old = moved = None
        kind = calibrated_field(committed, path) if old is not None else None
        if kind == "accuracy":
            tolerated = abs(moved - old) * count <= tolerated_images(count) + 1e-9
        elif kind == "operations":
            tolerated = abs(moved - old) / max(abs(old), 1e-12) <= CALIBRATION_TOLERANCE["relative_operations"]
        else:
            tolerated = False
        (within if tolerated else beyond).append(line)
    return beyond, within


def prediction_cell(path: str) -> tuple[str, int] | None:
    """The ``predictions.npz`` array and T of an accuracy field (as :func:`differences` names it):
    ``snn.NAME.accuracy.T`` -> ``(NAME, T)``, relu_fashion's ``modes.THRESHOLD.METHOD.T.accuracy``
    -> ``("THRESHOLD.METHOD", T)``; ``None`` for any other field."""
    match = RELU_FASHION_ACCURACY.fullmatch(path)
    if match:
        return f"{match['threshold']}.{match['method']}", int(match["steps"])
    parts = path.split(".")
    if len(parts) == 4 and parts[0] == "snn" and parts[2] == "accuracy" and parts[3].isdigit():
        return parts[1], int(parts[3])
    return None


def moved_images(workdir: Path, scratch: Path, moved: list[str], shown: int = 10) -> list[str]:
    """For each accuracy in ``moved`` (:func:`prediction_cell`), the test images whose prediction
    changed between the committed ``predictions.npz`` and the new one (the first ``shown``
    indices, in the test split's order), or why they cannot be named."""
    cells = sorted({cell for line in moved if (cell := prediction_cell(line.partition(": ")[0])) is not None})
    if not cells:
        return []
    if not (workdir / PREDICTIONS).is_file():
        return [f"no {PREDICTIONS} committed with this run: the images whose prediction moved cannot be named"]
    with np.load(workdir / PREDICTIONS) as old, np.load(scratch / PREDICTIONS) as new:
        lines = []
        for name, t in cells:
            if name not in old.files or t > old[name].shape[0]:
                lines.append(f"{name} T={t}: not in the committed {PREDICTIONS}")
                continue
            changed = np.flatnonzero(old[name][t - 1] != new[name][t - 1])
            listed = ", ".join(map(str, changed[:shown])) + (" ..." if changed.size > shown else "")
            lines.append(f"{name} T={t}: {changed.size} images moved: {listed}")
        return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.studies_only and args.from_weights:
        parser.error("--studies-only evaluates nothing again: it takes no --from-weights")
    for workdir in args.runs:  # every run checked before any is re-run
        try:
            check_reproducible(workdir, from_weights=args.from_weights)
        except RunError as error:
            parser.error(str(error))
    failed = False
    for workdir in args.runs:
        scratch = Path(tempfile.mkdtemp(prefix="offsetjax-reproduce-"))
        if args.studies_only:
            copy_for_studies(workdir, scratch)
            failed |= print_studies(workdir, scratch)
            finish(scratch, keep=args.keep)
            continue
        committed = load_results(workdir)
        found = differences(committed, rerun(workdir, scratch, from_weights=args.from_weights))
        within = []
        if args.from_weights:
            found, within = within_tolerance(committed, found)
        if not found and not within:
            verdict = "every compared field equal"
        elif not found:
            verdict = f"equal but {len(within)} fields of data-level rows, within the stated tolerance"
        else:
            verdict = f"{len(found)} fields differ" + (f" ({len(within)} more within the tolerance)" if within else "")
        print(f"{workdir}: {verdict}")
        print("\n".join(f"  {line}" for line in found))
        print("\n".join(f"  within tolerance: {line}" for line in within))
        print("\n".join(f"  {line}" for line in moved_images(workdir, scratch, found + within)))
        failed |= bool(found)
        if args.studies:
            failed |= print_studies(workdir, scratch)
        finish(scratch, keep=args.keep)
    return int(failed)


def finish(scratch: Path, *, keep: bool) -> None:
    """Keep ``scratch`` (saying where) or remove it."""
    if keep:
        print(f"  new run kept in {scratch}")
    else:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    sys.exit(main())
