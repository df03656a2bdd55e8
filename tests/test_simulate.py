"""Network level: conversion, the layer-by-layer simulator and its statistics."""

import chex
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import offsetjax as oj
from offsetjax.models import VGG, ResNet
from offsetjax.site import CALIBRATED_POTENTIAL

IMAGES = jax.random.uniform(jax.random.key(0), (3, 8, 8, 2))


def trained_like(model, images, seed=0, threshold=1.0):
    """Random params with thresholds scaled to the activations (so neurons actually fire)."""
    variables = model.init(jax.random.key(seed), images)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, threshold) if path[-1].key == "threshold" else x, variables["params"]
    )
    return {**variables, "params": params}


def test_single_site_network_reproduces_qcfs_logits_at_t_equals_l():
    """Constant input to the only site, T = L, v(0) = theta/2: the SNN equals the ANN exactly."""
    model = VGG(features=(), hidden=(32,), num_classes=5, activation=oj.models.Activation(oj.QCFS, levels=4))
    variables = trained_like(model, IMAGES, threshold=0.5)
    snn = oj.spiking_model(model, num_steps=4)
    logits = oj.simulate(snn, oj.convert_variables(snn, variables, example_images=IMAGES), IMAGES)
    chex.assert_shape(logits, (4, 3, 5))
    np.testing.assert_allclose(logits[-1], model.apply(variables, IMAGES), rtol=1e-5, atol=1e-5)


def test_simulator_equals_step_by_step_reference():
    """Layer-by-layer (each site scans T) equals stepping the whole network one t at a time."""
    model = VGG(features=(4, "M"), hidden=(6,), num_classes=3)
    variables = trained_like(model, IMAGES, threshold=0.7)
    snn = oj.spiking_model(model, num_steps=5)
    snn_variables = oj.convert_variables(snn, variables, example_images=IMAGES)
    logits = oj.simulate(snn, snn_variables, IMAGES)

    # Reference in NumPy: the network stepped by hand, IF states carried between steps.
    params, stats = jax.tree.map(np.asarray, (variables["params"], variables["batch_stats"]))

    def bn(x, p, s):
        return (x - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]

    conv = jax.lax.conv_general_dilated(
        IMAGES, params["conv0"]["Conv_0"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    first = bn(np.asarray(conv), params["conv0"]["BatchNorm_0"], stats["conv0"]["BatchNorm_0"])
    theta0, theta1 = params["conv0_act"]["threshold"], params["fc0_act"]["threshold"]
    v0, v1 = np.full(first.shape, theta0 / 2), np.full((3, 6), theta1 / 2)
    total = 0.0
    for t in range(5):
        v0 = v0 + first
        s0 = (v0 >= theta0).astype(np.float32)
        v0 = v0 - theta0 * s0
        pooled = (s0 * theta0).reshape(3, 4, 2, 4, 2, 4).mean(axis=(2, 4)).reshape(3, -1)
        v1 = v1 + pooled @ params["fc0"]["kernel"] + params["fc0"]["bias"]
        s1 = (v1 >= theta1).astype(np.float32)
        v1 = v1 - theta1 * s1
        total = total + (s1 * theta1) @ params["classifier"]["kernel"] + params["classifier"]["bias"]
        np.testing.assert_allclose(logits[t], total / (t + 1), rtol=1e-4, atol=1e-5)


def test_calibration_inside_the_network_uses_per_sample_potentials():
    model = oj.models.small_resnet(4)
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    variables = trained_like(model, images, threshold=0.3)
    snn = oj.spiking_model(model, num_steps=4, presim_steps=4, iterations=1)
    snn_variables = oj.convert_variables(snn, variables, example_images=images)

    def calibrated(network):  # one compiled program, not op-by-op dispatch
        return jax.jit(lambda v, x: network.apply(v, x[None], mutable=[CALIBRATED_POTENTIAL])[1])(snn_variables, images)

    sown = calibrated(snn)
    stem = sown[CALIBRATED_POTENTIAL]["stem_act"]["v0"][0]
    chex.assert_shape(stem, (2, 8, 8, 32))
    # The stem's input is constant in time: with T = L no offset spike, so nothing moves but the
    # neurons that fire at every step with a residual >= theta, lifted by rule (ii) ("fire").
    unshifted = np.broadcast_to(snn_variables["initial_potential"]["stem_act"]["v0"], stem.shape)
    lifted = stem != unshifted
    assert 0 < lifted.mean() < 1
    np.testing.assert_allclose(stem[lifted] - unshifted[lifted], (1001 + 1e-3) * 0.3, rtol=1e-6)
    held = oj.spiking_model(model, num_steps=4, presim_steps=4, iterations=1, saturated="hold")
    sown_held = calibrated(held)
    np.testing.assert_array_equal(sown_held[CALIBRATED_POTENTIAL]["stem_act"]["v0"][0], unshifted)
    deeper = sown[CALIBRATED_POTENTIAL]["stage1_block0"]["act_out"]["v0"][0]
    chex.assert_shape(deeper, (2, 4, 4, 64))
    assert not np.allclose(deeper, 0.15) and np.all(np.isfinite(deeper))
    assert not np.allclose(deeper[0], deeper[1])  # per sample


def test_calibration_is_a_pytree_to_pytree_function():
    """Simulating without calibration from the calibrated potentials reproduces the calibrated run."""
    model = oj.models.small_resnet(4)
    images = jax.random.normal(jax.random.key(3), (3, 8, 8, 1))
    variables = trained_like(model, images, threshold=0.3)
    calibrated_model = oj.spiking_model(model, num_steps=6, presim_steps=4, iterations=2)
    snn_variables = oj.convert_variables(calibrated_model, variables, example_images=images)
    potentials = oj.calibrate_network(calibrated_model, snn_variables, images)
    assert jax.tree.structure(potentials) == jax.tree.structure(snn_variables["initial_potential"])
    _, per_site = oj.simulate_with_statistics(calibrated_model, snn_variables, images)
    assert list(per_site)[:3] == ["stem_act", "stage0_block0/act_a", "stage0_block0/act_out"]  # call order
    chex.assert_shape(potentials["stem_act"]["v0"], (3, 8, 8, 32))
    plain_model = oj.spiking_model(model, num_steps=6)
    replayed = oj.simulate(plain_model, {**snn_variables, "initial_potential": potentials}, images)
    np.testing.assert_array_equal(replayed, oj.simulate(calibrated_model, snn_variables, images))


@pytest.mark.slow
def test_calibration_raises_zero_ratio_in_a_network():
    model = oj.models.small_vgg(4)
    images = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    variables = trained_like(model, images, threshold=0.3)
    ratios = []
    for iterations in (0, 1, 2):
        snn = oj.spiking_model(model, num_steps=4, presim_steps=4 if iterations else 0, iterations=iterations)
        _, per_site = oj.simulate_with_statistics(
            snn, oj.convert_variables(snn, variables, example_images=images), images
        )
        assert list(per_site) == [f"conv{i}_act" for i in range(5)] + ["fc0_act"]  # network order
        ratios.append(oj.summarize(per_site)["all"]["zero_ratio"])
    assert ratios[0] < 1.0 and ratios[1] > ratios[0] and ratios[2] >= ratios[1]


def test_convert_variables_builds_half_threshold_potentials():
    model = ResNet((1,), (4,), 3)
    variables = trained_like(model, IMAGES, threshold=2.0)
    snn = oj.spiking_model(model, num_steps=2)
    converted = oj.convert_variables(snn, variables, example_images=IMAGES)
    assert set(converted) == {"params", "batch_stats", "initial_potential"}
    potentials = jax.tree.leaves(converted["initial_potential"])
    assert len(potentials) == 3 and all(np.all(p == 1.0) for p in potentials)
    chex.assert_trees_all_equal(converted["params"], variables["params"])


def test_jit_vmap_over_simulate_and_dtype():
    """simulate under jit(vmap(...)) over single images equals the batched call: the
    calibration is per sample and nothing couples the samples of a batch."""
    model = oj.models.small_vgg(3)
    variables = trained_like(model, IMAGES)
    snn = oj.spiking_model(model, num_steps=3, presim_steps=2, iterations=1)
    snn_variables = oj.convert_variables(snn, variables)
    logits = oj.simulate(snn, snn_variables, IMAGES)
    assert logits.dtype == jnp.float32
    one_image = lambda variables, image: oj.simulate(snn, variables, image[None])[:, 0]  # [T, C]
    per_sample = jax.jit(jax.vmap(one_image, in_axes=(None, 0), out_axes=1))(snn_variables, IMAGES)
    chex.assert_shape(per_sample, logits.shape)
    np.testing.assert_allclose(per_sample, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be >= 1"),
        ({"num_steps": 2, "presim_steps": 4}, "presim_steps must be <= 2"),
        ({"num_steps": 4, "presim_steps": 4, "iterations": -1}, "iterations must be >= 0"),
    ],
)
def test_spiking_model_bad_schedule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        oj.spiking_model(oj.models.small_vgg(2), **kwargs)


def test_convert_rejects_mismatched_and_nonpositive_thresholds():
    model = oj.models.small_vgg(2)
    snn = oj.spiking_model(model, num_steps=2)
    variables = trained_like(model, IMAGES)
    with pytest.raises(ValueError, match="threshold at conv0_act must be finite and > 0"):
        bad = jax.tree_util.tree_map_with_path(lambda p, x: -x if p[-1].key == "threshold" else x, variables["params"])
        oj.convert_variables(snn, {**variables, "params": bad}, example_images=IMAGES)
    with pytest.raises(ValueError, match="missing .*conv0_act/threshold"):
        params = dict(variables["params"])
        params.pop("conv0_act")
        oj.convert_variables(snn, {**variables, "params": params}, example_images=IMAGES)
    with pytest.raises(ValueError, match="misshaped"):
        oj.convert_variables(snn, variables, example_images=jnp.ones((1, 16, 16, 2)))


@pytest.mark.usefixtures("without_type_checker")
def test_simulate_bad_images():
    model = oj.models.small_vgg(2)
    snn = oj.spiking_model(model, num_steps=2)
    variables = oj.convert_variables(snn, trained_like(model, IMAGES), example_images=IMAGES)
    with pytest.raises(ValueError, match="images must be a batch"):
        oj.simulate(snn, variables, jnp.ones(3))
    with pytest.raises(ValueError, match="images must have a floating dtype"):
        oj.simulate(snn, variables, jnp.ones((3, 8, 8, 2), jnp.int32))
    with pytest.raises(ValueError, match="images must be finite"):
        oj.simulate(snn, variables, IMAGES.at[0, 0, 0, 0].set(jnp.nan))


def test_annotations_are_checked_under_test():
    """conftest.py installs jaxtyping's import hook: an annotation that the call violates fails."""
    model = oj.models.small_vgg(2)
    snn = oj.spiking_model(model, num_steps=2)
    variables = oj.convert_variables(snn, trained_like(model, IMAGES))
    with pytest.raises(jaxtyping.TypeCheckError, match="images"):
        oj.simulate(snn, variables, jnp.ones((3, 8, 8, 2), jnp.int32))


def test_images_that_do_not_fit_the_network_are_named():
    model = oj.models.small_vgg(2)
    variables = trained_like(model, IMAGES)
    snn = oj.spiking_model(model, num_steps=2)
    snn_variables = oj.convert_variables(snn, variables, example_images=IMAGES)
    with pytest.raises(ValueError, match=r"do not fit this VGG on images of shape \(3, 8, 8, 3\)"):
        oj.simulate(snn, snn_variables, jnp.ones((3, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"do not fit this VGG on images of shape \(3, 8, 8, 5\)"):
        oj.evaluate.predict(model, variables, jnp.ones((3, 8, 8, 5)))


def test_nan_or_inf_parameters_are_rejected_before_simulation():
    model = oj.models.small_vgg(2)
    variables = trained_like(model, IMAGES)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x.at[0].set(jnp.inf) if p[-1].key == "bias" and p[0].key == "classifier" else x,
        variables["params"],
    )
    snn = oj.spiking_model(model, num_steps=2)
    with pytest.raises(ValueError, match="ann_variables\\['params'\\] at classifier/bias must be finite"):
        oj.convert_variables(snn, {**variables, "params": params}, example_images=IMAGES)


def test_if_site_rejects_wrong_time_axis():
    site = oj.IFActivation(schedule=oj.Schedule(num_steps=4))
    with pytest.raises(ValueError, match=r"needs time-major currents \[4 or 1, batch"):
        site.init(jax.random.key(0), jnp.ones((3, 2, 5)))


@pytest.mark.parametrize("name", sorted(oj.models.ARCHITECTURES))
def test_every_architecture_runs_as_ann_and_snn(name):
    if name in ("vgg16", "resnet18", "resnet34"):
        images = jnp.zeros((1, 32, 32, 3))
    else:
        images = jnp.zeros((1, 8, 8, 3))
    model = oj.models.ARCHITECTURES[name](7)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    out = jax.eval_shape(lambda v: model.apply(v, images), shapes)
    chex.assert_shape(out, (1, 7))
    snn = oj.spiking_model(model, num_steps=2, presim_steps=1, iterations=1)
    snn_shapes = jax.eval_shape(lambda: snn.init(jax.random.key(0), images[None]))
    assert jax.tree.structure(snn_shapes["params"]) == jax.tree.structure(shapes["params"])
    chex.assert_shape(jax.eval_shape(lambda v: snn.apply(v, images[None]), snn_shapes), (2, 1, 7))


@pytest.mark.slow
def test_a_callers_model_context_changes_no_trace():
    """The views of offsetjax.models a trace can take (pools summing, convolutions as one
    operation) are arguments of the one tracer, not state: simulate and the executor, first
    traced inside a caller's pools_as_sums() / xla_convolutions(), compute the network as
    defined (the same logits as traced outside, caches cleared between)."""
    from offsetjax import executor
    from offsetjax.models.layers import pools_as_sums, xla_convolutions

    model = VGG(features=(4, "M", 6), hidden=(), num_classes=3)  # a pool, then a 3x3 map (matmul form on CPU)
    images = jax.random.uniform(jax.random.key(7), (2, 6, 6, 2))
    variables = trained_like(model, images)
    snn = oj.spiking_model(model, num_steps=3)
    snn_variables = oj.convert_variables(snn, variables)
    with pools_as_sums(), xla_convolutions():
        inside = oj.simulate(snn, snn_variables, images)
        inside_steps = oj.run_step_by_step(snn, snn_variables, images).logits
    jax.clear_caches()
    executor._plan.cache_clear()
    outside = oj.simulate(snn, snn_variables, images)
    np.testing.assert_array_equal(inside, outside)
    np.testing.assert_array_equal(inside_steps, oj.run_step_by_step(snn, snn_variables, images).logits)


def test_frames_are_accepted_wherever_images_are():
    """simulate_with_statistics and calibrate_network take frames= as simulate does: a constant
    sequence of frames gives what the image entered once gives (COS calibrates on the frames)."""
    model = VGG(features=(4, "M"), hidden=(), num_classes=3)
    variables = trained_like(model, IMAGES)
    snn = oj.spiking_model(model, num_steps=3, presim_steps=2, iterations=1)
    snn_variables = oj.convert_variables(snn, variables)
    frames = jnp.broadcast_to(IMAGES, (3, *IMAGES.shape))
    once = oj.simulate_with_statistics(snn, snn_variables, IMAGES)
    framed = oj.simulate_with_statistics(snn, snn_variables, frames, frames=True)
    np.testing.assert_allclose(framed.logits, once.logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        framed.logits, oj.simulate(snn, snn_variables, frames, frames=True), rtol=1e-6, atol=1e-6
    )
    assert list(framed.statistics) == list(once.statistics)
    chex.assert_trees_all_close(framed.statistics, once.statistics, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(
        oj.calibrate_network(snn, snn_variables, frames, frames=True),
        oj.calibrate_network(snn, snn_variables, IMAGES),
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match=r"frames must be one batch per step, \[steps, B, \.\.\.\] with steps = 3"):
        oj.simulate_with_statistics(snn, snn_variables, frames[:2], frames=True)
