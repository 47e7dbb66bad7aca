"""Array kinds at the API boundary: NumPy, torch and CuPy in; the input's kind out.

CuPy arrays stay on their device through the kernel API (validated there, computed there
by the cupy backend). Torch CUDA tensors take the same road: at the boundary they become
CuPy arrays through DLPack (``cupy.from_dlpack``, no copy), and results go back the same
way (``torch.from_dlpack`` in :func:`like`). Torch CPU tensors are read through NumPy
(sharing memory where they can).

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


def is_torch_cuda(x) -> bool:
    """Whether ``x`` is a torch tensor on a CUDA device."""
    if array_kind(x) != "torch":
        return False
    if getattr(x, "is_cuda", False):
        return True
    return getattr(getattr(x, "device", None), "type", None) == "cuda"


def on_device(x) -> bool:
    """Whether the kernel API keeps ``x`` where it is, on a GPU: CuPy arrays and torch
    CUDA tensors."""
    return array_kind(x) == "cupy" or is_torch_cuda(x)


def as_device_array(x):
    """A device array as the kernels read it: a torch CUDA tensor becomes a CuPy array over
    the same memory (DLPack, no copy); CuPy arrays and anything else are returned as is."""
    if is_torch_cuda(x):
        import cupy

        return cupy.from_dlpack(x)
    return x


def array_module(x):
    """The module whose functions work on ``x`` where it lies: cupy or numpy."""
    if on_device(x):
        import cupy

        return cupy
    return np


def for_kernels(x, device: str):
    """``x`` where a kernel set running on ``device`` (its ``KernelSet.device``) reads it:
    a CuPy array stays on its GPU for "cuda" kernels and comes to the host for "cpu" ones
    (a backend named explicitly for device data)."""
    return as_device_array(x) if device == "cuda" else to_host(x)


def to_host(x) -> np.ndarray:
    """A NumPy view of ``x`` where possible (torch CPU tensors share memory)."""
    kind = array_kind(x)
    if kind == "torch":
        return x.detach().cpu().numpy()
    if kind == "cupy":
        return x.get()
    return x


def like(result, template):
    """Return ``result`` (NumPy, or CuPy from the cupy backend) in the kind and on the
    device of ``template``; a result already where it belongs is returned as it is. A CuPy
    result for a torch CUDA template goes back through DLPack (``torch.from_dlpack``, no
    copy), on the result's device, which is the input's."""
    kind = array_kind(template)
    if kind == "torch":
        import torch

        if array_kind(result) == "cupy" and is_torch_cuda(template):
            return torch.from_dlpack(result)

        return torch.from_numpy(np.ascontiguousarray(to_host(result))).to(template.device)
    if kind == "cupy":
        if array_kind(result) == "cupy":
            return result
        import cupy

        with cupy.cuda.Device(template.device.id):
            return cupy.asarray(result)
    return to_host(result)


def like_each(results, template) -> tuple:
    """:func:`like` of each of ``results`` (None stays None): a kernel call's outputs in
    the kind of the caller's input (cuML's ``output_type="input"``)."""
    return tuple(None if r is None else like(r, template) for r in results)
