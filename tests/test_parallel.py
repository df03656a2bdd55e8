"""Data parallelism on 8 simulated CPU devices (in a subprocess: the device count is fixed at start)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from offsetjax import parallel
from offsetjax.training import data


@pytest.mark.slow
def test_mesh_evaluation_identical_and_training_within_tolerance():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = Path(__file__).with_name("mesh_check.py")
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600, cwd=script.parent.parent
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["eval_identical"], result
    assert result["num_shards"] == 8
    assert "data" in result["output_sharding"]  # the logits stay batch-sharded: the work was partitioned
    assert result["train_max_abs_diff"] < 1e-5 and result["loss_diff"] < 1e-5, result
    # evaluate_snn over the mesh, batches padded to a multiple of 8: the same as one device.
    assert result["evaluate_accuracy_equal"], result
    assert result["evaluate_zero_ratio"][0] == result["evaluate_zero_ratio"][1], result
    assert result["evaluate_neurons"][0] == result["evaluate_neurons"][1], result
    assert "does not divide" in result["uneven_rejected"], result
    # Operation counts shard with the batch too: the same events on 8 devices as on one.
    np.testing.assert_allclose(*result["evaluate_synops"], rtol=1e-6)
    np.testing.assert_allclose(*result["evaluate_presim_synops"], rtol=1e-6)
    assert result["evaluate_synops"][0][-1] > 0
    # Data-level calibration and SRP shard with the batch too (sums over the calibration set
    # are reduced in another order on 8 devices: float round-off only).
    assert result["data_potential_max_abs_diff"] < 1e-4, result
    assert result["srp_accuracy_equal"], result
    np.testing.assert_allclose(*result["srp_synops"], rtol=1e-6)


def test_each_process_reads_its_own_rows_of_every_global_batch():
    split = data.Split(np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1), np.arange(40, dtype=np.int32))
    full = [labels for _, labels in data.batches(split, batch_size=8, seed=2)]
    shards = [
        [labels for _, labels in data.batches(split, batch_size=8, seed=2, process_index=p, process_count=4)]
        for p in range(4)
    ]
    for step, labels in enumerate(full):
        np.testing.assert_array_equal(np.concatenate([shards[p][step] for p in range(4)]), labels)
    with pytest.raises(ValueError, match="batch_size 8 must be a multiple of process_count 3"):
        next(data.batches(split, batch_size=8, seed=2, process_count=3))


def test_shard_batch_on_one_device_takes_any_batch():
    mesh = parallel.data_mesh(jax.devices()[:1])
    (sharded,) = parallel.shard_batch(mesh, np.ones((3, 2)))
    assert sharded.shape == (3, 2)


def test_no_launcher_means_no_distributed_initialization(monkeypatch):
    for name in parallel.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False
