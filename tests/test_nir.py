"""NIR export: the graph read back from a file runs to the simulator's logits (float64), for the
library's networks and for one written here; NIR's literal IF semantics give a different
network; what NIR cannot express is refused by name."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import offsetjax as oj
from offsetjax.models import VGG, ResNet

nir = pytest.importorskip("nir")
from offsetjax.interop.nir import from_nir, initial_potentials, run_nir, to_nir  # noqa: E402

NETWORKS = {
    "vgg": VGG(features=(4, "M", 6, 5, "M"), hidden=(7,), num_classes=3),
    "resnet": ResNet((1, 1), (4, 6), 3),
}


def float64_variables(model, images):
    variables = model.init(jax.random.key(1), images.astype(jnp.float32))
    flat = traverse_util.flatten_dict(variables)
    rng = np.random.default_rng(0)
    for key, value in flat.items():
        if key[-1] == "threshold":
            flat[key] = jnp.asarray(rng.uniform(0.4, 1.0), jnp.float64)
        elif key[-1] == "mean":
            flat[key] = jnp.asarray(rng.normal(0, 0.1, value.shape))
        elif key[-1] == "var":
            flat[key] = jnp.asarray(rng.uniform(0.5, 1.5, value.shape))
        else:
            flat[key] = jnp.asarray(value, jnp.float64)
    return traverse_util.unflatten_dict(flat)


class OwnNet(nn.Module):
    """A network the library does not ship: flax's own layers, a stride-2 convolution with a
    bias, a grouped and a 1x1 convolution, a residual addition written by hand, an overlapping
    3x3 / 2 average pool, a flatten and two dense layers."""

    activation: Any = oj.models.Activation(oj.QCFS, levels=4)
    same_padding: bool = False  # flax's 'SAME' at stride 2: asymmetric padding, which NIR cannot hold
    max_pool: bool = False
    product: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        padding = "SAME" if self.same_padding else ((1, 1), (1, 1))
        x = nn.Conv(6, (3, 3), strides=(2, 2), padding=padding)(x)
        x = self.activation(name="a1")(nn.BatchNorm(use_running_average=not train)(x))
        y = nn.Conv(6, (3, 3), padding=1, feature_group_count=3, use_bias=False)(x)
        y = self.activation(name="a2")(nn.BatchNorm(use_running_average=not train)(y))
        y = nn.Conv(6, (1, 1))(y * y if self.product else y)
        x = self.activation(name="a3")(y + x)
        if self.max_pool:
            x = nn.max_pool(x, (3, 3), strides=(2, 2))
        else:  # an average pool (flax's nn.avg_pool divides by an int64, which strict promotion refuses)
            x = nn.pool(x, 0.0, jax.lax.add, (3, 3), (2, 2), "VALID") / 9.0
        x = x.reshape((*x.shape[:-3], -1))
        x = self.activation(name="a4")(nn.Dense(12)(x))
        return nn.Dense(5)(x)


def own_network(method: str, **fields):
    """OwnNet on 10x10x3 images as ``method`` runs it (data-level methods as the variables their
    calibrations write: per-neuron v(0), a per-channel bias current), float64."""
    model = OwnNet(**fields)
    images = jax.random.uniform(jax.random.key(0), (4, 10, 10, 3), jnp.float64)
    schedule = {"cos_k1": {"presim_steps": 2, "iterations": 1}}.get(method, {})
    snn = oj.spiking_model(model, num_steps=5, **schedule)
    variables = oj.convert_variables(snn, float64_variables(model, images))
    rng = np.random.default_rng(3)
    flat = traverse_util.flatten_dict(variables)
    for key in [key for key in flat if key[0] == "initial_potential"]:
        neurons = jax.eval_shape(snn.init, jax.random.key(0), images[None].astype(jnp.float32))
        neurons = neurons["initial_potential"][key[1]]["v0"].shape
        if method == "data_v0":
            flat[key] = jnp.asarray(rng.uniform(-0.2, 0.6, neurons))
        if method == "data_bias":
            flat[("bias_correction", key[1], "b")] = jnp.asarray(rng.uniform(-0.2, 0.2, neurons[-1:]))
    return snn, traverse_util.unflatten_dict(flat), images


@pytest.mark.parametrize("method", ["qcfs", "cos_k1", "data_v0", "data_bias"])
def test_a_network_of_ones_own_is_exported_and_runs_as_simulated(method, tmp_path):
    with jax.enable_x64(True):
        snn, variables, images = own_network(method)
        expected = oj.simulate(snn, variables, images)
        nir.write(tmp_path / "own.nir", to_nir(snn, variables, (10, 10, 3)))
        graph = nir.read(tmp_path / "own.nir")
        kinds = sorted({type(node).__name__ for node in graph.nodes.values()})
        assert kinds == ["Affine", "Conv2d", "Flatten", "IF", "Input", "Output", "SumPool2d"]
        # three convolutions (batch norm folded in) and the identity shortcut's theta as a diagonal 1x1
        assert sum(isinstance(node, nir.Conv2d) for node in graph.nodes.values()) == 4
        np.testing.assert_allclose(run_nir(graph, images), expected, rtol=1e-9, atol=1e-12)
        back, back_variables = from_nir(graph)
        np.testing.assert_allclose(oj.simulate(back, back_variables, images), expected, rtol=1e-9, atol=1e-12)
        assert np.any(np.abs(np.diff(np.asarray(expected), axis=0)) > 0)
        potentials = initial_potentials(graph)
        assert sorted(potentials) == ["a1", "a2", "a3", "a4"] and potentials["a1"].shape == (6, 5, 5)
        if method == "data_v0":  # the calibrated v(0), per neuron, in NIR's C, H, W layout
            written = np.asarray(variables["initial_potential"]["a1"]["v0"])
            np.testing.assert_array_equal(potentials["a1"], np.transpose(written, (2, 0, 1)))


@pytest.mark.usefixtures("without_type_checker")
def test_what_nir_cannot_express_is_refused_by_name():
    cases = {
        r"conv.*pads \(\(0, 1\), \(0, 1\)\).* explicit symmetric padding": {"same_padding": True},
        r"cannot express `reduce_window_max`": {"max_pool": True},
        r"multiplies spikes by spikes": {"product": True},
    }
    with jax.enable_x64(True):
        for message, fields in cases.items():
            snn, variables, _ = own_network("qcfs", **fields)
            with pytest.raises(ValueError, match=message):
                to_nir(snn, variables, (10, 10, 3))
        snn, variables, _ = own_network("qcfs")
        srp = oj.spiking_model(oj.ann_model(snn), num_steps=5, srp_steps=2)
        with pytest.raises(ValueError, match="SRP's silencing mask"):
            to_nir(srp, variables, (10, 10, 3))


@pytest.mark.slow  # the fast tier exports the network written above; these are the library's own
@pytest.mark.parametrize("name", ["vgg", "resnet"])
@pytest.mark.parametrize(("presim", "iterations"), [(0, 0), (3, 1)])
def test_written_graph_runs_to_the_simulators_logits(name, presim, iterations, tmp_path):
    with jax.enable_x64(True):
        images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 2), jnp.float64)
        model = NETWORKS[name]
        snn = oj.spiking_model(model, num_steps=6, presim_steps=presim, iterations=iterations)
        variables = oj.convert_variables(snn, float64_variables(model, images))
        expected = oj.simulate(snn, variables, images)
        graph = to_nir(snn, variables, (8, 8, 2))
        nir.write(tmp_path / "net.nir", graph)
        read = nir.read(tmp_path / "net.nir")
        logits = jax.jit(lambda x: run_nir(read, x))(images)
        np.testing.assert_allclose(logits, expected, rtol=1e-9, atol=1e-12)
        assert np.any(np.abs(np.diff(np.asarray(expected), axis=0)) > 0)  # the output does change over t
        back, back_variables = from_nir(read)  # the reverse: an offsetjax network again
        assert oj.schedule(back) == oj.schedule(snn)
        np.testing.assert_allclose(oj.simulate(back, back_variables, images), expected, rtol=1e-9, atol=1e-12)
        if name == "resnet":  # the graph run as a chip runs it, tick by tick, gives run_nir's outputs
            chip = oj.run_step_by_step(back, back_variables, images, delay=1)
            np.testing.assert_allclose(chip.logits, logits, rtol=1e-9, atol=1e-12)
        literal = jax.jit(lambda x: run_nir(read, x, semantics="nir"))(images)
        assert not np.allclose(literal, expected)  # v(0) = 0, reset to zero, strict >: another network


@pytest.mark.usefixtures("without_type_checker")
def test_bad_images_graphs_and_shapes_are_one_clear_error():
    """Row 13: run_nir and to_nir name what they expected."""
    images = jnp.ones((2, 8, 8, 2))
    model = NETWORKS["vgg"]
    snn = oj.spiking_model(model, num_steps=2)
    variables = oj.convert_variables(
        snn, jax.tree.map(jnp.ones_like, jax.eval_shape(model.init, jax.random.key(0), images))
    )

    def graph(drop_edges_into=None, metadata=True, doubled=False):
        written = to_nir(snn, variables, (8, 8, 2))
        written.edges = [edge for edge in written.edges if edge[1] != drop_edges_into]
        written.edges += written.edges[:1] if doubled else []  # e.g. a shortcut edge added by hand
        written.metadata = written.metadata if metadata else {}
        return written

    edges = len(graph().edges)
    refused = {
        r"\[B, 8, 8, 2\] .* got shape \(2, 2, 8, 8\)": lambda: run_nir(graph(), jnp.ones((2, 2, 8, 8))),
        r"\[B, 8, 8, 2\] .* got shape \(2, 9, 9, 2\)": lambda: run_nir(graph(), jnp.ones((2, 9, 9, 2))),
        r"\[B, 8, 8, 2\] .* got shape \(8, 8, 2\)": lambda: run_nir(graph(), jnp.ones((1, 8, 8, 2))[0]),
        r"writer '', not 'offsetjax'": lambda: run_nir(graph(metadata=False), images),
        r"nodes \['output'\] have no incoming edge": lambda: run_nir(graph("output"), images),
        r"nodes \['conv0_act'\] have no incoming edge": lambda: run_nir(graph("conv0_act"), images),
        r"num_steps must be >= 1": lambda: run_nir(graph(), images, num_steps=0),
        rf"has {edges + 1} edges where to_nir wrote {edges}": lambda: run_nir(graph(doubled=True), images),
        r"graph must be a nir.NIRGraph": lambda: run_nir({"nodes": {}}, images),
        r"image_shape must be \(H, W, C\)": lambda: to_nir(snn, variables, (8, 8)),
        r"images of shape \(1, 2, 8, 8\) do not fit": lambda: to_nir(snn, variables, (2, 8, 8)),
    }
    for message, call in refused.items():
        with pytest.raises(ValueError, match=message):
            call()
    # NIR's IF needs no metadata, but T is not guessed (it ran T = 1 before): a graph without it is told T
    assert run_nir(graph(metadata=False), images, semantics="nir", num_steps=1).shape == (1, 2, 3)
    with pytest.raises(ValueError, match=r"records no num_steps .* num_steps=T"):
        run_nir(graph(metadata=False), images, semantics="nir")


def test_the_literal_semantics_read_every_node_as_from_nir_does():
    """run_nir(semantics="nir") is GraphNetwork with NIR's own IF: it runs nir.Linear nodes and
    flattens only the dimensions a Flatten node names, checked against NumPy step by step."""
    rng = np.random.default_rng(0)
    w1, w2, b2 = rng.normal(size=(4, 9)), rng.normal(size=(3, 8)), rng.normal(size=3)
    theta, r = np.full(8, 0.5), np.full(8, 1.5)
    nodes = {
        "input": nir.Input({"input": np.array([2, 3, 3])}),
        "rows": nir.Flatten({"input": np.array([2, 3, 3])}, start_dim=1, end_dim=2),  # (2, 9): H, W only
        "mix": nir.Linear(w1),  # (2, 4)
        "flat": nir.Flatten({"input": np.array([2, 4])}, start_dim=0, end_dim=1),  # (8,)
        "if": nir.IF(r=r, v_threshold=theta, v_reset=np.full(8, -0.25)),
        "head": nir.Affine(w2, b2),
        "output": nir.Output({"output": np.array([3])}),
    }
    order = list(nodes)
    graph = nir.NIRGraph(nodes, list(zip(order, order[1:])), metadata={}, type_check=False)
    images = rng.normal(size=(5, 3, 3, 2)).astype(np.float32)  # [B, H, W, C]
    num_steps = 4
    got = np.asarray(run_nir(graph, images, semantics="nir", num_steps=num_steps))

    chw = np.transpose(images.astype(np.float64), (0, 3, 1, 2))  # [B, C, H, W]
    current = (chw.reshape(5, 2, 9) @ w1.T).reshape(5, 8)
    v, outputs = np.zeros((5, 8)), []
    for _ in range(num_steps):
        v = v + r * current
        fired = v > theta
        v = np.where(fired, -0.25, v)
        outputs.append(fired @ w2.T + b2)
    expected = np.cumsum(outputs, axis=0) / np.arange(1, num_steps + 1)[:, None, None]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


class _RematNet(nn.Module):
    """A network of one's own with a rematerialised convolution (nn.remat) before its site."""

    activation: Any = oj.models.qcfs_l4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.activation(name="act")(nn.remat(nn.Conv)(4, (3, 3))(x))
        return nn.Dense(3)(x.reshape(*x.shape[:-3], -1))


class _UnflattenNet(nn.Module):
    """A dense layer's output reshaped back into a map: NIR has no node for it."""

    activation: Any = oj.models.qcfs_l4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.activation(name="act")(nn.Dense(32)(x.reshape(*x.shape[:-3], -1)))
        x = x.reshape(*x.shape[:-1], 4, 4, 2)
        return nn.Dense(3)(nn.Conv(2, (3, 3))(x).reshape(*x.shape[:-3], -1))


def _flax_version() -> tuple[int, ...]:
    import flax

    return tuple(int(part) for part in flax.__version__.split(".")[:3])


@pytest.mark.slow
@pytest.mark.skipif(
    _flax_version() < (0, 12, 2),
    reason="flax's nn.remat before 0.12.2 passes jax.checkpoint the `concrete` option JAX 0.10 removed",
)
def test_a_remat_block_exports():
    images = jax.random.uniform(jax.random.key(1), (3, 8, 8, 2))
    net = _RematNet()
    snn = oj.spiking_model(net, num_steps=4)
    snn_variables = oj.convert_variables(snn, net.init(jax.random.key(0), images))
    expected = oj.simulate(snn, snn_variables, images)
    np.testing.assert_allclose(run_nir(to_nir(snn, snn_variables, (8, 8, 2)), images), expected, rtol=1e-6, atol=1e-6)


def test_an_unflatten_is_refused_naming_the_shape():
    images = jax.random.uniform(jax.random.key(1), (3, 8, 8, 2))
    net = _UnflattenNet()
    snn = oj.spiking_model(net, num_steps=4)
    snn_variables = oj.convert_variables(snn, net.init(jax.random.key(0), images))
    with pytest.raises(ValueError, match=r"reshapes neurons \(32,\) to \(4, 4, 2\)"):
        to_nir(snn, snn_variables, (8, 8, 2))


def _avg_pool(x):
    with jax.numpy_dtype_promotion("standard"):  # flax's avg_pool divides by an int (tests run strict)
        return nn.avg_pool(x, (2, 2), (2, 2))


def _head(x):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


class _Shapes(nn.Module):
    """Hand-written networks whose paths NIR holds only with a copied or a diagonal node."""

    case: str

    @nn.compact
    def __call__(self, x):
        relu, conv = jax.nn.relu, lambda: nn.Conv(4, (3, 3))
        norm = lambda: nn.BatchNorm(use_running_average=True)  # noqa: E731
        if self.case == "conv read by a site and a scaled residual":
            c = conv()(x)  # the site's bias current folds into it; the residual reads it unfolded
            return _head(relu(conv()(relu(c)) + 0.5 * c))
        if self.case == "a site fed by a sum of sites":  # its bias current: a diagonal node
            s = relu(relu(conv()(x)) + relu(conv()(x)))
            return _head(s)
        a = relu(conv()(x))
        if self.case == "batch norm after a pool, identity residual":
            return _head(relu(norm()(_avg_pool(conv()(a))) + _avg_pool(a)))
        if self.case == "batch norm before a pool, identity residual":
            return _head(relu(_avg_pool(norm()(conv()(a))) + _avg_pool(a)))
        return _head(relu(_avg_pool(norm()(a)) + _avg_pool(a)))  # batch norm on spikes


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "conv read by a site and a scaled residual",
        "a site fed by a sum of sites",
        "batch norm after a pool, identity residual",
        "batch norm before a pool, identity residual",
        "batch norm on spikes, identity residual",
    ],
)
def test_paths_written_by_hand_export_and_run_as_simulated(case):
    """Each converts (from_jax), simulates, runs step by step to the same logits and exports,
    with and without data_bias currents, the round trip equal to simulate."""
    images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 2))
    net = _Shapes(case)
    variables = net.init(jax.random.key(0), images)
    if "batch_stats" in variables:  # batch norm with an offset
        params = {
            k: {**v, "bias": v["bias"] + 0.2} if k.startswith("BatchNorm") else v
            for k, v in variables["params"].items()
        }
        variables = {"params": params, "batch_stats": jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])}
    model, converted = oj.from_jax(net.apply, variables, images)
    snn = oj.spiking_model(model, num_steps=4)
    for snn_variables in (oj.convert_variables(snn, converted), oj.data_bias(snn, converted, images)):
        logits = oj.simulate(snn, snn_variables, images)
        np.testing.assert_array_equal(oj.run_step_by_step(snn, snn_variables, images).logits, logits)
        graph = to_nir(snn, snn_variables, (8, 8, 2))
        np.testing.assert_allclose(run_nir(graph, images), logits, rtol=1e-5, atol=1e-5)
