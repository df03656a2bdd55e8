"""An independent reference of the neuron and the calibration: plain Python loops over time and
neurons, in float64.

Written from the mathematics (docs/method.md) alone, sharing no code with ``offsetjax``, so
agreement means two readings of it agree.
"""

from __future__ import annotations

import math

import numpy as np


def qcfs(z: float, theta: float, levels: int) -> float:
    q = math.floor(z * levels / theta + 0.5) / levels
    return theta * min(max(q, 0.0), 1.0)


def simulate_neuron(currents, theta: float, v0: float):
    """Returns (spikes list, v, count, min_fired_v, max_silent_v) of one neuron."""
    v = v0
    spikes = []
    min_fired, max_silent = math.inf, -math.inf
    for current in currents:
        charged = v + current
        if charged >= theta:
            v = charged - theta
            spikes.append(1.0)
            min_fired = min(min_fired, v)
        else:
            v = charged
            spikes.append(0.0)
            max_silent = max(max_silent, charged)
    return spikes, v, float(sum(spikes)), min_fired, max_silent


def shift(v0, count, min_fired, max_silent, theta, psi, eps, saturated="fire"):
    """Theorem 2; a neuron that never stayed silent counts its silent maximum as -1000 theta
    (``saturated="fire"``) or is left alone (``"hold"``)."""
    if psi < 0 and count > 0:
        return v0 - max(theta, min_fired + eps * theta)
    if psi > 0 and max_silent == -math.inf and saturated == "fire":
        max_silent = -1000.0 * theta
    if psi > 0 and max_silent > -math.inf:
        return v0 + max(theta, theta + eps * theta - max_silent)
    return v0


def calibrate(currents, theta, v0, presim_steps, iterations, eps, saturated="fire") -> float:
    shifted = v0
    if presim_steps == 0:
        return v0
    for _ in range(iterations):
        _, v, count, min_fired, max_silent = simulate_neuron(currents[:presim_steps], theta, shifted)
        psi = math.floor((v - (shifted - v0)) / theta)
        shifted = shift(shifted, count, min_fired, max_silent, theta, psi, eps, saturated)
    return shifted


def per_neuron(fn, currents: np.ndarray, *args):
    """Apply a one-neuron function to each column of ``currents`` [T, N]."""
    return [fn(currents[:, i].tolist(), *args) for i in range(currents.shape[1])]
