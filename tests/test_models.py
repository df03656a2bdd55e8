import flax.linen as nn
import jax
import numpy as np
import pytest

from offsetjax.models.layers import Conv


@pytest.mark.parametrize(
    ("shape", "kernel", "strides"),
    [
        ((2, 2, 2, 8), 3, 1),
        ((2, 1, 1, 8), 3, 1),
        ((3, 2, 2, 2, 4), 3, 1),
        ((2, 2, 2, 8), 1, 1),
        ((2, 8, 8, 4), 3, 1),
        ((2, 8, 8, 4), 3, 2),
        ((2, 8, 8, 4), 1, 2),
        ((2, 2, 2, 4), 3, 2),
    ],
)
def test_conv_matches_flax_conv_on_both_paths(shape, kernel, strides):
    x = jax.random.normal(jax.random.key(0), shape)
    ours = Conv(6, kernel, strides)
    variables = ours.init(jax.random.key(1), x)
    pad = (kernel - 1) // 2
    reference = nn.Conv(6, (kernel, kernel), strides=strides, padding=[(pad, pad)] * 2, use_bias=False)
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(variables) == jax.tree.structure(reference.init(jax.random.key(1), x))
