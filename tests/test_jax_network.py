"""from_jax: any JAX ReLU network converts, and runs everywhere the library's own networks run.

Every ReLU spelling becomes a site; every operation a spiking network cannot compute is refused
by name with the line it comes from; the converted network runs through simulate, the
executor (equal logits), NIR (round trip), COS, the data-level calibrations and the operation
counts; and a network of ``offsetjax.models`` converted through this path gives the same
logits, bit for bit, as ``spiking_model`` on the module itself.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import offsetjax as oj
from offsetjax.activation import ANNSite
from offsetjax.models.layers import Activation

IMAGES = jax.random.uniform(jax.random.key(1), (6, 8, 8, 2))

#: Every spelling of a ReLU a user writes, and the lambda a clip keeps.
SPELLINGS = {
    "jax.nn.relu": (jax.nn.relu, None),
    "nn.relu": (nn.relu, None),
    "jnp.maximum(x, 0)": (lambda x: jnp.maximum(x, 0), None),
    "jnp.maximum(0.0, x)": (lambda x: jnp.maximum(0.0, x), None),
    "jnp.clip(x, 0, 1.5)": (lambda x: jnp.clip(x, 0, 1.5), 1.5),
}


class Net(nn.Module):
    """A user's network in flax's own layers: convolution, batch norm, a ReLU spelling, average
    pooling, a residual, concatenation (unless ``concat=False``), a dense head."""

    relu: str = "nn.relu"
    concat: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        relu = SPELLINGS[self.relu][0]
        x = relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
        with jax.numpy_dtype_promotion("standard"):  # flax's avg_pool divides by an int (tests run strict)
            x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x + jax.nn.relu(nn.Conv(4, (3, 3))(x))  # a residual
        if self.concat:
            x = jnp.concatenate([x, jax.nn.relu(nn.Conv(2, (1, 1))(x))], axis=-1)
        return nn.Dense(3)(relu(nn.Dense(8)(x.reshape(x.shape[0], -1))))


def _network(relu: str = "nn.relu", concat: bool = True):
    net = Net(relu, concat)
    variables = net.init(jax.random.key(0), IMAGES)
    return net, variables


def _relu_outputs(model, variables) -> dict:
    """Each site's ReLU output on IMAGES, by site name."""
    _, state = model.apply(
        variables,
        IMAGES,
        capture_intermediates=lambda module, method: isinstance(module, ANNSite),
        mutable=["intermediates"],
    )
    return {name: outputs["__call__"][0] for name, outputs in state["intermediates"].items()}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_relu_spelling_becomes_a_site(spelling):
    net, variables = _network(spelling)
    model, converted = oj.from_jax(net.apply, variables, IMAGES)
    sites = model.program.sites(list(converted["params"]["network"].values()))
    assert [site.name for site in sites] == ["relu0", "relu1", "relu2", "relu3"]
    ceiling = SPELLINGS[spelling][1]
    assert sites[0].ceiling == sites[3].ceiling == ceiling
    assert "test_jax_network.py" in sites[0].where  # the user's line, also through jax.nn.relu
    if ceiling is not None:  # a clip keeps its c as lambda
        assert float(converted["params"]["relu0"]["threshold"]) == ceiling
    np.testing.assert_allclose(model.apply(converted, IMAGES), net.apply(variables, IMAGES), rtol=1e-6, atol=1e-6)


def test_thresholds_are_the_measured_statistics_of_each_sites_relu():
    net, variables = _network()
    model, by_max = oj.from_jax(net.apply, variables, IMAGES, threshold="max")
    _, by_percentile = oj.from_jax(net.apply, variables, IMAGES, threshold="99.9%", batch_size=4)  # 2 batches
    for name, relu in _relu_outputs(model, by_max).items():
        assert float(by_max["params"][name]["threshold"]) == pytest.approx(float(jnp.max(relu)), rel=1e-6)
        want = np.percentile(np.asarray(relu).reshape(-1), 99.9)
        assert float(by_percentile["params"][name]["threshold"]) == pytest.approx(want, rel=1e-6)
    _, given = oj.from_jax(
        net.apply, variables, image_shape=(8, 8, 2), threshold={f"relu{i}": 0.5 + i for i in range(4)}
    )
    assert [float(given["params"][f"relu{i}"]["threshold"]) for i in range(4)] == [0.5, 1.5, 2.5, 3.5]


def test_per_channel_thresholds_are_each_channels_statistic_and_equal_ones_are_the_scalar():
    """per_channel=True: each site's lambda [C] is the max / percentile of each channel of its
    ReLU over images and positions; a network whose per-channel lambdas all equal c spikes bit
    for bit as the one with the scalar c (the same arithmetic, broadcast)."""
    net, variables = _network()
    model, by_max = oj.from_jax(net.apply, variables, IMAGES, threshold="max", per_channel=True)
    _, by_percentile = oj.from_jax(net.apply, variables, IMAGES, threshold="99%", per_channel=True, batch_size=4)
    for name, relu in _relu_outputs(model, by_max).items():
        per_channel = np.asarray(relu).reshape(-1, relu.shape[-1])
        layer_max = per_channel.max()
        want = np.where(per_channel.max(axis=0) > 0, per_channel.max(axis=0), layer_max)  # silent: the layer's
        np.testing.assert_allclose(by_max["params"][name]["threshold"], want, rtol=1e-6, err_msg=name)
        want = np.percentile(per_channel, 99, axis=0)
        want = np.where(want > 0, want, np.percentile(per_channel, 99))
        np.testing.assert_allclose(by_percentile["params"][name]["threshold"], want, rtol=1e-6, err_msg=name)

    snn = oj.spiking_model(model, num_steps=4, presim_steps=2, iterations=1)
    scalar = {**by_max, "params": {**by_max["params"]}}
    vector = {**by_max, "params": {**by_max["params"]}}
    for name in by_max["params"]:
        if name == "network":
            continue
        channels = by_max["params"][name]["threshold"].shape
        scalar["params"][name] = {"threshold": jnp.float32(0.75)}
        vector["params"][name] = {"threshold": jnp.full(channels, 0.75, jnp.float32)}
    np.testing.assert_array_equal(
        oj.simulate(snn, oj.convert_variables(snn, vector), IMAGES),
        oj.simulate(snn, oj.convert_variables(snn, scalar), IMAGES),
    )


def test_a_threshold_of_another_shape_is_refused_naming_its_leaf():
    net, variables = _network()
    model, converted = oj.from_jax(net.apply, variables, IMAGES, per_channel=True)
    snn = oj.spiking_model(model, num_steps=4)
    bad = {**converted, "params": {**converted["params"], "relu0": {"threshold": jnp.ones(3)}}}  # relu0 has 4
    with pytest.raises(ValueError, match=r"\['relu0'\]\['threshold'\] has shape \(3,\).*per channel \(4,\)"):
        oj.convert_variables(snn, bad, example_images=IMAGES)
    with pytest.raises(ValueError, match=r"\['relu0'\]\['threshold'\] has shape \(3,\).*per neuron \(8, 8, 4\)"):
        oj.simulate(snn, oj.convert_variables(snn, bad), IMAGES)
    with pytest.raises(ValueError, match="per_channel=True measures each channel's lambda on images"):
        oj.from_jax(net.apply, variables, IMAGES, threshold=1.0, per_channel=True)
    with pytest.raises(ValueError, match=r"threshold of relu0 must be a number or one per channel \[C\]"):
        oj.from_jax(
            net.apply, variables, image_shape=(8, 8, 2), threshold={f"relu{i}": np.ones((2, 2)) for i in range(4)}
        )


@settings(max_examples=25, deadline=None)
@given(
    st.one_of(
        st.text(max_size=6).filter(lambda s: s != "max" and not s.rstrip("%").replace(".", "", 1).isdigit()),
        st.sampled_from(["0%", "101%", "-5%", "99.9", "max%"]),
        st.floats(max_value=0) | st.sampled_from([float("nan"), float("inf")]),
        st.dictionaries(st.sampled_from(["relu0", "relu1", "relu9"]), st.floats(0.1, 2), max_size=2),
    )
)
def test_a_bad_threshold_is_refused_naming_it(threshold):
    net, variables = _network()
    with pytest.raises(ValueError, match="threshold"):
        oj.from_jax(net.apply, variables, IMAGES, threshold=threshold)


def test_missing_images_and_sites_are_refused():
    net, variables = _network()
    with pytest.raises(ValueError, match="is measured on calibration images: pass images"):
        oj.from_jax(net.apply, variables, image_shape=(8, 8, 2))
    with pytest.raises(ValueError, match=r"unknown \['relu9'\], missing \['relu1', 'relu2', 'relu3'\]"):
        oj.from_jax(net.apply, variables, image_shape=(8, 8, 2), threshold={"relu0": 1.0, "relu9": 1.0})
    with pytest.raises(ValueError, match="found no ReLU"):
        oj.from_jax(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.ones((128, 3)), IMAGES)


REFUSED = {
    "reduce_window_max": lambda x: nn.max_pool(jax.nn.relu(x), (2, 2), (2, 2)),
    "reduce_max": lambda x: jax.nn.softmax(jax.nn.relu(x)),  # softmax inside: its max first
    "exp": lambda x: jnp.exp(jax.nn.relu(x)),
    "erfc": lambda x: jax.nn.gelu(x, approximate=False),
    "tanh": lambda x: jnp.tanh(jax.nn.relu(x)),
    "mul": lambda x: jax.nn.relu(x) * jax.nn.relu(-x),
}


@pytest.mark.parametrize("primitive", sorted(REFUSED))
def test_what_cannot_spike_is_refused_by_name_and_line(primitive):
    """Before anything compiles: the primitive, the user's line, what to write instead."""

    def apply_fn(w, x):
        y = REFUSED[primitive](x @ w)
        return jax.nn.relu(y).reshape(x.shape[0], -1)[:, :3]

    with pytest.raises(ValueError, match=rf"computes {primitive} on activations at .*test_jax_network.py:\d+"):
        oj.from_jax(apply_fn, jnp.ones((2, 4)), IMAGES, threshold=1.0)


@pytest.mark.slow
def test_the_converted_network_runs_everywhere():
    """simulate, the executor (equal logits), NIR export (round trip equal to simulate), COS,
    data_potential / data_bias, SRP and count_operations, all unchanged."""
    pytest.importorskip("nir")
    from offsetjax.interop.nir import run_nir, to_nir

    net, variables = _network()
    model, converted = oj.from_jax(net.apply, variables, IMAGES, threshold="99.9%")
    snn = oj.spiking_model(model, num_steps=6)
    snn_variables = oj.convert_variables(snn, converted)
    logits = oj.simulate(snn, snn_variables, IMAGES)
    assert logits.shape == (6, 6, 3)
    np.testing.assert_array_equal(oj.run_step_by_step(snn, snn_variables, IMAGES).logits, logits)
    for schedule in (dict(presim_steps=3, iterations=1), dict(srp_steps=2)):
        other = oj.spiking_model(model, num_steps=6, **schedule)
        assert oj.simulate(other, oj.convert_variables(other, converted), IMAGES).shape == (6, 6, 3)
    for calibrate in (oj.data_potential, oj.data_bias):
        calibrated = calibrate(snn, converted, IMAGES)
        assert oj.simulate(snn, calibrated, IMAGES).shape == (6, 6, 3)
    operations = oj.count_operations(snn, snn_variables, IMAGES)
    np.testing.assert_allclose(operations.logits, logits, rtol=1e-5, atol=1e-6)
    assert float(operations.dense_macs) == float(sum(oj.operations.layer_macs(model, (8, 8, 2)).values()))
    # the ANN's MACs, read from its jaxpr: dot_general output x contraction, convolutions on ones
    assert float(operations.dense_macs) == _jaxpr_macs(net, variables)
    # NIR, the concatenation included (placement 1x1 convolutions): the round trip equals simulate
    graph = to_nir(snn, snn_variables, (8, 8, 2))
    assert sum(name.startswith("concat") for name in graph.nodes) == 2
    np.testing.assert_allclose(run_nir(graph, IMAGES), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_per_channel_thresholds_run_everywhere():
    """A network with a lambda per channel: the executor's logits equal simulate's, the NIR
    round trip (thresholds per neuron in the IF nodes) equals them, COS, SRP, data_potential,
    data_bias and the operation counts run."""
    pytest.importorskip("nir")
    from offsetjax.interop.nir import from_nir, run_nir, to_nir

    net, variables = _network()
    model, converted = oj.from_jax(net.apply, variables, IMAGES, threshold="99.9%", per_channel=True)
    snn = oj.spiking_model(model, num_steps=6)
    snn_variables = oj.convert_variables(snn, converted, example_images=IMAGES)
    logits = oj.simulate(snn, snn_variables, IMAGES)
    np.testing.assert_array_equal(oj.run_step_by_step(snn, snn_variables, IMAGES).logits, logits)
    for schedule in (dict(presim_steps=3, iterations=1), dict(srp_steps=2)):
        other = oj.spiking_model(model, num_steps=6, **schedule)
        assert np.isfinite(oj.simulate(other, oj.convert_variables(other, converted), IMAGES)).all()
    for calibrate in (oj.data_potential, oj.data_bias):
        assert np.isfinite(oj.simulate(snn, calibrate(snn, converted, IMAGES), IMAGES)).all()
    np.testing.assert_allclose(oj.count_operations(snn, snn_variables, IMAGES).logits, logits, rtol=1e-5, atol=1e-6)
    graph = to_nir(snn, snn_variables, (8, 8, 2))
    thresholds = np.asarray(graph.nodes["relu0"].v_threshold)  # C, H, W: one per channel
    np.testing.assert_allclose(thresholds[:, 0, 0], converted["params"]["relu0"]["threshold"], rtol=1e-6)
    np.testing.assert_allclose(run_nir(graph, IMAGES), logits, rtol=1e-5, atol=1e-5)
    read, read_variables = from_nir(graph)
    assert read_variables["params"]["relu0"]["threshold"].shape == thresholds.shape  # per neuron, NIR's layout
    np.testing.assert_allclose(oj.simulate(read, read_variables, IMAGES), logits, rtol=1e-5, atol=1e-5)


def _jaxpr_macs(net, variables) -> float:
    closed = jax.make_jaxpr(lambda x: net.apply(variables, x))(IMAGES[:1])
    total = 0.0
    for equation in closed.jaxpr.eqns:
        if equation.primitive.name == "dot_general":
            (contract, _), _ = equation.params["dimension_numbers"]
            lhs = equation.invars[0].aval.shape
            total += np.prod(equation.outvars[0].aval.shape) * np.prod([lhs[i] for i in contract])
        elif equation.primitive.name == "conv_general_dilated":
            ones = [jnp.ones(v.aval.shape, v.aval.dtype) for v in equation.invars]
            total += float(jnp.sum(equation.primitive.bind(*ones, **equation.params)))
    return total


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "activation"), [("small_vgg", "relu"), ("small_resnet", "qcfs")])
def test_offsetjax_models_through_from_jax_spike_as_spiking_model(arch, activation):
    """One network, two paths: the module converted by spiking_model, and its apply function
    converted by from_jax (QCFS sites keep their lambda; ReLU sites given the module's): the
    same logits, bit for bit, uncalibrated and with COS."""
    factory = oj.models.qcfs_l4 if activation == "qcfs" else Activation(ANNSite)
    module = oj.models.ARCHITECTURES[arch](5, activation=factory)
    images = jax.random.uniform(jax.random.key(3), (4, 8, 8, 3))
    variables = module.init(jax.random.key(0), images, train=False)
    variables = {
        **variables,
        "params": jax.tree_util.tree_map_with_path(
            lambda path, x: jnp.full_like(x, 0.7) if path[-1].key == "threshold" else x, variables["params"]
        ),
    }
    model, converted = oj.from_jax(
        lambda v, x: module.apply(v, x, train=False), variables, image_shape=(8, 8, 3), threshold=0.7
    )
    np.testing.assert_array_equal(model.apply(converted, images), module.apply(variables, images, train=False))
    for schedule in (dict(num_steps=5), dict(num_steps=5, presim_steps=2, iterations=2)):
        native, through = oj.spiking_model(module, **schedule), oj.spiking_model(model, **schedule)
        np.testing.assert_array_equal(
            oj.simulate(through, oj.convert_variables(through, converted), images),
            oj.simulate(native, oj.convert_variables(native, variables), images),
        )
    # and the same operation counts: spikes and synaptic operations per site (the fan-outs read
    # from the jaxpr's connectivity view), NeuroBench's events per linear layer, the ANN's MACs
    ours = oj.count_operations(through, oj.convert_variables(through, converted), images)
    theirs = oj.count_operations(native, oj.convert_variables(native, variables), images)
    assert float(ours.dense_macs) == float(theirs.dense_macs) and float(ours.input_macs) == float(theirs.input_macs)
    for field in ("spikes", "synops", "presim_spikes", "presim_synops"):
        np.testing.assert_array_equal(sum(getattr(ours, field).values()), sum(getattr(theirs, field).values()))
    # NeuroBench's events in all; how they split into accumulates and MACs is judged per layer
    # input (one magnitude: spikes), and a convolution offsetjax computes on CPU as 9 shifted
    # matmuls (maps of <= 4 pixels) is 9 layers in the jaxpr, each judging its own slice
    np.testing.assert_array_equal(
        ours.effective_acs + ours.effective_macs, theirs.effective_acs + theirs.effective_macs
    )


@pytest.mark.slow
def test_a_plain_function_and_an_equinox_model_convert():
    """The executed examples of docs/usage.md's other two styles."""
    key1, key2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(key1, (128, 16)) * 0.1, "w2": jax.random.normal(key2, (16, 3)) * 0.3}

    def mlp(params, x):  # a plain function
        return jnp.maximum(x.reshape(x.shape[0], -1) @ params["w1"], 0) @ params["w2"]

    model, variables = oj.from_jax(mlp, params, IMAGES)
    snn = oj.spiking_model(model, num_steps=64)
    logits = oj.simulate(snn, oj.convert_variables(snn, variables), IMAGES)
    np.testing.assert_allclose(logits[-1], mlp(params, IMAGES), atol=0.05)

    eqx = pytest.importorskip("equinox")
    net = eqx.nn.MLP(128, 3, 16, depth=2, activation=jax.nn.relu, key=jax.random.key(1))
    model, variables = oj.from_jax(lambda m, x: jax.vmap(m)(x.reshape(x.shape[0], -1)), net, IMAGES)
    snn = oj.spiking_model(model, num_steps=64)
    logits = oj.simulate(snn, oj.convert_variables(snn, variables), IMAGES)
    want = jax.vmap(net)(IMAGES.reshape(6, -1))
    np.testing.assert_allclose(model.apply(variables, IMAGES), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits[-1], want, atol=0.1)


@pytest.mark.slow
def test_a_flax_nnx_model_converts():
    """docs/usage.md's NNX style: split the model, convert the merge function with its state."""
    nnx = pytest.importorskip("flax.nnx")

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
            self.norm = nnx.BatchNorm(4, rngs=rngs)
            self.dense = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.norm(self.conv(x)))
            with jax.numpy_dtype_promotion("standard"):  # avg_pool divides by an int (tests run strict)
                x = nnx.avg_pool(x, (2, 2), (2, 2))
            return self.dense(x.reshape(x.shape[0], -1))

    net = CNN(nnx.Rngs(0))
    net.eval()  # batch norm from its running statistics
    graphdef, state = nnx.split(net)
    model, variables = oj.from_jax(lambda state, x: nnx.merge(graphdef, state)(x), state, IMAGES)
    assert sorted(variables["params"]) == ["network", "relu0"]
    np.testing.assert_array_equal(model.apply(variables, IMAGES), net(IMAGES))
    snn = oj.spiking_model(model, num_steps=64)
    logits = oj.simulate(snn, oj.convert_variables(snn, variables), IMAGES)
    np.testing.assert_allclose(logits[-1], net(IMAGES), atol=0.05)
