"""offsetjax: QCFS ANNs converted to IF spiking networks, calibrated by offset spikes.

A JAX/Flax reimplementation of Hao et al., "Bridging the Gap Between ANNs and SNNs by
Calibrating Offset Spikes" (ICLR 2023). Arrays are time-major: ``[T, ...]``.
"""

from offsetjax import checkpoint, data, evaluate, interop, models, parallel, train
from offsetjax.convert import convert_variables, spiking_model
from offsetjax.neuron import IFState, if_simulate, if_step
from offsetjax.offset import (
    calibrate_initial_potential,
    offset_from_residual,
    offset_spike,
    shift_initial_potential,
)
from offsetjax.qcfs import QCFS, qcfs
from offsetjax.simulate import IFActivation, calibrate_network, simulate, simulate_with_statistics
from offsetjax.stats import PSI_BINS, OffsetStatistics, accumulate, offset_statistics, summarize

__version__ = "0.1.0"

__all__ = [
    "PSI_BINS",
    "QCFS",
    "IFActivation",
    "IFState",
    "OffsetStatistics",
    "accumulate",
    "calibrate_initial_potential",
    "calibrate_network",
    "convert_variables",
    "if_simulate",
    "if_step",
    "checkpoint",
    "data",
    "evaluate",
    "interop",
    "models",
    "parallel",
    "train",
    "offset_from_residual",
    "offset_spike",
    "offset_statistics",
    "qcfs",
    "shift_initial_potential",
    "simulate",
    "simulate_with_statistics",
    "spiking_model",
    "summarize",
]
