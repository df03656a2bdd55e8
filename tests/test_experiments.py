"""The experiment pipeline on digits: results schema, plots, crash-and-resume, config overrides."""

import dataclasses
import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import experiments.config
import experiments.datasets
import experiments.methods
import experiments.quickstart
import experiments.results
import experiments.runs
import experiments.training
from offsetjax.training import checkpoint, data, loop

ROOT = Path(__file__).resolve().parent.parent

TINY = dataclasses.replace(
    experiments.quickstart.CONFIG, epochs=2, max_steps=4, iterations=(1, 2), eval_batch_size=120, methods=("cos",)
)


@pytest.mark.slow
def test_results_schema_and_outputs(tmp_path):
    tiny = dataclasses.replace(TINY, test_limit=120)  # one evaluation batch
    results = experiments.runs.run(dataclasses.replace(tiny, workdir=str(tmp_path)))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert {"dataset", "arch", "levels", "ann_accuracy", "snn", "offset"} <= set(on_disk)
    assert on_disk["dataset"] == "digits" and on_disk["levels"] == 4 and 0 <= on_disk["ann_accuracy"] <= 1
    assert list(on_disk["snn"]) == ["qcfs", "cos_k1", "cos_k2"]
    for name, row in on_disk["snn"].items():
        keys = {"family", "presim_steps", "iterations", "saturated", "calibration_images", "accuracy", "total_steps"}
        assert set(row) == keys and row["calibration_images"] == 0
        assert row["saturated"] == (None if name == "qcfs" else "fire")
        # the baseline runs to the equal-budget table's largest total, T_max + rho
        assert list(row["accuracy"]) == [str(t) for t in range(1, 9 if name == "qcfs" else 5)]
        assert all(0 <= a <= 1 for a in row["accuracy"].values())
        assert row["total_steps"]["2"] == 2 + row["presim_steps"] * row["iterations"]
        assert set(on_disk["offset"][name]) >= {"zero_ratio", "mse"}
    assert on_disk["snn"]["cos_k1"]["total_steps"]["1"] == 5 and on_disk["snn"]["qcfs"]["total_steps"]["1"] == 1
    ops = on_disk["operations"]
    assert list(ops) == list(on_disk["snn"])
    assert ops["qcfs"]["presim_synops"]["4"] == 0 < ops["cos_k1"]["presim_synops"]["4"]
    for row in ops.values():
        synops = [row["synops"][t] for t in ("1", "2", "3", "4")]
        assert synops == sorted(synops) and synops[0] > 0  # cumulative over steps
        assert row["energy_j"]["4"] < on_disk["ann_energy_j"] and row["dense_macs"] > row["input_macs"] > 0
    assert "Operations per image" in (tmp_path / "results.md").read_text()
    with np.load(tmp_path / "predictions.npz") as predictions:  # every method's predictions at every T
        assert sorted(predictions.files) == sorted(on_disk["snn"])
        assert predictions["qcfs"].shape == (len(on_disk["snn"]["qcfs"]["accuracy"]), on_disk["num_test_examples"])
    # small_vgg has 6 sites in a chain: COS (rho = 4, k) outputs t at tick 6 * (4k + d) + t
    latency = on_disk["latency_ticks"]
    assert list(latency) == list(on_disk["snn"])
    for name, k in (("qcfs", 0), ("cos_k1", 1), ("cos_k2", 2)):
        for delay in (0, 1):
            steps = on_disk["snn"][name]["accuracy"]
            assert latency[name][f"d{delay}"] == {t: 6 * (4 * k + delay) + int(t) for t in steps}
    assert "Accuracy (%) against latency" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "accuracy_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["workdir"] == str(tmp_path) and config["epochs"] == 2
    assert "| cos_k1 | 4 | 1 |" in (tmp_path / "results.md").read_text()
    table = (tmp_path / "results.md").read_text().split("Equal budget")[1].split("Offset spikes")[0]
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()] == [
        f"| {n}" for n in range(1, 9)
    ]
    plots = ("accuracy_vs_steps.png", "psi_per_layer.png", "offset_vs_iterations.png", "accuracy_vs_energy.png")
    for plot in (*plots, "equal_budget.png"):
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 2
    again = experiments.runs.run(
        dataclasses.replace(tiny, workdir=str(tmp_path), eval_only=True, saturated=("fire", "hold"))
    )
    assert list(again["snn"]) == ["qcfs", "cos_k1", "cos_k2", "cos_k1_hold", "cos_k2_hold"]
    assert again["snn"]["cos_k2_hold"]["saturated"] == "hold"
    assert {k: again["snn"][k] for k in results["snn"]} == results["snn"]
    assert again["ann_accuracy"] == results["ann_accuracy"]
    assert json.loads((tmp_path / "config.json").read_text())["saturated"] == ["fire", "hold"]
    with pytest.raises(experiments.results.RunError, match="trained with a different configuration: epochs 2 -> 3"):
        experiments.runs.run(dataclasses.replace(tiny, workdir=str(tmp_path), eval_only=True, epochs=3))

    from experiments import calibration_sweep

    sweep = calibration_sweep.main(
        ["--workdir", str(tmp_path), "--sizes", "4", "16", "--steps", "2", "--draws", "0", "1"]
    )
    assert {size: list(row) for size, row in sweep["accuracy"].items()} == {"4": ["2"], "16": ["2"]}
    assert all(len(draws) == 2 and all(0 <= a <= 1 for a in draws) for draws in sweep["accuracy"]["16"].values())
    assert "| 16 |" in (tmp_path / "calibration_sweep.md").read_text()
    assert (tmp_path / "calibration_sweep.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):  # more images than the run's training split
        calibration_sweep.main(["--workdir", str(tmp_path), "--sizes", "100000", "--steps", "1"])


@pytest.mark.parametrize("flag", ["--sizes", "--steps", "--draws"])
def test_calibration_sweep_refuses_a_repeated_value(flag, tmp_path, capsys):
    from experiments import calibration_sweep

    with pytest.raises(SystemExit):
        calibration_sweep.main(["--workdir", str(tmp_path), flag, "2", "2"])
    assert f"{flag} repeats a value: [2, 2]" in capsys.readouterr().err


@pytest.mark.long  # minutes of .ci/run's budget: run with pytest -q -m long
@pytest.mark.slow
def test_every_method_at_equal_budget_calibrates_on_training_images_only(tmp_path, monkeypatch):
    config = dataclasses.replace(
        TINY,
        workdir=str(tmp_path),
        test_limit=120,
        methods=experiments.methods.METHOD_FAMILIES,
        levels=2,  # = T_max: the Table-3 statistics come from the same runs
        iterations=(1,),
        max_steps=2,
        presim_steps=2,
        srp_steps=2,
        warm_presim_steps=(2,),
        calibration_images=64,
    )
    seen = []
    for key, calibrate in dict(experiments.methods.CALIBRATIONS).items():

        def spy(model, variables, images, *, calibrate=calibrate, **options):
            seen.append(np.asarray(images))
            return calibrate(model, variables, images, **options)

        monkeypatch.setitem(experiments.methods.CALIBRATIONS, key, spy)
    results = experiments.runs.run(config)
    assert list(results["snn"]) == ["qcfs", "cos_k1", "data_v0", "data_bias", "warm_cos_r2", "srp"]
    # per data-level method one calibration per T = 1, 2 (warm_cos reuses data_v0's), 64 training
    # images each
    assert len(seen) == 2 * 2 and all(images.shape == (64, 8, 8, 1) for images in seen)
    train_split, test_split = experiments.datasets.load_splits(config)
    train_rows = {row.tobytes() for row in data.normalize(train_split.images, "digits")}
    for images in seen:  # fails if any calibration image came from the test split
        assert all(row.tobytes() in train_rows for row in images)
    extra = {"qcfs": 0, "cos_k1": 2, "data_v0": 0, "data_bias": 0, "warm_cos_r2": 2, "srp": 2}
    for name, row in results["snn"].items():
        assert row["total_steps"] == {t: int(t) + extra[name] for t in row["accuracy"]}
        assert row["calibration_images"] == (64 if name in ("data_v0", "data_bias", "warm_cos_r2") else 0)
        assert all(0 <= a <= 1 for a in row["accuracy"].values())
    assert results["snn"]["srp"]["presim_steps"] == 2 and results["snn"]["srp"]["family"] == "srp"
    assert list(results["snn"]["data_v0"]["accuracy"]) == ["1", "2"]
    assert list(results["snn"]["qcfs"]["accuracy"]) == ["1", "2", "3", "4"]
    text = (tmp_path / "results.md").read_text()
    assert "data_v0 (64 images)" in text and (tmp_path / "equal_budget.png").exists()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """TINY's two epochs trained without a break: what both resume tests must reach."""
    config = dataclasses.replace(TINY, epochs=2)
    model = experiments.training.build_model(config, 10)
    train_split, test_split = experiments.datasets.load_splits(config)
    return experiments.training.train_ann(
        config, model, train_split, test_split, tmp_path_factory.mktemp("uninterrupted")
    )


@pytest.mark.slow
def test_crash_after_an_epoch_then_resume_matches_uninterrupted(tmp_path, monkeypatch, uninterrupted):
    config = dataclasses.replace(TINY, epochs=2)
    model = experiments.training.build_model(config, 10)
    train_split, test_split = experiments.datasets.load_splits(config)

    real_save = checkpoint.save

    def save_then_crash(directory, state, meta):
        real_save(directory, state, meta)
        if meta.get("epoch") == 1 and "batch" not in meta:
            raise KeyboardInterrupt("simulated crash after epoch 1")

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        experiments.training.train_ann(config, model, train_split, test_split, tmp_path / "b")
    monkeypatch.setattr(checkpoint, "save", real_save)
    resumed = experiments.training.train_ann(
        dataclasses.replace(config, resume=True), model, train_split, test_split, tmp_path / "b"
    )
    jax.tree.map(np.testing.assert_array_equal, resumed.params, uninterrupted.params)
    jax.tree.map(np.testing.assert_array_equal, resumed.batch_stats, uninterrupted.batch_stats)


@pytest.mark.slow
def test_killed_mid_epoch_then_resume_matches_uninterrupted(tmp_path, monkeypatch, uninterrupted):
    """Also: checkpoints every 7 batches leave the trained parameters as they are without them."""
    config = dataclasses.replace(TINY, epochs=2, checkpoint_every=7)
    model = experiments.training.build_model(config, 10)
    train_split, test_split = experiments.datasets.load_splits(config)

    real_step, calls = loop.train_step, []

    def step_then_die(state, images, labels):
        calls.append(1)
        if len(calls) == 60:  # epoch 2 (44 batches per epoch), 2 batches after its checkpoint at batch 14
            raise KeyboardInterrupt("killed mid-epoch")
        return real_step(state, images, labels)

    monkeypatch.setattr(loop, "train_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        experiments.training.train_ann(config, model, train_split, test_split, tmp_path / "b")
    monkeypatch.setattr(loop, "train_step", real_step)
    meta = json.loads((tmp_path / "b" / "checkpoints" / "latest" / "meta.json").read_text())
    assert (meta["epoch"], meta["batch"]) == (1, 14) and meta["seconds_in_epoch"] > 0
    resumed = experiments.training.train_ann(
        dataclasses.replace(config, resume=True), model, train_split, test_split, tmp_path / "b"
    )
    jax.tree.map(np.testing.assert_array_equal, resumed.params, uninterrupted.params)
    # the resumed epoch's logged time includes its first 14 batches, run before the kill
    row = experiments.training.read_train_log(tmp_path / "b" / "train_log.jsonl")[-1]
    assert row["epoch"] == 2 and row["resumed_at_batch"] == 14 and row["seconds"] > meta["seconds_in_epoch"]


@pytest.mark.slow
def test_nan_loss_stops_before_it_reaches_a_checkpoint(tmp_path):
    config = dataclasses.replace(TINY, epochs=1, learning_rate=1e30, checkpoint_every=5)
    model = experiments.training.build_model(config, 10)
    train_split, test_split = experiments.datasets.load_splits(config)
    with pytest.raises(FloatingPointError, match="training loss is nan at epoch 1"):
        experiments.training.train_ann(config, model, train_split, test_split, tmp_path)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    config = dataclasses.replace(TINY, resume=True)
    model = experiments.training.build_model(config, 10)
    train_split, test_split = experiments.datasets.load_splits(config)
    with pytest.raises(experiments.results.RunError, match="no checkpoint in .*start it again with --overwrite"):
        experiments.training.train_ann(config, model, train_split, test_split, tmp_path)


def test_a_log_line_cut_short_by_a_crash_is_dropped_and_a_broken_one_named(tmp_path):
    rows = [{"epoch": 1, "seconds": 1.5}, {"epoch": 2, "seconds": 2.0}]
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"epoch": 3, "sec')
    assert experiments.training.read_train_log(log) == rows
    assert log.read_text().endswith('"sec')  # reading alone changes nothing
    assert experiments.training.read_train_log(log, repair=True) == rows
    assert log.read_text() == "".join(json.dumps(row) + "\n" for row in rows)
    log.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(experiments.results.RunError, match="line 2 is not a JSON row"):
        experiments.training.read_train_log(log)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning-rate", "inf"], "argument --learning-rate: inf is not in (0.0, 100.0]"),
        (["--learning-rate", "nan"], "argument --learning-rate: nan is not in (0.0, 100.0]"),
        (["--weight-decay", "nan"], "argument --weight-decay: nan is not in [0.0, 1.0]"),
        (["--weight-decay", "-1"], "argument --weight-decay: -1.0 is not in [0.0, 1.0]"),
    ],
)
def test_non_finite_or_negative_rates_are_refused_before_any_work(flags, message, capsys):
    with pytest.raises(SystemExit):
        experiments.config.parse_args(experiments.quickstart.CONFIG, flags)
    assert message in capsys.readouterr().err


def test_command_line_overrides_every_field():
    config = experiments.config.parse_args(
        experiments.quickstart.CONFIG,
        ["--epochs", "3", "--iterations", "1", "4", "--arch", "small_resnet", "--resume", "--workdir", "/tmp/x"],
    )
    assert (config.epochs, config.iterations, config.arch, config.resume) == (3, (1, 4), "small_resnet", True)
    assert config.resolved_workdir() == Path("/tmp/x")
    assert experiments.config.parse_args(experiments.quickstart.CONFIG, []).resolved_workdir().parts[-2:] == (
        "results",
        "quickstart",
    )
    assert experiments.config.parse_args(experiments.quickstart.CONFIG, ["--saturated", "fire", "hold"]).saturated == (
        "fire",
        "hold",
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--methods", "qcfs", "cos", "--srp-steps", "2"], "--srp-steps applies to --methods srp, none of which"),
        (["--methods", "qcfs", "--iterations", "2"], "--iterations applies to --methods cos, none of which"),
        (["--warm-presim-steps=2"], "--warm-presim-steps applies to --methods warm_cos"),
        (["--srp", "2"], "unrecognized arguments: --srp"),  # no abbreviations
    ],
)
def test_an_option_of_a_method_not_run_is_refused_not_ignored(flags, message, capsys):
    with pytest.raises(SystemExit):
        experiments.config.parse_args(experiments.quickstart.CONFIG, flags)
    assert message in capsys.readouterr().err


def test_options_of_methods_not_run_are_not_validated():
    """quickstart's default srp-steps (4) and warm-presim-steps do not block --max-steps 1 when
    srp and warm_cos are not run; they do when they are."""
    assert (
        experiments.config.parse_args(
            experiments.quickstart.CONFIG, ["--max-steps", "1", "--presim-steps", "1"]
        ).max_steps
        == 1
    )
    with pytest.raises(experiments.results.RunError, match=r"srp-steps must be in \[1, max-steps = 1\]"):
        experiments.config.validate(
            dataclasses.replace(experiments.quickstart.CONFIG, max_steps=1, presim_steps=1, methods=("srp",))
        )


def test_unknown_saturation_rule_is_named(capsys):
    with pytest.raises(SystemExit):
        experiments.config.parse_args(experiments.quickstart.CONFIG, ["--saturated", "clip"])
    assert "argument --saturated: 'clip' is not one of fire, hold" in capsys.readouterr().err


def test_unknown_architecture_is_named():
    with pytest.raises(experiments.results.RunError, match="arch must be one of"):
        experiments.config.validate(dataclasses.replace(TINY, arch="alexnet"))


@pytest.mark.parametrize(
    "name",
    [
        "quickstart",
        *(pytest.param(n, marks=pytest.mark.slow) for n in ("fashion_mnist", "cifar10", "cifar100", "imagenet")),
    ],
)
def test_entry_points_answer_help(name):
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.{name}", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "--workdir" in out.stdout and "--resume" in out.stdout


@pytest.mark.long  # minutes of .ci/run's budget: run with pytest -q -m long
@pytest.mark.slow
def test_cifar_config_runs_end_to_end_on_mock_tfds(tmp_path):
    import tensorflow_datasets as tfds

    from experiments import cifar10

    config = dataclasses.replace(
        cifar10.CONFIG,
        arch="resnet20",
        epochs=1,
        batch_size=8,
        max_steps=4,
        iterations=(1,),
        eval_batch_size=8,
        workdir=str(tmp_path),
        methods=("cos",),
    )
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        results = experiments.runs.run(config)
    assert results["dataset"] == "cifar10" and results["num_test_examples"] == 16
    assert set(results["snn"]) == {"qcfs", "cos_k1"}
    assert list(results["snn"]["cos_k1"]["accuracy"]) == ["1", "2", "3", "4"]
    assert list(results["snn"]["qcfs"]["accuracy"]) == [str(t) for t in range(1, 9)]  # to T_max + rho


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("report", [], "the following arguments are required: workdirs"),
        ("report", ["{missing}"], "holds no results.json"),
        ("readme_table", ["--bogus", "{finished}"], "unrecognized arguments: --bogus"),
        ("readme_table", ["--budget", "{foreign}"], "holds no results.json"),
        ("levels_sweep", ["--workdir", "{foreign}"], "holds no run of offsetjax's experiments"),
        ("calibration_sweep", ["--workdir", "{missing}"], "is not an existing directory"),
        pytest.param("latency", ["--workdir", "{foreign}"], "holds no results.json", marks=pytest.mark.slow),
        pytest.param("readme_table", ["--latency", "{finished}"], "has no latency ticks", marks=pytest.mark.slow),
    ],
)
def test_scripts_on_a_missing_or_foreign_directory_exit_2_with_one_line(script, args, message, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "results.json").write_text(
        json.dumps({"dataset": "digits", "arch": "small_vgg", "snn": {}})
    )
    argv = [a.format(missing=tmp_path / "missing", foreign=foreign, finished=tmp_path / "finished") for a in args]
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.{script}", *argv], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_derived_report_of_another_run_is_refused_and_the_committed_ones_are_their_runs(tmp_path):
    """readme_table --nir shows nir.json only beside the run it was made from (its run id, the
    digest of train_log.jsonl); every committed derived report names its committed run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"dataset": "digits", "arch": "small_vgg", "snn": {}}))
    (run / "train_log.jsonl").write_text('{"epoch": 1}\n')
    (run / "nir.json").write_text(json.dumps({"run": "0123456789abcdef", "methods": {}}))
    script = [sys.executable, "-m", "experiments.readme_table", "--nir"]
    out = subprocess.run([*script, str(run)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "was made from run 0123456789abcdef, not the run now in" in out.stderr, out.stderr
    for report in (ROOT / "results").glob("*/*/*.json"):
        derived = report.name not in ("results.json", "config.json") and not report.name.startswith(".")
        if derived and (report.parent / "train_log.jsonl").exists():
            stamped = json.loads(report.read_text())["run"]
            log = (report.parent / "train_log.jsonl").read_bytes()
            assert stamped == hashlib.sha256(log).hexdigest()[:16], report


def test_every_file_of_a_committed_run_is_recorded_as_written_by_offsetjax():
    """Each committed run's record of outputs (``.offsetjax-outputs.json``) lists every file in
    its directory with the file's digest: a study or re-evaluation installed by copying files in
    without recording them would make the next run of a study there refuse them as edited by
    hand. (Hidden files, the record and the lock, and ``checkpoints/`` are not outputs.)"""
    from experiments.results import digest, recorded_outputs

    runs = sorted(path.parent for path in (ROOT / "results").rglob("results.json"))
    assert runs
    for run in runs:
        recorded = recorded_outputs(run)
        files = sorted(p.name for p in run.iterdir() if p.is_file() and not p.name.startswith("."))
        assert [name for name in files if name not in recorded] == [], run
        assert [name for name in files if digest(run / name) != recorded[name]] == [], run


def test_reproduce_names_every_differing_field_and_ignores_wall_times():
    from experiments.reproduce import differences

    committed = {
        "snn": {"cos_k1": {"accuracy": {"1": 0.5, "2": 0.75}}},
        "offset": {"mse": [0.1, float("nan")]},
        "wall_time_seconds": {"total": 3.0},
        "command": "python -m experiments.quickstart --workdir a",
    }
    same = json.loads(json.dumps(committed))
    same["wall_time_seconds"]["total"], same["command"] = 4.0, "python -m experiments.quickstart --workdir b"
    assert differences(committed, same) == []
    moved = json.loads(json.dumps(same))
    moved["snn"]["cos_k1"]["accuracy"]["2"] = 0.75 + 2**-40  # one last bit
    moved["offset"]["mse"][1], moved["levels"] = 0.0, 4
    del moved["snn"]["cos_k1"]["accuracy"]["1"]
    assert sorted(differences(committed, moved)) == [
        "levels: new field",
        "offset.mse.1: nan -> 0.0",
        "snn.cos_k1.accuracy.1: missing",
        f"snn.cos_k1.accuracy.2: 0.75 -> {0.75 + 2**-40!r}",
    ]


def test_from_weights_tolerates_only_data_level_rows_within_the_measured_bound():
    """Only the rows of data-level calibrations may move from weights (docs/results.md, "What
    reproduces where"), by at most 3 test images or 0.2 % of the test split, whichever is more, and
    0.5 % of an operation count."""
    from experiments.reproduce import differences, within_tolerance

    committed = {
        "num_test_examples": 359,
        "snn": {
            "data_v0": {"family": "data_v0", "accuracy": {"1": 200 / 359, "2": 300 / 359}},
            "qcfs": {"family": "qcfs", "accuracy": {"1": 0.5}},
        },
        "operations": {"data_v0": {"synops": {"1": 1000.0}}, "qcfs": {"synops": {"1": 1000.0}}},
    }
    moved = json.loads(json.dumps(committed))
    moved["snn"]["data_v0"]["accuracy"]["1"] = 202 / 359  # two images: within
    moved["snn"]["data_v0"]["accuracy"]["2"] = 304 / 359  # four images: beyond
    moved["operations"]["data_v0"]["synops"]["1"] = 1004.0  # 0.4 %: within
    moved["snn"]["qcfs"]["accuracy"]["1"] = 0.5 + 1 / 359  # an uncalibrated row: never tolerated
    beyond, within = within_tolerance(committed, differences(committed, moved))
    assert sorted(p.split(":")[0] for p in within) == ["operations.data_v0.synops.1", "snn.data_v0.accuracy.1"]
    assert sorted(p.split(":")[0] for p in beyond) == ["snn.data_v0.accuracy.2", "snn.qcfs.accuracy.1"]
    committed["num_test_examples"] = 10_000  # 0.2 %: twenty images
    for images, tolerated in ((20, True), (21, False)):
        moved["snn"]["data_v0"]["accuracy"]["2"] = committed["snn"]["data_v0"]["accuracy"]["2"] + images / 10_000
        beyond, within = within_tolerance(committed, differences(committed, moved))
        assert ("snn.data_v0.accuracy.2" in "".join(within)) is tolerated


def test_from_weights_tolerance_reads_relu_fashion_results_too():
    """experiments.relu_fashion's results name their rows modes.THRESHOLD.METHOD.T (a threshold
    such as 99.9% holds dots): its data-level rows get the same tolerance, the others none."""
    from experiments.reproduce import differences, within_tolerance

    rows = {"none": {"4": {"accuracy": 0.5}}, "data_bias": {"4": {"accuracy": 0.5}}}
    committed = {"num_test_images": 2000, "modes": {"max": rows, "99.9%": json.loads(json.dumps(rows))}}
    for images, tolerated in ((4, True), (5, False)):  # 0.2 % of 2000: four images
        moved = json.loads(json.dumps(committed))
        moved["modes"]["99.9%"]["data_bias"]["4"]["accuracy"] += images / 2000
        moved["modes"]["max"]["none"]["4"]["accuracy"] += 1 / 2000
        beyond, within = within_tolerance(committed, differences(committed, moved))
        assert [line.split(":")[0] for line in within] == (["modes.99.9%.data_bias.4.accuracy"] if tolerated else [])
        assert "modes.max.none.4.accuracy" in "".join(beyond) and len(beyond) == (1 if tolerated else 2)


def test_reproduce_names_the_images_whose_prediction_moved(tmp_path):
    """An accuracy that moves is explained by the images whose prediction changed, read from
    the committed and the new predictions.npz; a run without one says it cannot name them."""
    from experiments.evaluation import PREDICTIONS, predictions_file
    from experiments.reproduce import moved_images

    committed, new = tmp_path / "committed", tmp_path / "new"
    committed.mkdir(), new.mkdir()
    before = {"qcfs": np.zeros((2, 30), np.int32), "cos_k1": np.ones((2, 30), np.int32)}
    after = {name: array.copy() for name, array in before.items()}
    after["qcfs"][1, [3, 17]] = 5
    after["cos_k1"][0, list(range(12))] = 2
    moved = ["snn.qcfs.accuracy.2: 0.5 -> 0.4", "snn.cos_k1.accuracy.1: 0.5 -> 0.1", "offset.qcfs.mse: 1.0 -> 2.0"]
    assert moved_images(committed, new, moved) == [
        f"no {PREDICTIONS} committed with this run: the images whose prediction moved cannot be named"
    ]
    (committed / PREDICTIONS).write_bytes(predictions_file(before, 10))
    (new / PREDICTIONS).write_bytes(predictions_file(after, 10))
    assert moved_images(committed, new, moved) == [
        "cos_k1 T=1: 12 images moved: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ...",
        "qcfs T=2: 2 images moved: 3, 17",
    ]
    assert moved_images(committed, new, ["offset.qcfs.mse: 1.0 -> 2.0"]) == []
    with np.load(committed / PREDICTIONS) as stored:
        assert stored["qcfs"].dtype == np.uint8 and stored["qcfs"].shape == (2, 30)
    # relu_fashion's rows: modes.THRESHOLD.METHOD.T.accuracy, its arrays named THRESHOLD.METHOD
    before = {"99.9%.data_v0": np.zeros((4, 30), np.int32)}
    after = {"99.9%.data_v0": np.where(np.arange(30) == 7, 3, 0)[None].repeat(4, 0)}
    (committed / PREDICTIONS).write_bytes(predictions_file(before, 11))
    (new / PREDICTIONS).write_bytes(predictions_file(after, 11))
    assert moved_images(committed, new, ["modes.99.9%.data_v0.4.accuracy: 0.5 -> 0.4"]) == [
        "99.9%.data_v0 T=4: 1 images moved: 7"
    ]


def test_from_weights_evaluates_each_kind_of_kept_weights_and_refuses_a_run_without(tmp_path, monkeypatch):
    """An experiment run's checkpoints are evaluated with --eval-only (config, log and record of
    outputs copied beside them); relu_fashion's weights.npz is copied, and the script, finding it,
    evaluates instead of training (the command line takes its run, whose results have no arch or
    snn); a run keeping neither is refused before anything runs."""
    from experiments import reproduce
    from experiments.results import OUTPUTS, RunError

    ran = []

    def fake_run(command, **kwargs):
        scratch = Path(command[command.index("--workdir") + 1])
        ran.append((command, sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file())))
        (scratch / "results.json").write_text("{}")

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    checkpointed, npz, bare = tmp_path / "checkpointed", tmp_path / "npz", tmp_path / "bare"
    for run, module in ((checkpointed, "quickstart"), (npz, "relu_fashion"), (bare, "quickstart")):
        run.mkdir()
        command = f"python -m experiments.{module} --workdir {run} --epochs 3"
        (run / "results.json").write_text(json.dumps({"command": command}))
        (run / "train_log.jsonl").write_text("{}\n")
    (checkpointed / "checkpoints" / "latest").mkdir(parents=True)
    (checkpointed / "checkpoints" / "latest" / "meta.json").write_text("{}")
    for name in ("config.json", OUTPUTS):
        (checkpointed / name).write_text("{}")
    (npz / "weights.npz").write_bytes(b"weights")
    for run in (checkpointed, npz):
        scratch = tmp_path / f"scratch-{run.name}"
        scratch.mkdir()
        reproduce.rerun(run, scratch, from_weights=True)
    (command, copied), (npz_command, npz_copied) = ran
    assert command[-3:] == ["--eval-only", "--workdir", str(tmp_path / "scratch-checkpointed")]
    assert str(checkpointed) not in command and "--epochs" in command
    assert copied == sorted([OUTPUTS, "checkpoints/latest/meta.json", "config.json", "train_log.jsonl"])
    assert "--eval-only" not in npz_command and npz_copied == ["train_log.jsonl", "weights.npz"]
    with pytest.raises(RunError, match=r"holds no weights \(checkpoints/ or weights.npz\)"):
        reproduce.check_reproducible(bare, from_weights=True)
    (npz / "results.json").write_text(json.dumps({"num_test_images": 2, "modes": {}, "command": "python -m x"}))
    assert reproduce.build_parser().parse_args(["--from-weights", str(npz)]).runs == [npz]


def test_studies_are_found_by_their_recorded_command_and_compared_without_timings(tmp_path, monkeypatch):
    """--studies re-runs each JSON report recording an experiments command with --workdir (not
    results.json, config.json, or a report without a command) on the re-made run and names the
    fields that moved; calibration timings are not results."""
    from experiments import reproduce

    run, scratch = tmp_path / "run", tmp_path / "scratch"
    run.mkdir(), scratch.mkdir()
    (run / "results.json").write_text(json.dumps({"command": "python -m experiments.quickstart --workdir run"}))
    (run / "config.json").write_text("{}")
    (run / "notes.json").write_text(json.dumps({"text": "no command"}))
    studied = {
        "levels_sweep.json": {"command": f"python -m experiments.levels_sweep --workdir {run}", "accuracy": [0.5, 0.9]},
        "calibration_sweep.json": {
            "command": f"python -m experiments.calibration_sweep --workdir {run} --sizes 16",
            "accuracy": {"16": 0.7},
            "calibration_seconds": {"16": 3.0},
        },
    }
    for name, report in studied.items():
        (run / name).write_text(json.dumps(report))
    assert reproduce.studies(run) == {name: shlex.split(report["command"]) for name, report in sorted(studied.items())}
    remade = {
        "levels_sweep": {**studied["levels_sweep.json"], "accuracy": [0.5, 0.875]},
        "calibration_sweep": {**studied["calibration_sweep.json"], "calibration_seconds": {"16": 9.0}},
    }
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command[1:])
        assert command[command.index("--workdir") + 1] == str(scratch) and str(run) not in command
        module = command[2].removeprefix("experiments.")
        (scratch / f"{module}.json").write_text(json.dumps({**remade[module], "command": " ".join(command)}))

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    assert reproduce.restudy(run, scratch) == {
        "calibration_sweep.json": [],
        "levels_sweep.json": ["accuracy.1: 0.9 -> 0.875"],
    }
    assert ["-m", "experiments.calibration_sweep", "--sizes", "16", "--workdir", str(scratch)] in commands
    # a study that writes no report this time is named, not a crash
    monkeypatch.setattr(reproduce.subprocess, "run", lambda command, **kwargs: None)
    for name in studied:
        (scratch / name).unlink()
    assert reproduce.restudy(run, scratch)["levels_sweep.json"] == [
        "levels_sweep.json: not written again by experiments.levels_sweep"
    ]


def test_studies_only_reruns_the_studies_on_a_copy_of_the_committed_run(tmp_path, monkeypatch, capsys):
    """--studies-only evaluates nothing: the run is copied (results, checkpoint, other files) without
    its studies' outputs, each study runs on the copy, and a moved report fails the command."""
    from experiments import reproduce

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "weights").write_text("w")
    (run / "results.json").write_text(json.dumps({"command": "python -m experiments.quickstart --workdir run"}))
    for name in ("levels_sweep.json", "nir.json"):
        module = name.removesuffix(".json").replace("nir", "nir_export")
        (run / name).write_text(json.dumps({"command": f"python -m experiments.{module} --workdir {run}", "a": 1}))
    (run / "nir.md").write_text("table")
    seen = []

    def fake_run(command, **kwargs):
        scratch = Path(command[command.index("--workdir") + 1])
        seen.append(sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file()))
        name = "nir.json" if command[2] == "experiments.nir_export" else "levels_sweep.json"
        (scratch / name).write_text(json.dumps({"command": " ".join(command), "a": 2 if name == "nir.json" else 1}))

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    assert reproduce.main(["--studies-only", str(run)]) == 1
    assert seen[0] == ["checkpoints/weights", "results.json"]  # no study output left to refuse or compare
    out = capsys.readouterr().out
    assert f"{run}/levels_sweep.json: every compared field equal" in out
    assert f"{run}/nir.json: 1 fields differ" in out and "a: 1 -> 2" in out
    with pytest.raises(SystemExit):
        reproduce.main(["--studies-only", "--from-weights", str(run)])
    assert "takes no --from-weights" in capsys.readouterr().err


@pytest.mark.slow
def test_warm_start_probe_separates_the_saturation_rule_on_committed_weights(tmp_path):
    """``experiments.probes.warm_start_saturation`` from the committed digits VGG: a one-step warm
    start under "hold" predicts as the committed data_v0 row, under "fire" as the committed
    warm_cos_r1 row (each within the from-weights tolerance of data-level rows)."""
    from experiments.probes import warm_start_saturation
    from experiments.reproduce import tolerated_images

    workdir = ROOT / "results" / "digits" / "small_vgg"
    argv = ["--workdir", str(workdir), "--steps", "2", "--images", "10", "--out", str(tmp_path / "probe")]
    (row,) = warm_start_saturation.main(argv)["rows"]
    tolerance = tolerated_images(json.loads((workdir / "results.json").read_text())["num_test_examples"])
    assert row["hold"]["differing_from_committed_data_v0"] <= tolerance
    assert row["fire"]["differing_from_committed_warm_cos_r1"] <= tolerance
    assert set(row["fire"]["moved_on_first_images"]) == {
        f"{name}_act" for name in ("conv0", "conv1", "conv2", "conv3", "conv4", "fc0")
    }
    assert json.loads((tmp_path / "probe.json").read_text())["rows"] == [row]


def test_latency_report_holds_the_tables_that_reproduce_compares(tmp_path):
    """``experiments.latency`` on a run whose results.json carries its ticks writes latency.json
    with its command and the accuracy at each tick budget (no second copy of the ticks): each
    cell is the accuracy at the last T whose output has appeared by that tick."""
    import shutil

    from experiments import latency
    from experiments.reproduce import studies

    run = tmp_path / "run"
    shutil.copytree(ROOT / "results" / "digits" / "small_vgg", run)
    latency.main(["--workdir", str(run)])
    report = json.loads((run / "latency.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert "latency_ticks" not in report and report["command"].startswith("python -m experiments.latency")
    assert set(report["accuracy_by_tick"]) == {"d0", "d1"}
    for delay, table in report["accuracy_by_tick"].items():
        assert set(table) == set(results["snn"])
        for name, cells in table.items():
            ticks = results["latency_ticks"][name][delay]
            for budget, accuracy in cells.items():
                last = max(int(t) for t, tick in ticks.items() if tick <= int(budget))
                assert accuracy == results["snn"][name]["accuracy"][str(last)]
            unseen = [b for b in latency.BUDGETS if str(b) not in cells]
            assert all(b < min(ticks.values()) for b in unseen)  # no cell before the first output
    assert "latency.json" in studies(run)
