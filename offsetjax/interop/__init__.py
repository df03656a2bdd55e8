"""Importing networks trained elsewhere."""

from offsetjax.interop.torch import load_torch_state_dict, torch_key_map

__all__ = ["load_torch_state_dict", "torch_key_map"]
