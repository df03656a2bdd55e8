"""Bad inputs and variables get one clear error naming what was expected, before compiling.

These assert what a user without a type checker sees, so jaxtyping's checks are off here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import offsetjax as oj
from offsetjax.training import data

pytestmark = pytest.mark.usefixtures("without_type_checker")

IMAGES = jax.random.uniform(jax.random.key(0), (3, 8, 8, 2))
MODEL = oj.models.small_vgg(2)
ANN_VARIABLES = jax.jit(MODEL.init)(jax.random.key(1), IMAGES)  # one program, not ~100 eager ones
SNN = oj.spiking_model(MODEL, num_steps=2)
SNN_VARIABLES = oj.convert_variables(SNN, ANN_VARIABLES)


def with_site_value(collection: str, site: str, value: float) -> dict:
    flat = traverse_util.flatten_dict(SNN_VARIABLES[collection])
    key = next(k for k in flat if k[0] == site)
    return {**SNN_VARIABLES, collection: traverse_util.unflatten_dict({**flat, key: jnp.asarray(value)})}


def test_one_rank_too_many_is_refused():
    with pytest.raises(ValueError, match=r"images must be one batch \[B, H, W, C\]"):
        oj.simulate(SNN, SNN_VARIABLES, IMAGES[None])
    with pytest.raises(ValueError, match=r"one batch \[B, H, W, C\]"):
        oj.calibrate_network(SNN, SNN_VARIABLES, IMAGES[None])
    with pytest.raises(ValueError, match=r"not \[B, classes\]"):
        oj.predict(MODEL, ANN_VARIABLES, IMAGES[None])


def test_the_ann_model_is_refused_by_simulate_and_conversion():
    with pytest.raises(ValueError, match=r"model has no IFActivation site .* offsetjax.spiking_model"):
        oj.simulate(MODEL, SNN_VARIABLES, IMAGES)
    with pytest.raises(ValueError, match=r"snn has Activation\(QCFS.* not IFActivation"):
        oj.convert_variables(MODEL, ANN_VARIABLES)


def test_ann_variables_are_refused_with_a_hint_to_convert():
    with pytest.raises(ValueError, match=r"no 'initial_potential' collection .* offsetjax.convert_variables"):
        oj.simulate(SNN, ANN_VARIABLES, IMAGES)
    with pytest.raises(ValueError, match=r"no 'initial_potential'"):
        oj.calibrate_network(SNN, ANN_VARIABLES, IMAGES)


@pytest.mark.parametrize(
    ("collection", "value", "message"),
    [
        ("params", jnp.nan, "threshold of site conv1_act must be finite and > 0"),
        ("params", 0.0, "threshold of site conv1_act must be finite and > 0"),
        ("params", -1.0, "threshold of site conv1_act must be finite and > 0"),
        ("initial_potential", jnp.nan, "initial potential v0 of site conv1_act must be finite"),
    ],
)
def test_invalid_snn_variables_name_the_site(collection, value, message):
    variables = with_site_value(collection, "conv1_act", value)
    with pytest.raises(ValueError, match=message):
        oj.simulate(SNN, variables, IMAGES)
    with pytest.raises(ValueError, match=message):
        oj.simulate_with_statistics(SNN, variables, IMAGES)


def test_wrong_spatial_size_names_the_images_and_the_layer_that_does_not_fit():
    with pytest.raises(ValueError, match=r"on images of shape \(3, 16, 16, 2\): misshaped fc0/kernel \(128, 256\)"):
        oj.simulate(SNN, SNN_VARIABLES, jnp.ones((3, 16, 16, 2)))


def test_empty_batch_and_empty_split_are_refused():
    with pytest.raises(ValueError, match=r"B >= 1, got shape \(0, 8, 8, 2\)"):
        oj.simulate(SNN, SNN_VARIABLES, IMAGES[:0])
    with pytest.raises(ValueError, match=r"B >= 1"):
        oj.predict(MODEL, ANN_VARIABLES, IMAGES[:0])
    empty = data.Split(np.zeros((0, 8, 8, 2), np.float32), np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="split has no examples"):
        oj.evaluate_snn(SNN, SNN_VARIABLES, empty, batch_size=4)
    with pytest.raises(ValueError, match="split has no examples"):
        oj.ann_accuracy(MODEL, ANN_VARIABLES, empty, batch_size=4)


def test_predict_refuses_raw_or_nan_images():
    with pytest.raises(ValueError, match="images must have a floating dtype, got uint8"):
        oj.predict(MODEL, ANN_VARIABLES, np.zeros((3, 8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="images must be finite"):
        oj.predict(MODEL, ANN_VARIABLES, IMAGES.at[0, 0, 0, 0].set(jnp.nan))


def test_checks_do_not_break_a_callers_jit():
    """Inside a user's jit the values are tracers: the structural checks still run, the value
    checks are skipped, and the result is the same."""
    jitted = jax.jit(lambda variables, images: oj.simulate(SNN, variables, images))
    np.testing.assert_allclose(jitted(SNN_VARIABLES, IMAGES), oj.simulate(SNN, SNN_VARIABLES, IMAGES), atol=1e-6)
    closed_over = jax.jit(lambda images: oj.simulate(SNN, SNN_VARIABLES, images))  # concrete variables
    np.testing.assert_allclose(closed_over(IMAGES), oj.simulate(SNN, SNN_VARIABLES, IMAGES), atol=1e-6)


def test_a_split_with_more_images_than_labels_or_fewer_is_refused():
    images = np.asarray(IMAGES)
    for labels in (np.zeros(2, np.int32), np.zeros(5, np.int32)):
        split = data.Split(images, labels)
        with pytest.raises(ValueError, match=f"split holds 3 images and {len(labels)} labels"):
            oj.evaluate.ann_accuracy(MODEL, ANN_VARIABLES, split, batch_size=2)
        with pytest.raises(ValueError, match=f"split holds 3 images and {len(labels)} labels"):
            oj.evaluate_snn(SNN, SNN_VARIABLES, split, batch_size=2)


def test_pre_simulation_without_iterations_is_refused_not_run_uncalibrated():
    with pytest.raises(ValueError, match="presim_steps=2 with iterations=0 calibrates nothing"):
        oj.spiking_model(MODEL, num_steps=2, presim_steps=2, iterations=0)
    with pytest.raises(ValueError, match="snn must be the spiking network from offsetjax.spiking_model"):
        oj.evaluate_snn(MODEL, ANN_VARIABLES, data.Split(np.asarray(IMAGES), np.zeros(3, np.int32)), batch_size=3)
    with pytest.raises(ValueError, match="these look like ANN variables; convert them"):
        oj.evaluate_snn(SNN, ANN_VARIABLES, data.Split(np.asarray(IMAGES), np.zeros(3, np.int32)), batch_size=3)


@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (8, 8, 2)], ids=["channels first", "one unbatched image"])
def test_images_in_the_wrong_layout_are_named_by_every_entry_point(shape):
    images = np.zeros(shape, np.float32)
    calls = {
        "simulate": lambda: oj.simulate(SNN, SNN_VARIABLES, images),
        "calibrate_network": lambda: oj.calibrate_network(
            oj.spiking_model(MODEL, num_steps=2, presim_steps=1, iterations=1), SNN_VARIABLES, images
        ),
        "count_operations": lambda: oj.count_operations(SNN, SNN_VARIABLES, images),
        "data_potential": lambda: oj.data_potential(SNN, ANN_VARIABLES, images),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"images of shape .* \[B, H, W, C\]") as caught:
            call()
        assert "Traceback" not in str(caught.value), name


def test_variables_of_another_network_are_refused_naming_the_leaves():
    """Row 11: another architecture's or another class count's variables, before any compile."""
    ones = lambda model: jax.tree.map(jnp.ones_like, jax.eval_shape(model.init, jax.random.key(1), IMAGES))  # noqa: E731
    resnet_variables, wider = ones(oj.models.small_resnet(2)), ones(oj.models.small_vgg(7))
    for variables, leaf in ((resnet_variables, r"missing conv0"), (wider, r"misshaped classifier/bias \(7,\)")):
        for name, call in {
            "convert_variables": lambda v=variables: oj.convert_variables(SNN, v, example_images=IMAGES),
            "simulate": lambda v=variables: oj.simulate(SNN, oj.convert_variables(SNN, v), IMAGES),
            "predict": lambda v=variables: oj.predict(MODEL, v, IMAGES),
            "data_potential": lambda v=variables: oj.data_potential(SNN, v, IMAGES),
        }.items():
            with pytest.raises(ValueError, match=rf"do not fit this VGG on images of shape .*{leaf}") as caught:
                call()
            assert "\n" not in str(caught.value), name
    no_stats = {"params": ANN_VARIABLES["params"]}
    with pytest.raises(ValueError, match=r"no 'batch_stats' collection"):
        oj.predict(MODEL, no_stats, IMAGES)
