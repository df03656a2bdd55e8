import jax.numpy as jnp
import numpy as np
import pytest

import offsetjax as oj


def test_statistics_of_a_known_site():
    # theta = 1, T = 4; neuron 0: constant 0.3 -> QCFS wants 1 spike (psi from count),
    # neuron 1: silent with a = 0, neuron 2: counts 2 where QCFS wants 4 (psi = 2).
    currents = jnp.array([[0.3, -1.0, 1.0]] * 4)
    count = jnp.array([1.0, 0.0, 2.0])
    stats = oj.offset_statistics(currents, count, jnp.float32(1.0))
    np.testing.assert_array_equal(stats.histogram, [2, 0, 1, 0])
    np.testing.assert_allclose(stats.squared_error, (0.25 - 0.25) ** 2 + 0.0 + (0.5 - 1.0) ** 2)
    summary = oj.summarize({"a": stats, "b": stats})
    assert summary["all"]["num_neurons"] == 6
    assert summary["all"]["zero_ratio"] == pytest.approx(2 / 3)
    assert summary["sites"]["a"]["psi_histogram"]["2"] == pytest.approx(1 / 3)
    assert summary["all"]["firing_rate"] == pytest.approx(3 / 12)
    assert summary["all"]["mse"] == pytest.approx(0.25 / 3)


def test_accumulate_adds_batches_in_64_bit():
    stats = oj.offset_statistics(jnp.ones((2, 5)), jnp.array([2.0, 2.0, 1.0, 0.0, 2.0]), jnp.float32(1.0))
    total = None
    for _ in range(3):
        total = oj.accumulate(total, stats)
    assert total.histogram.dtype == np.float64
    np.testing.assert_array_equal(total.histogram, [9, 3, 3, 0])  # |psi| = 0, 0, 1, 2, 0 per batch
    assert float(total.squared_error) == 3 * (0.5**2 + 1.0**2)
    assert float(total.spike_count) == 21 and float(total.num_neurons) == 15
    summary = oj.summarize({"site": total})["all"]
    assert summary["zero_ratio"] == pytest.approx(0.6) and summary["firing_rate"] == pytest.approx(21 / 30)


def test_masked_total_drops_padding_rows():
    per_sample = oj.stats.OffsetStatistics(
        histogram=jnp.array([[3, 1, 0, 0], [2, 2, 0, 0], [4, 0, 0, 0]]),
        squared_error=jnp.array([0.5, 1.0, 7.0]),
        spike_count=jnp.array([2.0, 3.0, 9.0]),
        num_neurons=jnp.array([4, 4, 4]),
        num_steps=jnp.array([4, 4, 4]),
    )
    total = oj.stats.masked_total(per_sample, jnp.array([True, True, False]))
    np.testing.assert_array_equal(total.histogram, [5, 3, 0, 0])
    assert float(total.squared_error) == 1.5 and float(total.spike_count) == 5 and int(total.num_neurons) == 8


def test_summarize_needs_sites():
    with pytest.raises(ValueError, match="at least one site"):
        oj.summarize({})
