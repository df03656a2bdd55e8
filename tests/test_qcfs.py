import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import offsetjax as oj
from tests import reference


@given(z=st.floats(-20, 40, width=32), theta=st.sampled_from([0.5, 1.0, 3.0, 8.0]), levels=st.integers(1, 16))
def test_qcfs_matches_reference(z, theta, levels):
    np.testing.assert_allclose(
        oj.qcfs(jnp.float32(z), theta, levels=levels), reference.qcfs(z, theta, levels), atol=1e-5
    )


def test_qcfs_levels_and_range():
    z = jnp.linspace(-2.0, 10.0, 121)
    out = oj.qcfs(z, 8.0, levels=4)
    chex.assert_shape(out, z.shape)
    assert set(np.unique(np.asarray(out)).tolist()) <= {0.0, 2.0, 4.0, 6.0, 8.0}


def test_qcfs_straight_through_gradient():
    # Inside (0, theta) the floor passes the gradient through: d a / d z = 1.
    grad_z = jax.grad(lambda z: oj.qcfs(z, 2.0, levels=4).sum())(jnp.array([0.3, 1.1, 1.6]))
    np.testing.assert_allclose(grad_z, 1.0)
    # Clipped regions have zero gradient in z.
    np.testing.assert_allclose(jax.grad(lambda z: oj.qcfs(z, 2.0, levels=4))(jnp.float32(5.0)), 0.0)
    # The threshold is trainable: above the clip, a = theta.
    np.testing.assert_allclose(jax.grad(lambda t: oj.qcfs(jnp.float32(5.0), t, levels=4))(jnp.float32(2.0)), 1.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_qcfs_keeps_dtype(dtype):
    assert oj.qcfs(jnp.ones((3,), dtype), 1.0, levels=2).dtype == dtype


def test_qcfs_module_has_trainable_threshold():
    module = oj.QCFS(levels=4)
    variables = module.init(jax.random.key(0), jnp.ones((2, 3)))
    assert variables["params"]["threshold"].shape == ()
    np.testing.assert_allclose(variables["params"]["threshold"], 8.0)
    np.testing.assert_allclose(module.apply(variables, jnp.full((2, 3), 3.0)), 4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": 0}, "levels must be >= 1"),
        ({"levels": 2.5}, "levels must be an integer"),
        ({"theta": 0.0}, "theta must be finite and > 0"),
        ({"theta": -1.0}, "theta must be finite and > 0"),
    ],
)
@pytest.mark.usefixtures("without_type_checker")
def test_qcfs_bad_input(kwargs, message):
    args = {"z": jnp.ones(3), "theta": 1.0, "levels": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        oj.qcfs(**args)


def test_qcfs_module_in_a_network_is_jittable():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return oj.QCFS(levels=2)(nn.Dense(4)(x))

    net = Net()
    variables = net.init(jax.random.key(1), jnp.ones((5, 3)))
    chex.assert_trees_all_close(jax.jit(net.apply)(variables, jnp.ones((5, 3))), net.apply(variables, jnp.ones((5, 3))))
