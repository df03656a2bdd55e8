"""Hypothesis strategies for input currents.

Values lie on a dyadic grid (multiples of theta/16 with theta a power of two), so every sum
the simulator forms is exact in float32 and the theorems can be asserted with ``==``.
Shapes come from a short fixed list, so generated examples reuse compiled code.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

NUM_NEURONS = 8
STEPS = (1, 2, 3, 4, 8)
THETAS = (0.5, 1.0, 2.0, 4.0)
GRID = 16

#: The dtypes the theorem properties run in. The grid values are exact in all three (at most
#: 7 significant bits); bfloat16 currents are simulated in float32 by the library.
DTYPES = [
    pytest.param(jnp.float32, id="float32"),
    pytest.param(jnp.bfloat16, id="bfloat16"),
    pytest.param(jnp.float64, id="float64"),
]


def precision(dtype):
    """A context in which arrays of ``dtype`` exist: 64-bit mode for float64."""
    return jax.enable_x64(True) if dtype == jnp.float64 else contextlib.nullcontext()


def _grid(draw, low: int, high: int, steps: int) -> np.ndarray:
    values = draw(st.lists(st.integers(low, high), min_size=steps * NUM_NEURONS, max_size=steps * NUM_NEURONS))
    return np.asarray(values, np.float32).reshape(steps, NUM_NEURONS) / GRID


@st.composite
def currents_and_theta(draw, steps=STEPS):
    """``(currents [T, 8] float32, theta)``: random, constant, bursty, tie, saturated or silent."""
    num_steps = draw(st.sampled_from(steps))
    theta = draw(st.sampled_from(THETAS))
    kind = draw(st.sampled_from(["random", "constant", "bursty", "tie", "saturated", "silent"]))
    if kind == "random":
        units = _grid(draw, -24, 40, num_steps)
    elif kind == "constant":
        units = np.repeat(_grid(draw, -24, 40, 1), num_steps, axis=0)
    elif kind == "bursty":
        bursts = _grid(draw, 16, 64, num_steps)
        mask = np.asarray(draw(st.lists(st.booleans(), min_size=bursts.size, max_size=bursts.size))).reshape(
            bursts.shape
        )
        units = np.where(mask, bursts, 0.0).astype(np.float32)
    elif kind == "tie":  # with v(0) = theta/2 the potential lands exactly on theta
        units = np.full((num_steps, NUM_NEURONS), 0.5, np.float32)
    elif kind == "saturated":
        units = _grid(draw, 16, 48, num_steps)
    else:
        units = _grid(draw, -32, 0, num_steps)
    return units * np.float32(theta), theta
