"""Data-level calibration (data_v0, data_bias), warm-started COS and SRP (docs/method.md section 8)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import offsetjax as oj
from offsetjax.models.layers import Activation
from offsetjax.splits import Split


class OneSite(nn.Module):
    """Dense -> activation site: with a static image, the site's input current is constant."""

    activation: Any = Activation(oj.QCFS, levels=4)
    width: int = 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        return self.activation(name="act")(nn.Dense(self.width, name="dense")(x))


class TwoSites(nn.Module):
    activation: Any = Activation(oj.QCFS, levels=4)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.activation(name="act1")(nn.Dense(7, name="dense1")(x))
        return self.activation(name="act2")(nn.Dense(5, name="dense2")(x))


def _variables(model, seed: int, features: int = 3, thresholds=(1.0, 1.0)):
    variables = model.init(jax.random.key(seed), jnp.zeros((1, features)))
    params = dict(variables["params"])
    sites = [name for name in params if name.startswith("act")]
    for name, theta in zip(sites, thresholds):
        params[name] = {"threshold": jnp.asarray(theta, jnp.float32)}
    return {"params": params}


def _dense(x, params, extra=0.0):
    """``x @ kernel + bias (+ extra)``, broadcasting explicitly (the tests raise on rank promotion)."""
    y = x @ params["kernel"]
    return y + jnp.broadcast_to(params["bias"] + extra, y.shape)


def _images(seed: int, count: int, features: int = 3) -> np.ndarray:
    return np.asarray(jax.random.normal(jax.random.key(seed + 1), (count, features)), np.float32)


@settings(max_examples=12)  # each example runs two calibrations: a few compiled programs each
@given(st.integers(0, 2**16), st.sampled_from([2, 4, 8]), st.floats(0.5, 2.0))
def test_data_potential_removes_offset_spikes_of_shifted_potentials(seed, levels, theta):
    # Theorem-3 conditions (T = L, constant current) from v0 = theta/2 + n * theta, n in {-1, 0, 1}
    # per neuron: each neuron is off by up to one spike. From one calibration image (the same
    # image), Li et al.'s linear step shifts v0 by theta * psi (Definition 1), and the bisection
    # lands where every neuron fires exactly QCFS's count: every offset spike removed.
    model = OneSite(activation=Activation(oj.QCFS, levels=levels))
    ann_variables = _variables(model, seed, thresholds=(theta,))
    image = _images(seed, 1)
    snn = oj.spiking_model(model, num_steps=levels)
    shifted = oj.convert_variables(snn, ann_variables)
    n = np.asarray(jax.random.randint(jax.random.key(seed + 2), (6,), -1, 2), np.float32)
    start = np.float32(theta) * (0.5 + n)
    shifted["initial_potential"] = {"act": {"v0": jnp.asarray(start)}}
    target = np.asarray(oj.predict(model, ann_variables, image))[0]
    rate = np.asarray(oj.simulate(snn, shifted, image))[-1, 0]
    count = np.round(rate * levels / np.float32(theta))
    psi = np.round(np.asarray(oj.offset_spike(target, count, np.float32(theta), num_steps=levels)))  # integers
    assert np.all(np.abs(psi) <= 1)

    linear = oj.data_potential(snn, ann_variables, image, snn_variables=shifted, solver="linear")
    np.testing.assert_allclose(np.asarray(linear["initial_potential"]["act"]["v0"]) - start, theta * psi, atol=1e-5)

    solved = oj.data_potential(snn, ann_variables, image, snn_variables=shifted)
    assert np.asarray(solved["initial_potential"]["act"]["v0"]).shape == (6,)  # per neuron, no batch axis
    np.testing.assert_allclose(np.asarray(oj.simulate(snn, solved, image))[-1, 0], target, atol=1e-5)


def _reference_rates(ann_variables, images, num_steps, biases):
    """Site outputs of TwoSites's SNN ``[T, B, ...]`` per site, by hand, with a current ``biases[i]``."""
    params = ann_variables["params"]
    x, outputs = images, []
    for index, (dense, act) in enumerate((("dense1", "act1"), ("dense2", "act2"))):
        theta = params[act]["threshold"]
        current = _dense(x, params[dense], biases[index])
        current = jnp.broadcast_to(current, (num_steps, *current.shape[-2:]))
        spikes, _ = oj.if_simulate(current, theta, 0.5 * theta)
        x = theta * spikes
        outputs.append(x)
    return outputs


def _ann_outputs(ann_variables, images, levels=4):
    params = ann_variables["params"]
    a1 = oj.qcfs(_dense(images, params["dense1"]), params["act1"]["threshold"], levels=levels)
    a2 = oj.qcfs(_dense(a1, params["dense2"]), params["act2"]["threshold"], levels=levels)
    return a1, a2


def test_data_bias_linear_step_layer_by_layer_matches_a_hand_computation():
    model = TwoSites()
    ann_variables = _variables(model, 3, thresholds=(1.3, 0.8))
    images = _images(3, 16)
    targets = _ann_outputs(ann_variables, images)
    zero = (jnp.zeros(7), jnp.zeros(5))
    first = _reference_rates(ann_variables, images, 3, zero)[0]
    b1 = jnp.mean(targets[0] - jnp.mean(first, axis=0), axis=0)
    second = _reference_rates(ann_variables, images, 3, (b1, zero[1]))[1]  # with site 1 corrected
    b2 = jnp.mean(targets[1] - jnp.mean(second, axis=0), axis=0)
    snn = oj.spiking_model(model, num_steps=3)
    result = oj.data_bias(snn, ann_variables, images, solver="linear")["bias_correction"]
    np.testing.assert_allclose(result["act1"]["b"], b1, atol=1e-6)
    np.testing.assert_allclose(result["act2"]["b"], b2, atol=1e-6)
    # and the SNN simulates with that current added at every step
    variables = {**oj.convert_variables(snn, ann_variables), "bias_correction": result}
    expected = _reference_rates(ann_variables, images, 3, (b1, b2))[1]
    np.testing.assert_allclose(oj.simulate(snn, variables, images)[-1], jnp.mean(expected, axis=0), atol=1e-5)


@settings(max_examples=4)  # each example compiles four calibrations
@pytest.mark.slow  # a property of the solver, not of the paper: 11 s of compiling in the fast tier
@pytest.mark.long  # minutes of .ci/run's budget: run with pytest -q -m long
@given(st.integers(0, 2**16), st.integers(1, 6))
def test_bisection_gets_the_mean_rate_at_least_as_close_as_the_linear_step(seed, num_steps):
    model = TwoSites()
    ann_variables = _variables(model, seed, thresholds=(1.0, 1.0))
    images = _images(seed, 12)
    target = jnp.mean(_ann_outputs(ann_variables, images)[0], axis=0)

    def first_site_error(solver: str, method) -> np.ndarray:
        result = method(oj.spiking_model(model, num_steps=num_steps), ann_variables, images, solver=solver)
        if "bias_correction" in result:
            biases = (result["bias_correction"]["act1"]["b"], jnp.zeros(5))
            rate = jnp.mean(_reference_rates(ann_variables, images, num_steps, biases)[0], axis=(0, 1))
        else:
            v0 = result["initial_potential"]["act1"]["v0"]
            current = _site_currents(ann_variables, images, num_steps)
            rate = jnp.mean(oj.if_simulate(current, 1.0, jnp.broadcast_to(v0, current.shape[1:]))[0], axis=(0, 1))
        return np.abs(np.asarray(rate - target))

    for method in (oj.data_potential, oj.data_bias):
        assert np.all(first_site_error("bisect", method) <= first_site_error("linear", method) + 1e-6)


def _site_currents(ann_variables, images, num_steps):
    params = ann_variables["params"]["dense1"]
    current = _dense(images, params)
    return jnp.broadcast_to(current, (num_steps, *current.shape))


def test_srp_silences_neurons_by_their_residual_potential_and_reads_the_last_t_steps():
    # SRP with tau = 2, T = 3 against a hand computation: site 1 pre-simulates 2 steps from v0,
    # keeps the neurons whose residual exceeds 1e-3 theta, restarts from v0 for 3 steps; site 2
    # pre-simulates on site 1's first 2 (unsilenced) outputs. Logits from the last 3 steps.
    model = TwoSites()
    ann_variables = _variables(model, 5, thresholds=(0.9, 1.1))
    images = _images(5, 10)
    params = ann_variables["params"]
    tau, steps = 2, 3
    x = jnp.broadcast_to(images, (tau + steps, *images.shape))
    for dense, act in (("dense1", "act1"), ("dense2", "act2")):
        theta = params[act]["threshold"]
        current = _dense(x, params[dense])
        before, state = oj.if_simulate(current[:tau], theta, 0.5 * theta)
        keep = (state.v > 1e-3 * theta).astype(jnp.float32)
        after, _ = oj.if_simulate(current[tau:], theta, 0.5 * theta)
        x = theta * jnp.concatenate([before, after * keep[None]])
    expected = jnp.cumsum(x[tau:], axis=0) / jnp.arange(1, steps + 1, dtype=jnp.float32)[:, None, None]
    snn = oj.spiking_model(model, num_steps=steps, srp_steps=tau)
    variables = oj.convert_variables(snn, ann_variables)
    np.testing.assert_allclose(oj.simulate(snn, variables, images), expected, atol=1e-6)
    assert 0 < float(jnp.mean(keep)) < 1  # some neurons silenced, some kept: the test can tell
    # the whole simulation traces under a caller's jit too
    np.testing.assert_allclose(jax.jit(lambda v, i: oj.simulate(snn, v, i))(variables, images), expected, atol=1e-6)


def test_warm_cos_pre_simulates_from_the_data_level_potentials():
    model = OneSite()
    ann_variables = _variables(model, 7)
    images = _images(7, 8)
    warm = oj.spiking_model(model, num_steps=4, presim_steps=2, iterations=1)
    calibrated = oj.data_potential(warm, ann_variables, _images(70, 32))  # runs the plain T = 4 network
    plain = oj.data_potential(oj.spiking_model(model, num_steps=4), ann_variables, _images(70, 32))
    jax.tree.map(np.testing.assert_array_equal, calibrated, plain)
    v0 = calibrated["initial_potential"]["act"]["v0"]
    params = ann_variables["params"]["dense"]
    currents = jnp.broadcast_to(_dense(images, params), (4, 8, 6))
    expected = oj.calibrate_initial_potential(currents, 1.0, v0, presim_steps=2, iterations=1)
    np.testing.assert_array_equal(oj.calibrate_network(warm, calibrated, images)["act"]["v0"], expected)


class ManySites(nn.Module):
    """Six sites of six different widths: six differently shaped site programs, were each compiled alone."""

    activation: Any = Activation(oj.QCFS, levels=4)

    @nn.compact
    def __call__(self, x, train: bool = False):
        for index, width in enumerate((9, 8, 7, 6, 5, 4)):
            x = self.activation(name=f"act{index}")(nn.Dense(width, name=f"dense{index}")(x))
        return x


@pytest.mark.slow  # compiles several programs: kept out of the fast tier's 3 minutes
def test_one_compiled_program_per_calibration_whatever_the_number_of_sites():
    # A fresh network (shapes no other test uses): each method compiles exactly one program,
    # and calling it again compiles nothing.
    model = ManySites()
    ann_variables = _variables(model, 13, features=11, thresholds=(1.0,) * 6)
    images = _images(13, 37, features=11)
    compilations = []

    def record(name, seconds, **_):
        if name == "/jax/core/compile/backend_compile_duration":
            compilations.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(record)
    try:
        counts = []
        for method in (oj.data_potential, oj.data_bias, oj.data_potential):
            before = len(compilations)
            method(oj.spiking_model(model, num_steps=3), ann_variables, images)
            counts.append(len(compilations) - before)
        assert counts == [1, 1, 0]
    finally:
        jax.monitoring.unregister_event_duration_listener(record)


def test_bad_arguments_are_named():
    model = OneSite()
    ann_variables = _variables(model, 0)
    images = _images(0, 4)
    snn = oj.spiking_model(model, num_steps=2)
    with pytest.raises(ValueError, match="solver must be one of"):
        oj.data_potential(snn, ann_variables, images, solver="newton")
    with pytest.raises(ValueError, match="snn must be the spiking network from offsetjax.spiking_model"):
        oj.data_bias(model, ann_variables, images)
    calibrated = oj.data_potential(snn, ann_variables, images)
    for other in (oj.spiking_model(model, num_steps=3), oj.spiking_model(model, num_steps=1)):
        with pytest.raises(ValueError, match=r"calibrated for num_steps=2 .* this network runs num_steps=\d"):
            oj.simulate(other, calibrated, images)
    with pytest.raises(ValueError, match=r"calibrated for num_steps=2 .* this network runs num_steps=4"):
        oj.evaluate_snn(oj.spiking_model(model, num_steps=4), calibrated, Split(images, np.zeros(4, int)), batch_size=4)
    with pytest.raises(ValueError, match="SRP and COS are separate methods"):
        oj.spiking_model(model, num_steps=2, presim_steps=1, iterations=1, srp_steps=1)
    with pytest.raises(ValueError, match="srp_steps must be >= 0"):
        oj.spiking_model(model, num_steps=2, srp_steps=-1)
