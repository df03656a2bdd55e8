"""Training, atomic checkpoints, and the end-to-end claim on scikit-learn's digits."""

import functools

import jax
import numpy as np
import pytest

import offsetjax as oj
from offsetjax import checkpoint, data, evaluate, train


@functools.cache
def trained_digits(epochs: int = 8):
    splits = data.load_digits()
    train_split, test_split = (data.Split(data.normalize(s.images, "digits"), s.labels) for s in splits.values())
    model = oj.models.small_vgg(10)
    tx = train.sgd_cosine(learning_rate=0.05, total_steps=epochs * data.num_batches(len(train_split.labels), 32))
    state = train.create_train_state(model, tx, train_split.images[:32], seed=0)
    for epoch in range(epochs):
        for images, labels in data.batches(train_split, batch_size=32, seed=0, epoch=epoch):
            state, _ = train.train_step(state, images, labels)
    return model, state, test_split


def test_digits_calibration_beats_baseline_at_t_up_to_l():
    """A briefly trained QCFS CNN (L = 4) on digits: calibrated SNN > uncalibrated for T <= L."""
    model, state, test_split = trained_digits()
    assert evaluate.ann_accuracy(model, state.variables, test_split, batch_size=180) > 0.9
    baseline = evaluate.snn_accuracy(model, state.variables, test_split, num_steps=4, batch_size=180)
    calibrated = evaluate.snn_accuracy(
        model, state.variables, test_split, num_steps=4, presim_steps=4, iterations=1, batch_size=180
    )
    assert np.all(calibrated > baseline), (baseline, calibrated)
    stats = [
        evaluate.snn_offset_statistics(
            model, state.variables, test_split, num_steps=4, presim_steps=4, iterations=k, batch_size=180
        )["all"]
        for k in (0, 1, 2)
    ]
    assert stats[0]["zero_ratio"] < stats[1]["zero_ratio"] <= stats[2]["zero_ratio"]
    assert stats[0]["mse"] > stats[1]["mse"] >= stats[2]["mse"]


def test_checkpoint_round_trip_and_corruption(tmp_path):
    model, state, _ = trained_digits()
    fresh = train.create_train_state(model, state.tx, np.zeros((2, 8, 8, 1), np.float32), seed=5)
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
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        checkpoint.restore(tmp_path / "latest", fresh)


def test_optimizer_rejects_empty_schedule():
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        train.sgd_cosine(learning_rate=0.1, total_steps=0)
