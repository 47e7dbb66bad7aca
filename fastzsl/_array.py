"""Array kinds at the API boundary: NumPy in and out, torch and CuPy converted.

Heavy libraries are never imported here: an input is recognised by the module its type
comes from, and the matching library is already imported by whoever made the array.
"""
from __future__ import annotations

import numpy as np


def array_kind(x) -> str:
    """'torch', 'cupy' or 'numpy' (anything else NumPy can read)."""
    module = type(x).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith("cupy"):
        return "cupy"
    return "numpy"


def to_host(x) -> np.ndarray:
    """A NumPy view of ``x`` where possible (torch CPU tensors share memory)."""
    kind = array_kind(x)
    if kind == "torch":
        return x.detach().cpu().numpy()
    if kind == "cupy":
        return x.get()
    return x


def like(result: np.ndarray, template):
    """Return ``result`` in the kind and on the device of ``template``."""
    kind = array_kind(template)
    if kind == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(result)).to(template.device)
    if kind == "cupy":
        import cupy

        with cupy.cuda.Device(template.device.id):
            return cupy.asarray(result)
    return result
