"""NIR files run by other simulators (slow tier; each peer skips when it is not installed, see
.ci/run for how it installs them): export -> nir.read -> the peer's loader in
experiments/nir_peers.py (the recipe docs/interop.md gives) -> the same images at batch 4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import offsetjax as oj

pytestmark = pytest.mark.slow
nir = pytest.importorskip("nir")
from experiments.nir_peers import run_norse, run_sinabs, run_spyx  # noqa: E402
from offsetjax.interop.nir import from_nir, run_nir, to_nir  # noqa: E402
from tests.test_nir import NETWORKS, OwnNet, float64_variables  # noqa: E402

NUM_STEPS = 6


def exported(name: str, method: str, tmp_path):
    """A network (random weights, float32) as ``method`` runs it, its file read back, and 4 images."""
    model = {"vgg": NETWORKS["vgg"], "own": OwnNet()}[name]
    shape = {"vgg": (8, 8, 2), "own": (10, 10, 3)}[name]
    images = np.asarray(jax.random.uniform(jax.random.key(0), (4, *shape)), np.float32)
    with jax.enable_x64(True):
        ann = float64_variables(model, jnp.asarray(images))
    ann = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), ann)
    snn = oj.spiking_model(model, num_steps=NUM_STEPS)
    variables = oj.convert_variables(snn, ann)
    if method == "data_v0":  # per-neuron v(0) from a calibration set: the calibration a file carries
        calibration = np.asarray(jax.random.uniform(jax.random.key(5), (32, *shape)), np.float32)
        variables = oj.data_potential(snn, ann, calibration)
    nir.write(tmp_path / "net.nir", to_nir(snn, variables, shape))
    expected = np.asarray(oj.simulate(snn, variables, images))
    return nir.read(tmp_path / "net.nir"), images, expected


@pytest.mark.parametrize("method", ["qcfs", "data_v0"])
@pytest.mark.parametrize("name", ["vgg", "own"])
def test_sinabs_runs_the_file_spike_for_spike(name, method, tmp_path):
    pytest.importorskip("sinabs", reason="sinabs is not installed (pip install --no-deps sinabs nirtorch pbr)")
    graph, images, expected = exported(name, method, tmp_path)
    outputs = run_sinabs(graph, images, NUM_STEPS)
    assert outputs.shape == expected.shape
    assert np.any(np.abs(np.diff(expected, axis=0)) > 0)  # the output changes over t: spikes flow
    np.testing.assert_allclose(outputs, expected, atol=1e-4)  # float32 rounding; one spike moves it by ~0.1


@pytest.mark.parametrize("name", ["vgg", "own"])
def test_norse_runs_the_file_as_nirs_literal_if_from_the_carried_v0(name, tmp_path):
    pytest.importorskip("norse", reason="norse is not installed (pip install --no-deps norse nirtorch)")
    graph, images, expected = exported(name, "data_v0", tmp_path)
    outputs = run_norse(graph, images, NUM_STEPS)
    literal = np.asarray(run_nir(graph, images, semantics="nir", from_v_init=True))
    np.testing.assert_allclose(outputs, literal, atol=1e-4)  # norse's IAF: reset to 0, fires at v > theta
    without_v0 = np.asarray(run_nir(graph, images, semantics="nir"))
    assert not np.allclose(literal, without_v0)  # the carried v(0) is what norse ran with


def test_spyx_runs_the_file_and_converges_to_offsetjax(tmp_path):
    pytest.importorskip("spyx", reason="spyx is not installed (pip install spyx)")
    graph, images, _ = exported("vgg", "qcfs", tmp_path)
    steps = 64  # spyx's IF fires from the potential before each step's input: transients at small T
    back, variables = from_nir(graph, num_steps=steps)  # the same network, run for 64 steps
    expected = np.asarray(oj.simulate(back, variables, images))
    outputs = run_spyx(graph, images, steps)
    assert outputs.shape == expected.shape
    np.testing.assert_allclose(outputs[-1], expected[-1], atol=0.15 * np.abs(expected[-1]).max())
