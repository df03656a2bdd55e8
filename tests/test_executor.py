"""The step-by-step executor against the layer-by-layer simulator: the same spikes at every site
and the same logits (float64), static and time-varying inputs, every method; and the latency
the derivation of docs/method.md section 9 predicts."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import offsetjax as oj
from offsetjax.executor import run_step_by_step, step_by_step
from offsetjax.models.layers import ConvBN, avg_pool, flatten


class HandWritten(nn.Module):
    """A network the library does not ship: a stem, one residual block with an identity
    shortcut, a pool and a hidden dense layer; 4 sites on its longest path, 3 on the shortcut's."""

    activation: Any = oj.models.Activation(oj.QCFS, levels=4)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.activation(name="stem_act")(ConvBN(4, name="stem")(x, train))
        branch = self.activation(name="branch_act")(ConvBN(4, name="conv_a")(x, train))
        x = self.activation(name="join_act")(ConvBN(4, name="conv_b")(branch, train) + x)
        x = flatten(avg_pool(x))
        x = self.activation(name="fc_act")(nn.Dense(16, name="fc")(x))
        return nn.Dense(10, name="classifier")(x)


#: Each method as the variables and schedule it runs with (data-level methods as the variables
#: their calibrations produce: per-neuron v(0), or a per-channel bias current).
METHODS = {
    "qcfs": {},
    "cos_k1": {"presim_steps": 2, "iterations": 1},
    "cos_k2": {"presim_steps": 2, "iterations": 2},
    "data_v0": {},
    "data_bias": {},
    "srp": {"srp_steps": 2},
}
NUM_STEPS = 4


def network(arch: str, method: str, seed: int = 0, dtype=jnp.float64, side: int = 8):
    """A network (float64 by default) whose sites fire often: thresholds 0.3, v(0) per method."""
    model = HandWritten() if arch == "hand_written" else oj.models.ARCHITECTURES[arch](10)
    ann = model.init(jax.random.key(seed), jnp.zeros((1, side, side, 1), jnp.float32))
    ann = jax.tree.map(lambda a: a.astype(dtype), ann)
    snn = oj.spiking_model(model, num_steps=NUM_STEPS, **METHODS[method])
    variables = oj.convert_variables(snn, ann)
    variables["params"] = traverse_util.unflatten_dict(
        {
            path: jnp.full_like(leaf, 0.3) if path[-1] == "threshold" else leaf
            for path, leaf in traverse_util.flatten_dict(variables["params"]).items()
        }
    )
    keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
    # the neuron shape of every site: its v(0) as the SNN's own init makes it
    neurons = jax.eval_shape(snn.init, jax.random.key(0), jnp.zeros((1, 1, side, side, 1), jnp.float32))[
        "initial_potential"
    ]
    neurons = traverse_util.flatten_dict(neurons)
    if method == "data_v0":  # per-neuron v(0), as data_potential writes it
        variables["initial_potential"] = traverse_util.unflatten_dict(
            {path: jax.random.uniform(next(keys), v.shape, dtype, -0.2, 0.4) for path, v in neurons.items()}
        )
    if method == "data_bias":  # a per-channel current at every site's input, as data_bias writes it
        variables["bias_correction"] = traverse_util.unflatten_dict(
            {
                path[:-1] + ("b",): jax.random.uniform(next(keys), v.shape[-1:], dtype, -0.1, 0.1)
                for path, v in neurons.items()
            }
        )
    return snn, variables


def site_outputs(snn, variables, images, frames: bool) -> dict:
    """Every site's output sequence in the layer-by-layer simulator."""
    captured = _captured(snn, variables, images if frames else images[None])
    return {"/".join(path[:-1]): np.asarray(value[0]) for path, value in traverse_util.flatten_dict(captured).items()}


@functools.partial(jax.jit, static_argnums=0)
def _captured(snn, variables, entered):
    _, captured = snn.apply(
        variables, entered, capture_intermediates=lambda module, _: isinstance(module, oj.IFActivation)
    )
    return captured["intermediates"]


def inputs(method: str, frames: bool, side: int = 8):
    steps = NUM_STEPS + METHODS[method].get("srp_steps", 0)
    shape = (steps, 3, side, side, 1) if frames else (3, side, side, 1)
    return jax.random.uniform(jax.random.key(7), shape, jnp.float64)


#: Every method on the hand-written residual network (fast tier) and once on the Fashion-MNIST
#: networks' shapes (slow tier), static and time-varying inputs and both delays among them.
CASES = [
    ("hand_written", "qcfs", True, 0),
    ("hand_written", "cos_k1", False, 0),
    ("hand_written", "cos_k2", False, 1),
    ("hand_written", "data_v0", True, 1),
    ("hand_written", "data_bias", False, 0),
    ("hand_written", "srp", True, 1),
    *(  # each method once on a Fashion-MNIST network, both networks, inputs and delays among them
        pytest.param(
            ("small_vgg", "small_resnet")[index % 2],
            method,
            index // 2 % 2 == 0,
            index // 3 % 2,
            marks=pytest.mark.slow,
        )
        for index, method in enumerate(METHODS)
    ),
]


@pytest.mark.parametrize(("arch", "method", "frames", "delay"), CASES)
def test_step_by_step_emits_the_simulators_spikes_at_every_site(arch, method, frames, delay):
    side = 8 if arch == "hand_written" else 28
    with jax.enable_x64(True):
        snn, variables = network(arch, method, side=side)
        images = inputs(method, frames, side)
        expected = oj.simulate(snn, variables, images, frames=frames)
        run = run_step_by_step(snn, variables, images, frames=frames, delay=delay)
        reference = site_outputs(snn, variables, images, frames)
        assert sorted(run.site_outputs) == sorted(reference)
        fired = 0
        for path, spikes in reference.items():
            np.testing.assert_array_equal(np.asarray(run.site_outputs[path]), spikes, err_msg=path)
            fired += int(np.count_nonzero(spikes))
        assert fired > 100  # the comparison is not of silent networks
        assert run.logits.dtype == jnp.float64
        np.testing.assert_allclose(run.logits, expected, rtol=0, atol=1e-12)
        if not frames and (method == "cos_k2" or arch != "hand_written"):
            # what count_operations charges is what the executor ran, replays included
            operations = oj.count_operations(snn, variables, images)
            for path, fired in run.site_spikes.items():
                charged = np.sum(operations.spikes[path], axis=0) + operations.presim_spikes[path]
                np.testing.assert_array_equal(np.asarray(fired), np.asarray(charged), err_msg=path)


#: Sites on the longest path from the image to the output.
DEPTH = {"hand_written": 4, "small_vgg": 6, "small_resnet": 5}
#: k * rho of each method in METHODS: the ticks its sites hold their inputs.
BUFFERED = {"qcfs": 0, "cos_k1": 2, "cos_k2": 4, "data_v0": 0, "data_bias": 0, "srp": 0}


@pytest.mark.parametrize(
    "arch", ["hand_written", *(pytest.param(arch, marks=pytest.mark.slow) for arch in ("small_vgg", "small_resnet"))]
)
@pytest.mark.parametrize("method", ["qcfs", "cos_k2", "srp"])  # k * rho = 0, k * rho > 0, tau
@pytest.mark.parametrize("delay", [0, 1])
def test_the_t_th_output_appears_at_the_tick_the_derivation_says(arch, method, delay):
    """docs/method.md section 9: on a network whose longest path holds L sites, the t-th output
    read out appears at tick L * (k * rho + d) + t (+ tau with SRP, whose first tau outputs are
    its pre-simulation). Traced, not compiled; one run per network below measures it."""
    snn, variables = network(arch, method, dtype=jnp.float32)
    program = step_by_step(snn, variables, (8, 8, 1), batch_size=1, delay=delay)
    tau = METHODS[method].get("srp_steps", 0)
    assert program.output_lag == DEPTH[arch] * (BUFFERED[method] + delay)
    assert (program.num_outputs, program.readout_start) == (tau + NUM_STEPS, tau)
    first = program.sites[0]
    assert (first.input_lag, first.output_lag) == (0, BUFFERED[method] + delay)


@pytest.mark.parametrize(
    ("arch", "method", "delay"),
    [("hand_written", "cos_k2", 1), pytest.param("small_resnet", "srp", 0, marks=pytest.mark.slow)],
)
def test_the_executor_measures_the_derived_latency(arch, method, delay):
    snn, variables = network(arch, method, dtype=jnp.float32)
    run = run_step_by_step(snn, variables, np.zeros((1, 8, 8, 1), np.float32), delay=delay)
    tau = METHODS[method].get("srp_steps", 0)
    derived = DEPTH[arch] * (BUFFERED[method] + delay) + tau + np.arange(1, NUM_STEPS + 1)
    np.testing.assert_array_equal(run.output_ticks, derived)


@pytest.mark.slow
@pytest.mark.long  # traces VGG-16: outside .ci/run's slow tier and its budget (pytest -m long)
def test_cos_on_vgg16_waits_sites_times_rho_ticks():
    """The issue's example: VGG-16's 15 sites at rho = 4, k = 1, d = 0 emit their first output at tick 61."""
    model = oj.models.vgg16(10)
    snn = oj.spiking_model(model, num_steps=4, presim_steps=4, iterations=1)
    variables = oj.convert_variables(snn, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    program = step_by_step(snn, variables, (32, 32, 3), batch_size=1)
    assert len(program.sites) == 15 and program.output_lag == 60


def test_bad_arguments_are_named():
    snn, variables = network("hand_written", "cos_k1", dtype=jnp.float32)
    images = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="delay"):
        run_step_by_step(snn, variables, images, delay=2)
    with pytest.raises(ValueError, match=r"frames must be one batch per step, \[steps, B, \.\.\.\] with steps = 4"):
        run_step_by_step(snn, variables, np.zeros((3, 2, 8, 8, 1), np.float32), frames=True)
    with pytest.raises(ValueError, match="frames must be one batch per step"):
        oj.simulate(snn, variables, np.zeros((5, 2, 8, 8, 1), np.float32), frames=True)
