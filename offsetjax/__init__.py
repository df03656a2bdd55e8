"""offsetjax: QCFS ANNs converted to IF spiking networks, calibrated by offset spikes.

A JAX/Flax reimplementation of Hao et al., "Bridging the Gap Between ANNs and SNNs by
Calibrating Offset Spikes" (ICLR 2023). Arrays are time-major: ``[T, ...]``. The mathematics
and the symbols are in ``docs/method.md``.

The top level is the core: the activation, the neuron, offset spikes and their calibration,
conversion, simulation (layer by layer, and step by step as a chip runs it), statistics,
evaluation, networks (``offsetjax.models``) and device
meshes (``offsetjax.parallel``). Training, data readers and checkpoints are the subpackage
``offsetjax.training``; checkpoint import from PyTorch is ``offsetjax.interop``. Neither is
loaded by ``import offsetjax``.
"""

from offsetjax import models, parallel
from offsetjax.activation import QCFS, qcfs
from offsetjax.convert import ann_model, convert_variables, schedule, spiking_model
from offsetjax.data_calibration import data_bias, data_potential
from offsetjax.evaluate import SNNEvaluation, ann_accuracy, evaluate_snn, predict
from offsetjax.executor import run_step_by_step, step_by_step
from offsetjax.jax_network import from_jax
from offsetjax.neuron import IFState, if_simulate, if_step, scan_unroll
from offsetjax.offset import (
    calibrate_initial_potential,
    offset_from_residual,
    offset_spike,
    shift_initial_potential,
)
from offsetjax.operations import Operations, count_operations, energy
from offsetjax.schedule import Schedule
from offsetjax.simulation import calibrate_network, simulate, simulate_with_statistics
from offsetjax.site import IFActivation
from offsetjax.stats import PSI_BINS, OffsetStatistics, accumulate, offset_statistics, summarize

__version__ = "0.2.0"

__all__ = [
    "PSI_BINS",
    "QCFS",
    "IFActivation",
    "IFState",
    "OffsetStatistics",
    "Operations",
    "SNNEvaluation",
    "Schedule",
    "accumulate",
    "ann_accuracy",
    "ann_model",
    "calibrate_initial_potential",
    "calibrate_network",
    "convert_variables",
    "count_operations",
    "data_bias",
    "data_potential",
    "energy",
    "evaluate_snn",
    "from_jax",
    "if_simulate",
    "if_step",
    "models",
    "offset_from_residual",
    "offset_spike",
    "offset_statistics",
    "parallel",
    "predict",
    "run_step_by_step",
    "qcfs",
    "schedule",
    "shift_initial_potential",
    "scan_unroll",
    "simulate",
    "simulate_with_statistics",
    "spiking_model",
    "step_by_step",
    "summarize",
]
