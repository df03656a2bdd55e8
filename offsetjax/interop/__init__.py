"""Importing networks trained elsewhere (PyTorch checkpoints), exporting converted ones (NIR)."""

from offsetjax.interop.nir import from_nir, run_nir, to_nir
from offsetjax.interop.torch import load_torch_state_dict, torch_key_map

__all__ = ["from_nir", "load_torch_state_dict", "run_nir", "to_nir", "torch_key_map"]
