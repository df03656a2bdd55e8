"""Every flag of every ``python -m experiments.*`` entry point refuses a value outside its domain:
exit status 2, one ``error:`` line, no traceback, nothing written anywhere.

The entry points are found by reading the package (every module with a ``__main__`` block), and
each flag's domain is read from its parser (the types of :mod:`experiments.cli`): a flag added
without a declared domain fails here, and hypothesis draws the bad values from the domain.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments import cli
from experiments.config import build_parser as config_parser
from experiments.reproduce import committed_run
from experiments.results import ROOT, results_directory

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def entry_points() -> list[str]:
    """Every ``experiments`` module a user runs with ``python -m`` (it has a ``__main__`` block)."""
    found = []
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        if 'if __name__ == "__main__":' in path.read_text():
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def parser_of(name: str) -> argparse.ArgumentParser:
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # e.g. a probe that needs torch, in the fast tier
        pytest.skip(f"{name} needs {error.name}")
    if hasattr(module, "CONFIG"):
        return config_parser(module.CONFIG)
    return module.build_parser()


def flags(name: str) -> list[argparse.Action]:
    """The actions of ``name``'s parser that take values (not --help, not switches)."""
    return [
        action
        for action in parser_of(name)._actions
        if action.nargs != 0 and not isinstance(action, argparse.BooleanOptionalAction)
    ]


ENTRY_POINTS = entry_points()


def every_flag():
    """``(entry point, action)`` for every value-taking flag of every entry point that imports here."""
    for name in ENTRY_POINTS:
        try:
            actions = flags(name)
        except pytest.skip.Exception:
            continue
        yield from ((name, action) for action in actions)


def label(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


def _flag_cases() -> list:
    return [
        pytest.param(name, label(action), id=f"{name.removeprefix('experiments.')}:{label(action)}")
        for name, action in every_flag()
    ]


def bad_values(action: argparse.Action, tmp: Path) -> st.SearchStrategy[str]:
    """Values outside ``action``'s declared domain (an unknown domain fails the test)."""
    kind = action.type
    words = st.sampled_from(["", "x", "1.5e", "nan", "--", "1,2"])
    if action.choices is not None:
        return st.text(min_size=1, max_size=8).filter(lambda v: v not in action.choices and not v.startswith("-"))
    if isinstance(kind, cli.Ints):
        outside = st.one_of(st.integers(max_value=kind.minimum - 1), st.integers(min_value=kind.maximum + 1)).map(str)
        return st.one_of(outside, words, st.sampled_from(["1.5", "inf", "0x10"]))
    if isinstance(kind, cli.Floats):
        below = st.floats(max_value=kind.minimum, exclude_max=not kind.open_below, allow_nan=False)
        above = st.floats(min_value=kind.maximum, exclude_min=True)
        return st.one_of(below.map(repr), above.map(repr), st.sampled_from(["nan", "inf", "-inf", "x", ""]))
    if isinstance(kind, cli.Name):
        paths = st.sampled_from(["../x", "a/b", "/abs/x", ".hidden", "", "a\\b", "..", "x y", *kind.reserved])
        return st.one_of(paths, st.text(alphabet="/\\ .*?", min_size=1, max_size=5).filter(lambda v: v != "."))
    if isinstance(kind, cli.Choice):
        return st.text(min_size=1, max_size=8).filter(lambda v: v not in kind.values and not v.startswith("-"))
    if isinstance(kind, cli.Directory):
        (tmp / "a_file").write_text("not a directory")
        bad = [str(tmp / "a_file"), str(tmp / "a_file" / "below")]
        if kind.exists:
            bad.append(str(tmp / "missing"))
        return st.sampled_from(bad)
    if isinstance(kind, cli.NewFile):
        return st.sampled_from([str(tmp), str(tmp / "missing" / "out"), ""])
    if isinstance(kind, cli.PathText):
        return st.sampled_from(["a\nb", "a\0b"])
    if kind in (results_directory, committed_run):  # an experiment run's, any experiments script's
        (tmp / "empty").mkdir(exist_ok=True)
        (tmp / "truncated").mkdir(exist_ok=True)
        (tmp / "truncated" / "results.json").write_text('{"dataset": "digits", "arch"')
        (tmp / "other_json").mkdir(exist_ok=True)
        (tmp / "other_json" / "results.json").write_text(json.dumps([1, 2]))
        return st.sampled_from([str(tmp / name) for name in ("missing", "empty", "truncated", "other_json")])
    if getattr(kind, "__name__", "") == "unroll":
        return st.one_of(st.sampled_from(["0", "-1", "x", "", "fully"]), st.integers(max_value=0).map(str))
    raise AssertionError(f"{action.option_strings or action.dest} has no declared domain (type {kind!r})")


def tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``directory`` with its size and modification time."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def run(name: str, argv: list[str]) -> tuple[int, str]:
    """``python -m name argv`` in this process: (exit status, stderr)."""
    module = importlib.import_module(name)
    err = io.StringIO()
    status = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if hasattr(module, "CONFIG"):
                module.main(module.CONFIG, argv)
            else:
                module.main(argv)
        except SystemExit as exit_:
            status = exit_.code
    return status, err.getvalue()


def test_every_entry_point_is_found_and_every_flag_has_a_domain(tmp_path):
    assert {"experiments.quickstart", "experiments.benchmark", "experiments.calibration_sweep"} <= set(ENTRY_POINTS)
    for _, action in every_flag():
        bad_values(action, tmp_path)  # raises for a flag without a declared domain


@pytest.mark.parametrize(("name", "flag"), _flag_cases())
@settings(max_examples=5, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_a_bad_value_of_any_flag_is_one_error_line_and_writes_nothing(name, flag, data, tmp_path):
    action = next(a for a in flags(name) if label(a) == flag)
    value = data.draw(bad_values(action, tmp_path), label="value")
    argv = [flag, value] if action.option_strings else [value]
    if action.option_strings and value.startswith("-") and not _number(value):
        argv = [f"{flag}={value}"]
    before, repository = tree(tmp_path), tree(ROOT / "results")
    status, err = run(name, argv)
    assert status == 2, (argv, err)
    assert "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    assert tree(tmp_path) == before and tree(ROOT / "results") == repository


def _number(text: str) -> bool:
    try:
        return not math.isnan(float(text))
    except ValueError:
        return False


# --- The listed cases, each as one member of its class, on a real finished run -----------------

from tests.test_runs import finished, snapshot  # noqa: E402,F401 - the module-scoped finished run


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:  # noqa: F811
    import shutil

    copy = tmp_path / "A" / "run"
    shutil.copytree(finished, copy)
    return copy


def one_error_line(status: int, err: str, *fragments: str) -> str:
    assert status == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow  # a training run as fixture: the slow tier
def test_a_record_naming_another_directory_is_never_followed(run_dir, tmp_path):
    """Row 1: an output record holding ``../`` paths (as older versions wrote) neither lets
    --overwrite delete another run's files nor counts them as this run's."""
    import experiments.runs
    from experiments.results import OUTPUTS, digest

    other = tmp_path / "A" / "B"
    other.mkdir()
    (other / "results.json").write_text("another run's results")
    record = json.loads((run_dir / OUTPUTS).read_text())
    record["../B/results.json"] = digest(other / "results.json")
    (run_dir / OUTPUTS).write_text(json.dumps(record))
    experiments.runs.remove_outputs(run_dir)
    assert (other / "results.json").read_text() == "another run's results"
    from experiments.results import RunError, write_output

    for name in ("../B/results.json", "/etc/x", "nir/../../B/results.json"):
        with pytest.raises(RunError, match="is not inside"):
            write_output(run_dir, name, "x")


@pytest.mark.slow  # a training run as fixture: the slow tier
def test_reports_refuse_to_discard_a_hand_edit_and_overwrite_replaces_it(run_dir):
    """Row 3: a generated report edited by hand is not silently rewritten (report, the pipeline's
    --eval-only); --overwrite says to."""
    (run_dir / "results.md").write_text((run_dir / "results.md").read_text() + "\nmy notes\n")
    before = snapshot(run_dir)
    line = one_error_line(*run("experiments.report", [str(run_dir)]), "results.md", "--overwrite")
    assert "edited by hand" in line and snapshot(run_dir) == before
    status, err = run("experiments.report", [str(run_dir), "--overwrite"])
    assert status == 0, err
    assert "my notes" not in (run_dir / "results.md").read_text()


@pytest.mark.slow  # a training run as fixture: the slow tier
def test_study_scripts_share_the_runs_lock(run_dir):
    """Row 4: a study is refused while a run holds the directory, and a run is refused while a
    study reads it; concurrent writers of one file never share a temporary file."""
    import fcntl
    import threading

    from experiments.results import LOCK, studying, write_atomic

    with open(run_dir / LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run training in the directory holds it
        one_error_line(*run("experiments.report", [str(run_dir)]), "in use by a run")
    with studying(run_dir):  # as a report reading the run holds it
        status, err = run("experiments.quickstart", ["--workdir", str(run_dir), "--overwrite"])
    one_error_line(status, err, "in use by another run")
    errors = []

    def write(index: int) -> None:
        try:
            for _ in range(30):
                write_atomic(run_dir / "shared.txt", f"writer {index}\n" * 100)
        except Exception as error:  # noqa: BLE001 - any failure is the finding
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and (run_dir / "shared.txt").read_text().count("\n") == 100
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow  # a training run as fixture: the slow tier
def test_an_unknown_method_row_is_named(run_dir):
    """Row 9: readme_table --methods cos (the row is cos_k1) is an error listing the rows."""
    one_error_line(*run("experiments.readme_table", [str(run_dir), "--methods", "cos"]), "cos_k1")


@pytest.mark.slow  # a training run as fixture: the slow tier
def test_refusals_that_need_the_run_come_before_anything_is_written(run_dir, tmp_path):
    """Row 10: a T below the run's rho (nir_export), a run without its command (reproduce), a new
    run with a bad seed: refused, and nothing was written."""
    before = snapshot(run_dir)
    one_error_line(*run("experiments.nir_export", ["--workdir", str(run_dir), "--num-steps", "1"]), "presim-steps")
    assert snapshot(run_dir) == before and not (run_dir / "nir").exists()
    results = json.loads((run_dir / "results.json").read_text())
    del results["command"]
    (run_dir / "results.json").write_text(json.dumps(results))
    one_error_line(*run("experiments.reproduce", [str(run_dir)]), "records no experiments command")
    one_error_line(*run("experiments.quickstart", ["--workdir", str(tmp_path / "new"), "--seed", "-1"]), "--seed")
    assert not (tmp_path / "new").exists()


def test_the_quick_benchmark_never_replaces_the_full_one(tmp_path):
    """Row 2: --quick writes to its own default directory, and an existing file the benchmark
    did not record is refused before anything is measured."""
    from experiments import benchmark

    args = benchmark.build_parser().parse_args(["--quick"])
    assert args.workdir is None  # resolved in main to results/benchmark_quick
    (tmp_path / "benchmark.json").write_text("a committed benchmark")
    one_error_line(*run("experiments.benchmark", ["--workdir", str(tmp_path), "--quick", "--no-torch"]), "--overwrite")
    assert (tmp_path / "benchmark.json").read_text() == "a committed benchmark"
