"""Nothing lost, nothing silently wrong: every public function that takes a network's variables
checks them as a whole before anything runs, and names the leaf at fault.

The systematic test perturbs one leaf of a small network's variables (data-calibrated, so every
collection is there: params, batch statistics, per-neuron v(0) and bias currents with the T they
were calibrated for) and calls every such function with them; each must refuse with a
ValueError naming that leaf, before compiling anything. The focused tests below it are the
issue's rows 5-13.
"""

import functools
import inspect
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from hypothesis import given
from hypothesis import strategies as st

import offsetjax as oj
from offsetjax import executor
from offsetjax.data_calibration import without_calibration_record
from offsetjax.models import VGG
from offsetjax.splits import Split

try:
    import nir

    from offsetjax.interop.nir import from_nir, run_nir, to_nir
except ImportError:  # the nir extra: its rows are skipped without it
    nir = None

MODEL = VGG(features=(4, "M", 6, "M"), hidden=(7,), num_classes=3)
IMAGES = np.asarray(jax.random.uniform(jax.random.key(0), (5, 8, 8, 2)))
CALIBRATION = np.asarray(jax.random.uniform(jax.random.key(1), (16, 8, 8, 2)))
LABELS = np.zeros(5, np.int32)
SNN = oj.spiking_model(MODEL, num_steps=2)
SIDE = (8, 8, 2)


@functools.cache
def ann() -> dict:
    """The ANN's variables, thresholds low enough that the sites fire."""
    variables = jax.jit(MODEL.init)(jax.random.key(2), IMAGES)
    flat = traverse_util.flatten_dict(variables)
    flat = {k: jnp.full_like(v, 0.3) if k[-1] == "threshold" else v for k, v in flat.items()}
    return traverse_util.unflatten_dict(flat)


@functools.cache
def calibrated(num_steps: int = 2) -> dict:
    """data_bias on top of data_potential: every collection a network's variables can hold."""
    snn = oj.spiking_model(MODEL, num_steps=num_steps)
    potential = oj.data_potential(snn, ann(), CALIBRATION)
    return oj.data_bias(snn, ann(), CALIBRATION, snn_variables=potential)


def frames() -> np.ndarray:
    return np.broadcast_to(IMAGES, (2, *IMAGES.shape))


#: Every public function that takes an SNN's variables, called with them.
SNN_CALLS = {
    "simulate": lambda v: oj.simulate(SNN, v, IMAGES),
    "simulate(frames=True)": lambda v: oj.simulate(SNN, v, frames(), frames=True),
    "simulate_with_statistics": lambda v: oj.simulate_with_statistics(SNN, v, IMAGES),
    "count_operations": lambda v: oj.operations.count_operations(SNN, v, IMAGES),
    "calibrate_network": lambda v: oj.calibrate_network(SNN, v, IMAGES),
    "evaluate_snn": lambda v: oj.evaluate_snn(SNN, v, Split(IMAGES, LABELS), batch_size=5),
    "run_step_by_step": lambda v: oj.run_step_by_step(SNN, v, IMAGES),
    "step_by_step": lambda v: oj.step_by_step(SNN, v, SIDE, batch_size=5),
    "data_potential": lambda v: oj.data_potential(SNN, ann(), CALIBRATION, snn_variables=v),
    "data_bias": lambda v: oj.data_bias(SNN, ann(), CALIBRATION, snn_variables=v),
    **({"to_nir": lambda v: to_nir(SNN, v, SIDE)} if nir is not None else {}),
}
#: Every public function that takes the ANN's variables, called with them.
ANN_CALLS = {
    "predict": lambda v: oj.predict(MODEL, v, IMAGES),
    "ann_accuracy": lambda v: oj.ann_accuracy(MODEL, v, Split(IMAGES, LABELS), batch_size=5),
    "convert_variables": lambda v: oj.convert_variables(SNN, v, example_images=IMAGES),
    "data_potential": lambda v: oj.data_potential(SNN, v, CALIBRATION),
    "data_bias": lambda v: oj.data_bias(SNN, v, CALIBRATION),
}
VARIABLE_ARGUMENTS = ("variables", "ann_variables", "snn_variables")


def test_the_tables_hold_every_public_function_that_takes_variables():
    """A new public function taking variables must join the systematic test."""
    public = {name: getattr(oj, name) for name in oj.__all__}
    public |= {"count_operations": oj.operations.count_operations}
    if nir is not None:
        public["to_nir"] = to_nir
    takers = {
        name
        for name, function in public.items()
        if inspect.isfunction(function) and set(inspect.signature(function).parameters) & set(VARIABLE_ARGUMENTS)
    }
    covered = {name.partition("(")[0] for name in (*SNN_CALLS, *ANN_CALLS)}
    assert takers == covered


def perturbed(variables: dict, path: tuple, kind: str, index: int = 0, value: float = np.nan) -> tuple[dict, tuple]:
    """``variables`` with the leaf at ``path`` perturbed; returns them and the path an error must name.

    ``kind``: ``"value"`` (NaN or inf at ``index``; an integer record becomes a float), ``"shape"``
    (a trailing axis of 3), ``"dtype"`` (floats to int32, an integer record to float32), or
    ``"other_t"`` (the leaf's site entry replaced by the same site's from a calibration for T = 3).
    """
    flat = dict(traverse_util.flatten_dict(variables))
    leaf = np.asarray(flat[path])
    floating = np.issubdtype(leaf.dtype, np.floating)
    if kind == "other_t":
        site = path[:-1]
        for key in [key for key in flat if key[: len(site)] == site]:
            del flat[key]
        flat.update(
            {key: v for key, v in traverse_util.flatten_dict(calibrated(3)).items() if key[: len(site)] == site}
        )
        return traverse_util.unflatten_dict(flat), site
    if kind == "value":
        if floating:
            leaf = leaf.copy()
            leaf.flat[index % leaf.size] = value
        else:
            leaf = np.float32(value)
    elif kind == "shape":
        leaf = np.broadcast_to(leaf[..., None], (*leaf.shape, 3)).copy()
    elif kind == "dtype":
        leaf = leaf.astype(np.int32 if floating else np.float32)
    flat[path] = leaf
    return traverse_util.unflatten_dict(flat), path


def names(message: str, path: tuple) -> bool:
    """Whether ``message`` names the leaf or entry at ``path`` (``['a']['b']`` or ``a/b`` after the collection)."""
    return "".join(f"[{key!r}]" for key in path) in message or "/".join(path[1:]) in message


def assert_refused(call, variables, path, what: str) -> None:
    with pytest.raises(ValueError) as caught:
        call(variables)
    assert names(str(caught.value), path), f"{what}: {caught.value}"


def kinds(path: tuple) -> list[str]:
    """The perturbations of a leaf: a site's calibrated entry can also come from another T."""
    return ["value", "shape", "dtype"] + (["other_t"] if path[0] in ("initial_potential", "bias_correction") else [])


@functools.cache
def leaves() -> list[tuple]:
    return sorted(traverse_util.flatten_dict(calibrated()))


def test_the_base_variables_hold_every_collection_and_run():
    variables = calibrated()
    assert set(variables) == {"params", "batch_stats", "initial_potential", "bias_correction"}
    assert variables["initial_potential"]["conv0_act"]["num_steps"] == 2
    assert variables["bias_correction"]["fc0_act"]["num_steps"] == 2
    assert oj.simulate(SNN, variables, IMAGES).shape == (2, 5, 3)


@given(st.data())
def test_every_function_refuses_any_perturbed_leaf_naming_it(data):
    """Row 6 and its neighbours, systematically: for a leaf and a perturbation drawn, every public
    function that takes variables raises a ValueError naming that leaf, before compiling."""
    path = data.draw(st.sampled_from(leaves()), label="leaf")
    kind = data.draw(st.sampled_from(kinds(path)), label="perturbation")
    index = data.draw(st.integers(0, 1000), label="index")
    value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="value")
    variables, named = perturbed(calibrated(), path, kind, index, value)
    for name, call in SNN_CALLS.items():
        assert_refused(call, variables, named, f"{name} with {kind} at {path}")
    if path[0] in ("params", "batch_stats"):  # the ANN's variables hold the same leaves
        ann_variables, named = perturbed(ann(), path, kind, index, value)
        for name, call in ANN_CALLS.items():
            assert_refused(call, ann_variables, named, f"{name} with {kind} at {path}")


def test_simulate_refuses_every_perturbation_of_every_leaf():
    """The same, exhaustively over leaves and perturbations, for the check every SNN function shares."""
    count = 0
    for path in leaves():
        for kind in kinds(path):
            variables, named = perturbed(calibrated(), path, kind)
            assert_refused(SNN_CALLS["simulate"], variables, named, f"{kind} at {path}")
            count += 1
    assert count == sum(len(kinds(path)) for path in leaves()) > 90


# -- row 5: a per-sample v(0) serves its batch only ---------------------------------------------


def test_a_per_sample_potential_for_another_batch_is_refused_everywhere():
    cos = oj.spiking_model(MODEL, num_steps=2, presim_steps=1, iterations=1)
    converted = oj.convert_variables(SNN, ann())
    one = oj.calibrate_network(cos, converted, IMAGES[:1])  # sample 0's v(0), [1, ...]
    merged = {**converted, "initial_potential": one}
    for name, call in SNN_CALLS.items():
        if name in ("evaluate_snn", "data_potential", "data_bias", "to_nir"):
            message = r"is per sample, shape \(1, 8, 8, 4\) .* but "
        else:
            message = r"\['conv0_act'\]\['v0'\] is per sample, for a batch of 1 images .* the images hold 5"
        with pytest.raises(ValueError, match=message):
            call(merged)
    with pytest.raises(ValueError, match=r"evaluate_snn runs one v\(0\) over every batch"):  # even of one image
        oj.evaluate_snn(SNN, merged, Split(IMAGES[:1], LABELS[:1]), batch_size=1)
    # for its own batch, the per-sample v(0) replays the calibrated run
    np.testing.assert_array_equal(oj.simulate(SNN, merged, IMAGES[:1]), oj.simulate(cos, converted, IMAGES[:1]))
    with pytest.raises(ValueError, match=r"has shape \(8, 8, 3\): a site's v\(0\) is one value per site"):
        oj.simulate(SNN, {**converted, "initial_potential": {**one, "conv0_act": {"v0": np.zeros((8, 8, 3))}}}, IMAGES)


# -- row 6: NaN anywhere, named ---------------------------------------------------------------


def test_nan_in_a_weight_batch_statistic_or_bias_current_is_named():
    cases = {
        ("params", "conv0", "Conv_0", "kernel"): "variables['params']['conv0']['Conv_0']['kernel'] holds NaN",
        ("batch_stats", "conv1", "BatchNorm_0", "var"): "variables['batch_stats']['conv1']['BatchNorm_0']['var'] holds",
        ("bias_correction", "fc0_act", "b"): "variables['bias_correction']['fc0_act']['b'] holds NaN",
    }
    for path, message in cases.items():
        variables, _ = perturbed(calibrated(), path, "value", index=3)
        with pytest.raises(ValueError) as caught:
            oj.simulate(SNN, variables, IMAGES)
        assert message in str(caught.value)


def test_program_step_refuses_nan_frames_and_checks_only_shapes_under_jit():
    program = oj.step_by_step(SNN, calibrated(), SIDE, batch_size=5)
    frame = IMAGES.copy()
    frame[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frame must be finite, found 1 NaN or Inf"):
        program.step(program.init(), frame)
    with pytest.raises(ValueError, match="frame must have a floating dtype, got int32"):
        program.step(program.init(), IMAGES.astype(np.int32))
    state, out = jax.jit(program.step)(program.init(), IMAGES)  # traced: shapes checked, values not
    assert out.output.shape == (5, 3)


@pytest.mark.skipif(nir is None, reason="needs the nir extra")
def test_a_nan_weight_in_a_nir_file_is_named(tmp_path):
    graph = to_nir(SNN, calibrated(), SIDE)
    name = next(n for n, node in graph.nodes.items() if isinstance(node, nir.Affine))
    graph.nodes[name].weight[0, 0] = np.nan
    nir.write(tmp_path / "net.nir", graph)
    read = nir.read(tmp_path / "net.nir")
    message = rf"graph node {name} \(Affine\) holds NaN \(1 of \d+ values\) in weight"
    for call in (
        lambda: from_nir(read),
        lambda: run_nir(read, IMAGES),
        lambda: run_nir(read, IMAGES, semantics="nir"),
    ):
        with pytest.raises(ValueError, match=message):
            call()


# -- row 7: a calibration carries its T through any merge --------------------------------------


def test_a_calibration_merged_into_converted_variables_keeps_its_t():
    made_for_2 = oj.data_potential(SNN, ann(), CALIBRATION)
    assert "calibrated_for" not in made_for_2  # nothing a merge could drop
    snn4 = oj.spiking_model(MODEL, num_steps=4)
    merged = {**oj.convert_variables(snn4, ann()), "initial_potential": made_for_2["initial_potential"]}
    message = r"variables\['initial_potential'\]\['conv0_act'\] was calibrated for num_steps=2 .* runs num_steps=4"
    for call in (
        lambda: oj.simulate(snn4, merged, IMAGES),
        lambda: oj.evaluate_snn(snn4, merged, Split(IMAGES, LABELS), batch_size=5),
        lambda: oj.step_by_step(snn4, merged, SIDE, batch_size=5),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    biased = oj.data_bias(SNN, ann(), CALIBRATION)
    merged = {**oj.convert_variables(snn4, ann()), "bias_correction": biased["bias_correction"]}
    with pytest.raises(ValueError, match=r"\['bias_correction'\]\['conv0_act'\] was calibrated for num_steps=2"):
        oj.simulate(snn4, merged, IMAGES)
    # variables of the old format (a separate calibrated_for collection) are still read
    old = {**without_calibration_record(made_for_2), "calibrated_for": {"num_steps": np.int32(2)}}
    with pytest.raises(ValueError, match=r"variables were calibrated for num_steps=2 .* runs num_steps=4"):
        oj.simulate(snn4, old, IMAGES)
    np.testing.assert_array_equal(oj.simulate(SNN, old, IMAGES), oj.simulate(SNN, made_for_2, IMAGES))
    # and running a calibration at another T is an explicit choice
    assert oj.simulate(snn4, without_calibration_record(made_for_2), IMAGES).shape == (4, 5, 3)


def test_recalibrating_keeps_values_and_records_t_beside_each_one():
    made = calibrated()
    for collection, key in (("initial_potential", "v0"), ("bias_correction", "b")):
        for site, entry in made[collection].items():
            assert set(entry) == {key, "num_steps"} and entry["num_steps"].dtype == np.int32, site
    # the records are beside the values, never in them: the values are those calibrated
    potential = oj.data_potential(SNN, ann(), CALIBRATION)
    stripped = without_calibration_record(made)
    assert "num_steps" not in stripped["initial_potential"]["conv0_act"]
    np.testing.assert_array_equal(
        stripped["initial_potential"]["fc0_act"]["v0"], potential["initial_potential"]["fc0_act"]["v0"]
    )


# -- row 8: the dtype policy --------------------------------------------------------------------


def test_half_precision_images_run_in_the_networks_dtype():
    variables = calibrated()
    for half in (jnp.float16, jnp.bfloat16):
        images = jnp.asarray(IMAGES, half)
        logits = oj.simulate(SNN, variables, images)
        assert logits.dtype == jnp.float32
        np.testing.assert_array_equal(logits, oj.simulate(SNN, variables, images.astype(jnp.float32)))
        assert oj.predict(MODEL, ann(), images).dtype == jnp.float32
    program = oj.step_by_step(SNN, variables, SIDE, batch_size=5, dtype=jnp.bfloat16)
    assert program.plan.frame_shape == (5, *SIDE)
    with pytest.raises(ValueError, match=r"dtype must be a floating dtype \(the frames'\), got int32: .* truncate"):
        oj.step_by_step(SNN, variables, SIDE, batch_size=5, dtype=jnp.int32)


@pytest.mark.usefixtures("without_type_checker")
def test_integer_images_are_refused_with_the_cast_to_make():
    for call in (
        lambda x: oj.simulate(SNN, calibrated(), x),
        lambda x: oj.run_step_by_step(SNN, calibrated(), x),
        lambda x: oj.data_potential(SNN, ann(), x),
        lambda x: oj.predict(MODEL, ann(), x),
    ):
        with pytest.raises(ValueError, match=r"images must have a floating dtype, got uint8: cast and normalise"):
            call((IMAGES * 255).astype(np.uint8))


# -- row 11: run_step_by_step under jit ----------------------------------------------------------


def test_run_step_by_step_jits_with_the_network_static():
    variables = calibrated()
    eager = oj.run_step_by_step(SNN, variables, IMAGES)
    jitted = jax.jit(oj.run_step_by_step, static_argnums=0, static_argnames=("frames", "delay"))
    run = jitted(SNN, variables, IMAGES)
    for path, spikes in eager.site_outputs.items():  # the same spikes; the logits up to float rounding
        np.testing.assert_array_equal(run.site_outputs[path], spikes, err_msg=path)
    np.testing.assert_allclose(run.logits, eager.logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(run.output_ticks, eager.output_ticks)
    np.testing.assert_allclose(eager.logits, oj.simulate(SNN, variables, IMAGES), rtol=1e-6, atol=1e-7)


@pytest.mark.usefixtures("without_type_checker")
def test_run_step_by_step_jitted_without_static_arguments_says_what_to_jit():
    with pytest.raises(TypeError, match=r"snn must be a static Python value .* static_argnums=0"):
        jax.jit(oj.run_step_by_step)(SNN, calibrated(), IMAGES)
    with pytest.raises(TypeError, match=r"delay must be a static Python value"):
        jax.jit(oj.run_step_by_step, static_argnums=0)(SNN, calibrated(), IMAGES, delay=1)


# -- row 12: a run too large for the memory fails at once ------------------------------------------


def test_a_run_larger_than_the_memory_left_fails_before_running(monkeypatch):
    assert (executor.available_memory(jax.devices()[0]) or 1) > 0
    long = oj.spiking_model(MODEL, num_steps=100_000)
    variables = oj.convert_variables(long, ann())
    monkeypatch.setattr(executor, "available_memory", lambda device: 100 * 2**20)  # 100 MiB left
    with pytest.raises(MemoryError, match=r"100000 ticks .* batch of 4: about 1\.\d+ GiB, more than the 0\.10 GiB"):
        oj.run_step_by_step(long, variables, IMAGES[:4])
    program = oj.step_by_step(long, variables, SIDE, batch_size=4)
    assert 2 * executor.record_bytes(program.plan) > 2**30  # what the message says
    assert oj.run_step_by_step(SNN, calibrated(), IMAGES).logits.shape == (2, 5, 3)  # a small run still runs


# -- row 13: one clear error -------------------------------------------------------------------------


@pytest.mark.usefixtures("without_type_checker")
def test_the_executors_arguments_are_named():
    variables = calibrated()
    program = oj.step_by_step(SNN, variables, SIDE, batch_size=5)
    for frame in (IMAGES[:4], np.zeros((5, 9, 9, 2), np.float32)):
        with pytest.raises(
            ValueError, match=rf"frame must have shape \(5, 8, 8, 2\).* got {re.escape(str(frame.shape))}"
        ):
            program.step(program.init(), frame)
    for size in (0, 2.5):
        with pytest.raises(ValueError, match=rf"batch_size must be .*{size}"):
            oj.step_by_step(SNN, variables, SIDE, batch_size=size)
    with pytest.raises(ValueError, match=r"image_shape \(1, 8, 8, 2\) gives .* one image's shape, \(H, W, C\)"):
        oj.step_by_step(SNN, variables, (1, *SIDE), batch_size=1)


@pytest.mark.skipif(nir is None, reason="needs the nir extra")
def test_foreign_nir_graphs_are_refused_naming_what_is_missing():
    w1, w2 = np.full((5, 4), 0.3), np.full((3, 5), 0.2)
    mlp = nir.NIRGraph(
        {
            "input": nir.Input({"input": np.array([4])}),
            "fc1": nir.Affine(w1, np.zeros(5)),
            "if1": nir.IF(np.ones(5), np.ones(5), np.zeros(5)),
            "fc2": nir.Affine(w2, np.zeros(3)),
            "output": nir.Output({"output": np.array([3])}),
        },
        [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "output")],
    )
    vectors = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"records no num_steps .* num_steps=T"):
        run_nir(mlp, vectors, semantics="nir")
    with pytest.raises(ValueError, match=r"writer '', not 'offsetjax'"):
        from_nir(mlp)
    with pytest.raises(ValueError, match=r"its v_init metadata, which \['if1'\] lack"):
        run_nir(mlp, vectors, semantics="nir", num_steps=3, from_v_init=True)
    assert run_nir(mlp, vectors, semantics="nir", num_steps=3).shape == (3, 2, 3)  # a vector input runs
    mlp.metadata = {"writer": "offsetjax"}
    mlp.nodes["if1"].metadata = {"v_init": np.zeros(5)}
    with pytest.raises(ValueError, match=r"graph metadata lacks num_steps, presim_steps"):
        from_nir(mlp)
    conv = nir.NIRGraph(
        {
            "input": nir.Input({"input": np.array([1, 4, 4])}),
            "conv": nir.Conv2d((4, 4), np.ones((2, 1, 3, 3)), 1, "same", 1, 1, np.zeros(2)),
            "output": nir.Output({"output": np.array([2, 4, 4])}),
        },
        [("input", "conv"), ("conv", "output")],
        metadata={"num_steps": 2},
    )
    with pytest.raises(ValueError, match=r"graph node conv is a Conv2d padded 'same': .* integer padding"):
        run_nir(conv, np.ones((1, 4, 4, 1), np.float32), semantics="nir")


class Unnamed(nn.Module):
    """A network of one's own whose activation site has no name."""

    activation: object = oj.models.Activation(oj.QCFS, levels=4)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.activation()(nn.Dense(5)(x.reshape((*x.shape[:-3], -1))))
        return nn.Dense(3)(x)


def test_an_unnamed_activation_site_is_a_clear_error():
    model = Unnamed()
    snn = oj.spiking_model(model, num_steps=2)
    variables = jax.jit(model.init)(jax.random.key(0), IMAGES)
    with pytest.raises(ValueError, match=r"activation sites without a name \(QCFS_0\).*name='act1'"):
        oj.convert_variables(snn, variables)
    params = {**variables["params"], "IFActivation_0": variables["params"]["QCFS_0"]}
    by_hand = {"params": params, "initial_potential": {"IFActivation_0": {"v0": jnp.float32(0.15)}}}
    with pytest.raises(ValueError, match=r"sites without a name \(IFActivation_0\)"):
        oj.simulate(snn, by_hand, IMAGES)


def test_traced_variables_are_checked_by_name_shape_and_dtype_not_value():
    """Under a caller's jit the values are tracers: names, shapes and dtypes are still checked,
    values cannot be read (the docstrings say so): a NaN passes there, as it must."""
    run = jax.jit(lambda v: oj.simulate(SNN, v, IMAGES))
    for kind, message in (("shape", r"misshaped fc0/kernel"), ("dtype", r"\['fc0'\]\['kernel'\] must have a floating")):
        variables, _ = perturbed(calibrated(), ("params", "fc0", "kernel"), kind)
        with pytest.raises(ValueError, match=message):
            run(variables)
    variables, _ = perturbed(calibrated(), ("params", "fc0", "kernel"), "value")
    assert run(variables).shape == (2, 5, 3)
