"""The contract every IF simulation must keep, against a Python reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import offsetjax as oj
from tests import reference
from tests.strategies import currents_and_theta


@given(currents_and_theta())
def test_scan_equals_python_loop(data):
    currents, theta = data
    v0 = 0.5 * theta
    spikes, state = oj.if_simulate(currents, theta, v0)
    for i, (ref_spikes, v, count, min_fired, max_silent) in enumerate(
        reference.per_neuron(reference.simulate_neuron, currents, theta, v0)
    ):
        np.testing.assert_array_equal(spikes[:, i], ref_spikes)
        assert float(state.v[i]) == v
        assert float(state.count[i]) == count
        assert float(state.min_fired_v[i]) == min_fired
        assert float(state.max_silent_v[i]) == max_silent


def test_fires_exactly_at_threshold():
    spikes, state = oj.if_simulate(jnp.array([0.5, 1.0]), 1.0, 0.5)
    np.testing.assert_array_equal(spikes, [1.0, 1.0])
    assert float(state.v) == 0.0


def test_empty_carries_are_infinite_where_spec_says():
    _, silent = oj.if_simulate(jnp.zeros((3, 2)), 1.0, 0.0)
    assert np.all(np.isposinf(silent.min_fired_v)) and np.all(np.isfinite(silent.max_silent_v))
    _, saturated = oj.if_simulate(jnp.full((3, 2), 5.0), 1.0, 0.0)
    assert np.all(np.isneginf(saturated.max_silent_v)) and np.all(np.isfinite(saturated.min_fired_v))


class TestTransforms(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        currents = jax.random.normal(jax.random.key(0), (6, 3, 4)) + 0.3
        out = self.variant(oj.if_simulate)(currents, 1.0, 0.5)
        chex.assert_trees_all_equal(out, oj.if_simulate(currents, 1.0, 0.5))

    def test_vmap_over_batch_equals_batched_call(self):
        currents = jax.random.normal(jax.random.key(1), (5, 7, 3)) + 0.4  # [T, B, N]
        vmapped = jax.vmap(lambda c: oj.if_simulate(c, 1.0, 0.5), in_axes=1, out_axes=(1, 0))(currents)
        chex.assert_trees_all_equal(vmapped, oj.if_simulate(currents, 1.0, 0.5))

    def test_grad_flows_to_initial_potential_and_currents(self):
        currents = jax.random.normal(jax.random.key(2), (4, 5))

        def final_potential(v0, currents):
            return oj.if_simulate(currents, 1.0, v0)[1].v.sum()

        grad_v0, grad_currents = jax.grad(final_potential, argnums=(0, 1))(jnp.full((5,), 0.5), currents)
        np.testing.assert_allclose(grad_v0, 1.0)
        np.testing.assert_allclose(grad_currents, 1.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_spikes_keep_the_dtype_and_potentials_are_float32_at_least(dtype):
    currents = jnp.ones((3, 2, 4), dtype) * 0.4
    spikes, state = oj.if_simulate(currents, jnp.ones((4,), dtype), 0.5)
    chex.assert_shape(spikes, (3, 2, 4))
    chex.assert_type(spikes, dtype)
    chex.assert_type(list(state), jnp.float32)
    chex.assert_shape(list(state), (2, 4))


def test_low_precision_potential_holds_the_theorem2_margin():
    """v(0) = theta/2 - 1e-3 theta is below the threshold crossing in float32; bfloat16 would
    round it back to theta/2 and fire on the tie."""
    currents = jnp.full((1, 1), 0.5, jnp.bfloat16)
    spikes, _ = oj.if_simulate(currents, 1.0, jnp.float32(0.5 - 1e-3))
    assert float(spikes[0, 0]) == 0.0


def test_float64():
    with jax.enable_x64(True):
        spikes, state = oj.if_simulate(np.full((3, 2), 0.4, np.float64), 1.0, 0.5)
        assert spikes.dtype == jnp.float64 and state.v.dtype == jnp.float64
        np.testing.assert_array_equal(state.count, [1.0, 1.0])


def test_per_neuron_thresholds_and_potentials_broadcast():
    currents = jnp.full((4, 2, 3), 0.5)
    theta = jnp.array([0.5, 1.0, 2.0])
    _, state = oj.if_simulate(currents, theta, 0.5 * theta)
    np.testing.assert_array_equal(state.count, [[4, 2, 1], [4, 2, 1]])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((jnp.float32(1.0), 1.0, 0.5), "leading time axis"),
        ((jnp.ones((0, 3)), 1.0, 0.5), "leading time axis"),
        ((jnp.ones((2, 3), jnp.int32), 1.0, 0.5), "currents must have a floating dtype"),
        ((jnp.ones((2, 3)), 0.0, 0.5), "theta must be finite and > 0"),
        ((jnp.ones((2, 3)), jnp.array([1.0, -1.0, 1.0]), 0.5), "theta must be finite and > 0"),
        ((jnp.ones((2, 3)), jnp.ones(4), 0.5), r"theta of shape \(4,\) must broadcast"),
        ((jnp.ones((2, 3)), 1.0, jnp.ones((2, 3))), r"v0 of shape \(2, 3\) must broadcast"),
    ],
)
@pytest.mark.usefixtures("without_type_checker")
def test_bad_input_is_named(args, message):
    with pytest.raises(ValueError, match=message):
        oj.if_simulate(*args)
