"""Training, atomic checkpoints, and the end-to-end claim on scikit-learn's digits."""

import functools
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import offsetjax as oj
from offsetjax import evaluate, training
from offsetjax.training import checkpoint, data


@functools.cache
def trained_digits(epochs: int = 8):
    splits = data.load_digits()
    train_split, test_split = (data.Split(data.normalize(s.images, "digits"), s.labels) for s in splits.values())
    model = oj.models.small_vgg(10)
    tx = training.sgd_cosine(learning_rate=0.05, total_steps=epochs * data.num_batches(len(train_split.labels), 32))
    state = training.create_train_state(model, tx, train_split.images[:32], seed=0)
    for epoch in range(epochs):
        for images, labels in data.batches(train_split, batch_size=32, seed=0, epoch=epoch):
            state, _ = training.train_step(state, images, labels)
    return model, state, test_split


@pytest.mark.slow
def test_digits_calibration_beats_baseline_at_t_up_to_l():
    """A briefly trained QCFS CNN (L = 4) on digits: calibrated SNN > uncalibrated for T <= L."""
    model, state, test_split = trained_digits()
    assert evaluate.ann_accuracy(model, state.variables, test_split, batch_size=180) > 0.9
    runs = [
        evaluate.evaluate_snn(
            snn, oj.convert_variables(snn, state.variables), test_split, batch_size=180, statistics=True
        )
        for snn in (oj.spiking_model(model, num_steps=4, presim_steps=4 if k else 0, iterations=k) for k in (0, 1, 2))
    ]
    baseline, calibrated = runs[0].accuracy, runs[1].accuracy
    assert np.all(calibrated > baseline), (baseline, calibrated)
    stats = [run.statistics["all"] for run in runs]
    assert stats[0]["zero_ratio"] < stats[1]["zero_ratio"] <= stats[2]["zero_ratio"]
    assert stats[0]["mse"] > stats[1]["mse"] >= stats[2]["mse"]


SMALL_TX = training.sgd_cosine(learning_rate=0.1, total_steps=10)


@functools.cache
def small_state(seed: int) -> training.TrainState:
    """An untrained digits network's training state: what a checkpoint holds, in milliseconds."""
    return training.create_train_state(oj.models.small_vgg(10), SMALL_TX, np.zeros((2, 8, 8, 1), np.float32), seed=seed)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    state, fresh = small_state(0), small_state(5)
    state = state.replace(step=state.step + 7)
    checkpoint.save(tmp_path / "latest", state, {"epoch": 3})
    restored, meta = checkpoint.restore(tmp_path / "latest", fresh)
    assert meta == {"epoch": 3}
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, restored.batch_stats, state.batch_stats)
    assert int(restored.step) == int(state.step)
    # Overwriting keeps exactly one complete checkpoint.
    checkpoint.save(tmp_path / "latest", restored, {"epoch": 4})
    assert checkpoint.restore(tmp_path / "latest", fresh)[1] == {"epoch": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore(tmp_path / "missing", fresh)
    for path in (tmp_path / "latest" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="is corrupt"):
        checkpoint.restore(tmp_path / "latest", fresh)


def test_any_flipped_bit_in_a_checkpoint_is_reported(tmp_path):
    """One bit flipped in any file of a checkpoint (orbax's files, the metadata, the manifest):
    restore refuses it, naming the checkpoint and the file, before orbax reads anything."""
    state, fresh = small_state(0), small_state(5)
    checkpoint.save(tmp_path / "good", state, {"epoch": 3})
    files = sorted(p.relative_to(tmp_path / "good") for p in (tmp_path / "good").rglob("*") if p.is_file())
    assert len(files) >= 5, files
    rng = np.random.default_rng(0)
    for name in files:
        for _ in range(2):
            shutil.rmtree(tmp_path / "bad", ignore_errors=True)
            shutil.copytree(tmp_path / "good", tmp_path / "bad")
            data = bytearray((tmp_path / "bad" / name).read_bytes())
            if not data:
                continue
            bit = int(rng.integers(8 * len(data)))
            data[bit // 8] ^= 1 << (bit % 8)
            (tmp_path / "bad" / name).write_bytes(bytes(data))
            with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "bad")) as caught:
                checkpoint.restore(tmp_path / "bad", fresh)
            message = str(caught.value)
            assert "\n" not in message
            assert str(name) in message or "manifest.json does not match" in message, message
    restored, meta = checkpoint.restore(tmp_path / "good", fresh)  # the original is untouched
    assert meta == {"epoch": 3}


def test_a_checkpoint_of_another_network_is_refused_naming_the_arrays(tmp_path):
    checkpoint.save(tmp_path / "latest", small_state(0), {"epoch": 1})
    hundred_classes = training.create_train_state(
        oj.models.small_vgg(100), SMALL_TX, np.zeros((2, 8, 8, 1), np.float32), seed=0
    )
    with pytest.raises(checkpoint.CheckpointError, match=r"another network .*\(256, 10\).*wanted \(\(256, 100\)"):
        checkpoint.restore(tmp_path / "latest", hundred_classes)
    resnet = training.create_train_state(
        oj.models.small_resnet(10), SMALL_TX, np.zeros((2, 8, 8, 1), np.float32), seed=0
    )
    with pytest.raises(checkpoint.CheckpointError, match=r"another network .* array\(s\) missing from it") as caught:
        checkpoint.restore(tmp_path / "latest", resnet)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_without_manifest_is_refused_until_sealed(tmp_path):
    state = small_state(0)
    checkpoint.save(tmp_path / "old", state, {"epoch": 1})
    for name in (checkpoint.MANIFEST, checkpoint.MANIFEST_DIGEST):  # as offsetjax 0.1 wrote it
        (tmp_path / "old" / name).unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"manifest.json is missing .*checkpoint.seal"):
        checkpoint.restore(tmp_path / "old", state)
    checkpoint.seal(tmp_path / "old", state)
    restored, meta = checkpoint.restore(tmp_path / "old", state)
    assert meta == {"epoch": 1}
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)


@pytest.mark.long  # minutes of .ci/run's budget: run with pytest -q -m long
@pytest.mark.slow
def test_a_process_killed_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    """Kill -9 a process in the middle of its checkpoint writes, several times: the checkpoint
    left behind is always a complete one (the one before, or the one being written)."""
    script = f"""
import numpy as np
import offsetjax as oj
from offsetjax import training
from offsetjax.training import checkpoint
tx = training.sgd_cosine(learning_rate=0.1, total_steps=10)
state = training.create_train_state(oj.models.small_vgg(10), tx, np.zeros((2, 8, 8, 1), np.float32), seed=0)
epoch = 0
while True:
    epoch += 1
    print("saving", epoch, flush=True)
    checkpoint.save({str(tmp_path / "latest")!r}, state, {{"epoch": epoch}})
"""
    state, fresh = small_state(0), small_state(5)
    rng = np.random.default_rng(1)
    for attempt in range(3):
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        started = 0
        while started < 3 + attempt:
            line = process.stdout.readline()
            assert line, "the saving process died on its own"
            started = int(line.split()[1])
        time.sleep(float(rng.uniform(0.0, 0.3)))
        process.kill()
        process.wait()
        restored, meta = checkpoint.restore(tmp_path / "latest", fresh)
        assert meta["epoch"] >= started - 1, (meta, started)
        jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)


def test_fit_refuses_a_batch_larger_than_the_training_split():
    split = data.Split(np.zeros((3, 8, 8, 1), np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="batch_size 4 is larger than train_split's 3 examples"):
        training.fit(oj.models.small_vgg(10), split, epochs=1, batch_size=4, learning_rate=0.1)


def test_optimizer_rejects_empty_schedule():
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        training.sgd_cosine(learning_rate=0.1, total_steps=0)


@pytest.mark.slow
def test_evaluation_masks_the_padding_of_the_last_batch():
    """Batches of 100 over 359 images (the last one padded): the same accuracy and statistics as
    one batch of all 359, from one compiled program."""
    model, state, test_split = trained_digits()
    snn = oj.spiking_model(model, num_steps=4, presim_steps=4, iterations=1)
    run = functools.partial(
        evaluate.evaluate_snn, snn, oj.convert_variables(snn, state.variables), test_split, statistics=True
    )
    whole, padded = run(batch_size=len(test_split.labels)), run(batch_size=100)
    np.testing.assert_array_equal(padded.accuracy, whole.accuracy)
    assert padded.statistics["all"]["num_neurons"] == whole.statistics["all"]["num_neurons"]
    for key in ("zero_ratio", "mse", "firing_rate"):
        np.testing.assert_allclose(padded.statistics["all"][key], whole.statistics["all"][key], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.long  # minutes of .ci/run's budget: run with pytest -q -m long
@pytest.mark.usefixtures("standard_promotion")
def test_bfloat16_compute_matches_float32_accuracy_and_trains():
    """Mixed precision (convolutions, batch norm and dense layers in bfloat16; parameters,
    potentials, calibration and logits in float32): on digits (359 test images) the ANN's
    accuracy stays within 3 points of float32, the calibrated SNN's within 4 points at every t
    and 1 point at t = T = L (one image is 0.28 points), and a bfloat16 network trains."""
    model, state, test_split = trained_digits()
    half = oj.models.small_vgg(10, dtype=jnp.bfloat16)
    assert (
        abs(
            evaluate.ann_accuracy(half, state.variables, test_split, batch_size=180)
            - evaluate.ann_accuracy(model, state.variables, test_split, batch_size=180)
        )
        <= 0.03
    )

    def run(network):
        snn = oj.spiking_model(network, num_steps=4, presim_steps=4, iterations=1)
        return evaluate.evaluate_snn(snn, oj.convert_variables(snn, state.variables), test_split, batch_size=180)

    full_precision, mixed = run(model), run(half)
    np.testing.assert_allclose(mixed.accuracy, full_precision.accuracy, atol=0.04)
    assert abs(mixed.accuracy[-1] - full_precision.accuracy[-1]) <= 0.01
    snn = oj.spiking_model(half, num_steps=4)
    logits = oj.simulate(snn, oj.convert_variables(snn, state.variables), test_split.images[:4])
    assert logits.dtype == jnp.float32
    splits = data.load_digits()
    train_split = data.Split(data.normalize(splits["train"].images, "digits"), splits["train"].labels)
    trained, log = training.fit(half, train_split, epochs=2, batch_size=32, learning_rate=0.05)
    assert jax.tree.leaves(trained.params)[0].dtype == jnp.float32
    assert log[-1]["train_accuracy"] > 0.8 and np.isfinite(log[-1]["train_loss"])
