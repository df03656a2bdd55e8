"""Run directories that never lose data: refusals, the lock, resume checks, verified checkpoints,
one-line errors with exit status 2. Each case starts from a copy of one finished digits run."""

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import experiments.config
import experiments.quickstart
import experiments.results
import experiments.runs
import experiments.training

CONFIG = dataclasses.replace(
    experiments.quickstart.CONFIG,
    epochs=1,
    train_limit=300,
    test_limit=90,
    max_steps=4,
    iterations=(1,),
    eval_batch_size=90,
    methods=("cos",),
)
FLAGS = ["--epochs", "1", "--train-limit", "300", "--test-limit", "90", "--max-steps", "4", "--iterations", "1"]
FLAGS += ["--eval-batch-size", "90", "--methods", "cos"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("finished")
    experiments.runs.run(dataclasses.replace(CONFIG, workdir=str(workdir)))
    return workdir


@pytest.fixture
def workdir(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_main(capsys, workdir: Path, *flags: str) -> tuple[int, str]:
    """The entry point as a shell runs it: (exit status, stderr)."""
    try:
        experiments.runs.main(CONFIG, [*FLAGS, "--workdir", str(workdir), *flags])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten_without_resume_or_overwrite(workdir, capsys):
    before = snapshot(workdir)
    status, err = run_main(capsys, workdir)
    assert_one_line_error(status, err, str(workdir), "already holds a run", "--resume", "--overwrite")
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_overwrite_replaces_the_run_and_logs_final_progress_lines(workdir, capsys):
    experiments.results.write_output(workdir, "levels_sweep.json", "{}")  # a derived output: goes with the run
    (workdir / "nir").mkdir()
    experiments.results.write_output(workdir, "nir/qcfs.nir", b"graph")
    status, err = run_main(capsys, workdir, "--overwrite", "--seed", "1")
    assert status == 0, err
    assert not (workdir / "levels_sweep.json").exists() and not (workdir / "nir").exists()
    assert set(experiments.results.recorded_outputs(workdir)) >= {
        "config.json",
        "results.json",
        "results.md",
        "train_log.jsonl",
    }
    assert experiments.runs.foreign_files(workdir) == []
    assert experiments.config.read_config(workdir)["seed"] == 1
    # stderr is not a terminal here, as in a log file: every bar leaves its final line.
    assert "epoch 1/1: 100%" in err and "SNN cos_k1: 100%" in err, err


@pytest.mark.slow
def test_a_failed_eval_only_writes_nothing(workdir, capsys):
    before = snapshot(workdir)
    status, err = run_main(capsys, workdir, "--eval-only", "--max-steps", "2")  # rho = 4 > T
    assert status == 2 and "presim-steps must be in [1, max-steps = 2]" in err, err
    status, err = run_main(capsys, workdir, "--eval-only", "--epochs", "3")
    assert_one_line_error(status, err, "different configuration: epochs 1 -> 3")
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_resume_refuses_a_change_that_alters_the_result(workdir, capsys):
    before = snapshot(workdir)
    status, err = run_main(capsys, workdir, "--resume", "--learning-rate", "0.5", "--batch-size", "64")
    assert_one_line_error(status, err, "learning_rate 0.05 -> 0.5", "batch_size 32 -> 64")
    assert snapshot(workdir) == before
    # Evaluation settings do not change the trained network: allowed, and recorded after success.
    status, err = run_main(capsys, workdir, "--eval-only", "--eval-batch-size", "45")
    assert status == 0, err
    assert experiments.config.read_config(workdir)["eval_batch_size"] == 45


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_exits_naming_the_holder(workdir, capsys):
    lock = experiments.runs.claim(workdir, resume=True, eval_only=False, overwrite=False)
    try:
        status, err = run_main(capsys, workdir, "--eval-only")
    finally:
        lock.close()
    assert_one_line_error(status, err, f"in use by another run (pid {os.getpid()}", str(workdir / ".lock"))
    status, err = run_main(capsys, workdir, "--eval-only")  # released with the process's lock
    assert status == 0, err


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_is_one_line_and_results_survive(workdir, capsys, damage):
    before = snapshot(workdir)
    data_files = sorted(p for p in (workdir / "checkpoints" / "latest" / "state").rglob("*") if p.is_file())
    target = max(data_files, key=lambda p: p.stat().st_size)
    content = bytearray(target.read_bytes())
    if damage == "flip":
        content[len(content) // 2] ^= 0x10
    else:
        content = content[: len(content) // 3]
    target.write_bytes(bytes(content))
    status, err = run_main(capsys, workdir, "--eval-only")
    assert_one_line_error(status, err, "checkpoint", "is corrupt", target.name)
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if "checkpoints" not in k} == {
        k: v for k, v in before.items() if "checkpoints" not in k
    }


def test_a_workdir_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    status, err = run_main(capsys, afile)
    assert_one_line_error(status, err, f"--workdir {afile} exists and is not a directory")
    status, err = run_main(capsys, afile / "below")
    assert_one_line_error(status, err, "cannot create --workdir")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: let the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    status, err = run_main(capsys, locked)
    assert_one_line_error(status, err, f"--workdir {locked} is not writable")


def test_configuration_errors_are_found_before_any_work(tmp_path, capsys):
    status, err = run_main(capsys, tmp_path / "new", "--max-steps", "2", "--arch", "alexnet")
    assert status == 2 and "argument --arch: 'alexnet' is not one of" in err, err  # the parser's own refusal
    status, err = run_main(capsys, tmp_path / "new", "--max-steps", "2", "--presim-steps", "3")
    assert status == 2 and "presim-steps must be in" in err, err  # a check across fields
    assert not (tmp_path / "new").exists()
    from experiments import fashion_mnist

    try:
        experiments.runs.main(
            fashion_mnist.CONFIG, ["--idx-dir", str(tmp_path / "missing"), "--workdir", str(tmp_path / "f")]
        )
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert_one_line_error(status, err, str(tmp_path / "missing"))
    assert experiments.config.read_config(tmp_path / "f") is None  # found before training wrote anything


def test_help_describes_every_flag_with_its_default_and_hides_other_datasets_flags(capsys):
    with pytest.raises(SystemExit):
        experiments.config.parse_args(experiments.quickstart.CONFIG, ["--help"])
    out = capsys.readouterr().out
    assert "--max-steps MAX_STEPS" in out and "T_max" in out and "(default: 8)" in out
    assert "--overwrite" in out and "replace the run already in --workdir" in out
    assert "--autoaugment" not in out and "--idx-dir" not in out  # digits has no such data


@pytest.mark.slow
def test_overwrite_refuses_a_finished_run_beside_foreign_files_and_deletes_nothing(workdir, capsys):
    (workdir / "checkpoints" / "resnet50_epoch90.pt").write_bytes(b"weights")
    (workdir / "notes.txt").write_text("mine")
    before = snapshot(workdir)
    status, err = run_main(capsys, workdir, "--overwrite")
    assert_one_line_error(status, err, "did not write", "checkpoints/resnet50_epoch90.pt", "notes.txt")
    assert "results.json" not in err.split("did not write")[1]  # the run's own files are recognised
    assert snapshot(workdir) == before


def fake_run(workdir: Path) -> None:
    """A run directory as the pipeline leaves it, written by hand: recorded outputs and a
    checkpoint whose manifest lists its files."""
    workdir.mkdir()
    for name in ("config.json", "results.json", "results.md"):
        experiments.results.write_output(workdir, name, f"{name} of the run")
    state = workdir / "checkpoints" / "latest" / "state"
    state.mkdir(parents=True)
    (state / "data").write_bytes(b"arrays")
    manifest = {"files": {"state/data": hashlib.sha256(b"arrays").hexdigest()}, "arrays": {}}
    (state.parent / "manifest.json").write_text(json.dumps(manifest))
    (state.parent / "manifest.sha256").write_text("digest\n")


def claim_overwrite(workdir: Path):
    return experiments.runs.claim(workdir, resume=False, eval_only=False, overwrite=True)


def test_overwrite_removes_what_offsetjax_wrote_and_nothing_else(tmp_path):
    workdir = tmp_path / "run"
    fake_run(workdir)
    (workdir / "nir").mkdir()
    experiments.results.write_output(workdir, "nir/cos_k1.nir", b"graph")  # derived outputs go with the run
    experiments.results.write_output(workdir, "levels_sweep.json", "{}")
    claim_overwrite(workdir).close()
    assert sorted(p.name for p in workdir.iterdir()) == [experiments.runs.LOCK]


@pytest.mark.parametrize(
    "foreign",
    ["checkpoints/resnet50_epoch90.pt", "figure1.png", "notes.txt", "checkpoints/latest/state/extra", "sub/dir/x"],
)
def test_overwrite_refuses_any_file_offsetjax_did_not_write_and_names_it(tmp_path, foreign):
    workdir = tmp_path / "run"
    fake_run(workdir)
    (workdir / foreign).parent.mkdir(parents=True, exist_ok=True)
    (workdir / foreign).write_text("the user's")
    before = snapshot(workdir)
    with pytest.raises(experiments.results.RunError, match=f"did not write.*{foreign}.*move these away") as caught:
        claim_overwrite(workdir)
    assert "\n" not in str(caught.value)
    assert {k: v for k, v in snapshot(workdir).items() if k != experiments.runs.LOCK} == {
        k: v for k, v in before.items() if k != experiments.runs.LOCK
    }


@pytest.mark.parametrize("change", ["edit an output", "edit a checkpoint file", "link", "no record"])
def test_an_output_changed_since_offsetjax_wrote_it_is_not_removed(tmp_path, change):
    workdir = tmp_path / "run"
    fake_run(workdir)
    if change == "edit an output":
        (workdir / "results.md").write_text("my notes on the run")
        named = "results.md"
    elif change == "edit a checkpoint file":
        (workdir / "checkpoints" / "latest" / "state" / "data").write_bytes(b"other arrays")
        named = "checkpoints/latest/state/data"
    elif change == "link":
        (tmp_path / "elsewhere").mkdir()
        (workdir / "results.md").unlink()
        (workdir / "results.md").symlink_to(tmp_path / "elsewhere")
        named = "results.md"
    else:  # a run written before offsetjax kept a record (or the record was deleted)
        (workdir / experiments.results.OUTPUTS).unlink()
        named = "config.json"
    with pytest.raises(experiments.results.RunError, match=named):
        claim_overwrite(workdir)
    assert (workdir / named).exists() or (workdir / named).is_symlink()


def test_a_batch_larger_than_the_training_set_is_refused_before_anything_is_written(tmp_path, capsys):
    status, err = run_main(capsys, tmp_path / "run", "--batch-size", "512")
    assert_one_line_error(status, err, "batch-size 512 is larger than the 300 training images")
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
def test_eval_only_reads_past_a_log_line_cut_short_by_a_crash(workdir, capsys):
    with (workdir / "train_log.jsonl").open("a") as log:
        log.write('{"epoch": 2, "train_lo')
    status, err = run_main(capsys, workdir, "--eval-only")
    assert status == 0, err


@pytest.mark.slow
def test_the_checkpoint_knows_how_it_was_trained_when_config_json_is_gone(workdir, capsys):
    (workdir / "config.json").unlink()
    before = snapshot(workdir)
    status, err = run_main(capsys, workdir, "--eval-only", "--levels", "8", "--learning-rate", "0.3", "--seed", "5")
    assert_one_line_error(status, err, "levels 4 -> 8", "learning_rate 0.05 -> 0.3", "seed 0 -> 5", "its checkpoint")
    assert snapshot(workdir) == before  # no config.json claiming what the checkpoint is not
    status, err = run_main(capsys, workdir, "--eval-only")  # its own settings: evaluated as trained
    assert status == 0, err
