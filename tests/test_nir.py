"""NIR export: the graph read back from a file runs to the simulator's logits (float64), and
NIR's literal IF semantics give a different network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import offsetjax as oj
from offsetjax.models import VGG, ResNet

nir = pytest.importorskip("nir")
from offsetjax.interop.nir import from_nir, run_nir, to_nir  # noqa: E402

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


@pytest.mark.parametrize("name", ["vgg", pytest.param("resnet", marks=pytest.mark.slow)])
@pytest.mark.parametrize(("presim", "iterations"), [pytest.param(0, 0, marks=pytest.mark.slow), (3, 1)])
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
        assert back == snn
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
    assert run_nir(graph(metadata=False), images, semantics="nir").shape == (1, 2, 3)  # NIR's IF needs no metadata
