"""Importing networks trained elsewhere (PyTorch checkpoints), exporting converted ones (NIR)."""

from offsetjax.interop.nir import GraphNetwork, from_nir, initial_potentials, run_nir, to_nir
from offsetjax.interop.torch import load_torch_state_dict, torch_key_map

__all__ = [
    "GraphNetwork",
    "from_nir",
    "initial_potentials",
    "load_torch_state_dict",
    "run_nir",
    "to_nir",
    "torch_key_map",
]
