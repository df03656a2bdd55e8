"""The schedule is one validated value: every way to make one refuses the same bad fields, the
SNN carries exactly the value it was given, and the deprecated dict reading still works."""

import dataclasses
import math

import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import offsetjax as oj
from offsetjax.schedule import FIELDS

#: Good values of each field (given num_steps = 4 and no SRP/COS conflict).
VALID = st.fixed_dictionaries(
    {},
    optional={
        "presim_steps": st.integers(1, 4),
        "eps": st.floats(0, 1),
        "saturated": st.sampled_from(("fire", "hold")),
        "unroll": st.none() | st.integers(1, 8),
    },
)

#: (field, a value of the field's type outside its domain) with num_steps = 4 for the others.
OUT_OF_DOMAIN = st.one_of(
    st.tuples(st.just("num_steps"), st.integers(max_value=0)),
    st.tuples(st.just("presim_steps"), st.integers(5, 100) | st.integers(max_value=-1)),
    st.tuples(st.just("iterations"), st.integers(max_value=-1)),
    st.tuples(st.just("eps"), st.floats(max_value=-1e-9) | st.sampled_from((math.nan, math.inf, -math.inf))),
    st.tuples(st.just("saturated"), st.text(max_size=6).filter(lambda s: s not in ("fire", "hold"))),
    st.tuples(st.just("srp_steps"), st.integers(max_value=-1)),
    st.tuples(st.just("unroll"), st.integers(max_value=0)),
)
#: (field, a value of another type): the test suite's runtime type checker refuses these at the
#: call; a user's program has none, and meets the schedule's own ValueError.
WRONG_TYPE = st.one_of(
    st.tuples(st.sampled_from(("num_steps", "presim_steps", "iterations", "srp_steps", "unroll")), st.floats()),
    st.tuples(st.sampled_from(("num_steps", "presim_steps", "iterations", "srp_steps", "unroll")), st.booleans()),
    st.tuples(st.just("eps"), st.sampled_from(("0.1", True, None))),
    st.tuples(st.just("saturated"), st.none() | st.integers()),
)


@settings(max_examples=30, deadline=None)
@given(OUT_OF_DOMAIN)
def test_every_bad_field_is_refused_by_name_wherever_a_schedule_is_made(bad):
    """Schedule(...), spiking_model(**fields) and Schedule.replace all refuse a field outside its
    domain, naming it."""
    field, value = bad
    fields = {"num_steps": 4, field: value}
    model = oj.models.small_vgg(2)
    makers = [
        lambda: oj.Schedule(**fields),
        lambda: oj.spiking_model(model, **fields),
        lambda: oj.Schedule(num_steps=4).replace(**{field: value}),
    ]
    for make in makers:
        with pytest.raises(ValueError, match=field):
            make()


@settings(max_examples=60, deadline=None)
@given(OUT_OF_DOMAIN | WRONG_TYPE)
def test_the_schedules_own_validation_names_every_bad_field(bad):
    """The validation itself, without the test suite's type checker in front of it (run on a
    bare instance): a wrongly typed field is a ValueError naming it too."""
    field, value = bad
    schedule = object.__new__(oj.Schedule)
    for name, default in {**oj.Schedule(num_steps=4).as_dict(), field: value}.items():
        object.__setattr__(schedule, name, default)
    with pytest.raises(ValueError, match=field):
        schedule.__post_init__()


@settings(max_examples=15, deadline=None)
@given(VALID)
def test_the_snn_carries_the_schedule_it_was_given(fields):
    if fields.get("presim_steps"):
        fields["iterations"] = 1
    model = oj.models.small_vgg(2)
    schedule = oj.Schedule(num_steps=4, **fields)
    by_fields = oj.spiking_model(model, num_steps=4, **fields)
    by_value = oj.spiking_model(model, schedule=schedule)
    assert oj.schedule(by_fields) == oj.schedule(by_value) == schedule
    assert by_fields == by_value and hash(by_fields) == hash(by_value)  # one compiled program
    assert oj.Schedule.from_options(schedule.as_dict()) == schedule
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.num_steps = 8


def test_steps_a_schedule_occupies():
    cos = oj.Schedule(num_steps=4, presim_steps=2, iterations=3)
    srp = oj.Schedule(num_steps=4, srp_steps=3)
    assert (cos.input_steps, cos.site_lag, cos.latency_steps) == (4, 6, 10)
    assert (srp.input_steps, srp.site_lag, srp.latency_steps) == (7, 0, 7)


def test_unknown_fields_and_mixed_arguments_are_refused():
    model = oj.models.small_vgg(2)
    with pytest.raises(ValueError, match="'presim', not a schedule field"):
        oj.spiking_model(model, num_steps=4, presim=2)
    with pytest.raises(ValueError, match="must give num_steps"):
        oj.spiking_model(model)
    with pytest.raises(ValueError, match="not both"):
        oj.spiking_model(model, schedule=oj.Schedule(num_steps=4), num_steps=4)
    with pytest.raises(ValueError, match="has no field presim"):
        oj.Schedule(num_steps=4).replace(presim=1)
    with pytest.raises(TypeError):
        oj.Schedule(4)  # keyword-only


def test_the_dict_reading_is_deprecated_but_still_answers():
    snn = oj.spiking_model(oj.models.small_vgg(2), num_steps=4, presim_steps=2, iterations=1)
    with pytest.warns(DeprecationWarning, match=r"schedule\(snn\).presim_steps"):
        assert oj.schedule(snn)["presim_steps"] == 2
    assert set(FIELDS) == set(oj.schedule(snn).as_dict())


@pytest.mark.slow  # compiles several programs: kept out of the fast tier's 3 minutes
def test_renamed_arguments_and_positional_options_still_work_for_one_release():
    """The 0.2 API shape: the SNN argument is ``snn`` everywhere and options are keyword-only;
    the old spellings still run, each with a DeprecationWarning naming the new one."""
    import jax.numpy as jnp
    import numpy as np

    model = oj.models.small_vgg(2)
    images = jnp.ones((1, 8, 8, 3))
    variables = model.init(jax.random.key(0), images, train=False)
    snn = oj.spiking_model(model, num_steps=2)
    with pytest.warns(DeprecationWarning, match=r"convert_variables\(snn_model=...\).*write snn="):
        snn_variables = oj.convert_variables(snn_model=snn, ann_variables=variables)
    with pytest.warns(DeprecationWarning, match=r"simulate\(model=...\).*write snn="):
        old = oj.simulate(model=snn, variables=snn_variables, images=images)
    np.testing.assert_array_equal(old, oj.simulate(snn, snn_variables, images))
    logits, statistics = oj.simulate_with_statistics(snn, snn_variables, images)  # still a pair
    np.testing.assert_array_equal(logits, old)
    with pytest.warns(DeprecationWarning, match=r"levels positionally .* write levels=..."):
        assert float(oj.qcfs(jnp.float32(0.6), 1.0, 2)) == float(oj.qcfs(jnp.float32(0.6), 1.0, levels=2))
    with pytest.warns(DeprecationWarning, match="write num_steps=..."):
        oj.offset_spike(jnp.float32(0.5), jnp.float32(1.0), 1.0, 4)
