# Dtype dispatch of the csrc/cpu modules (included by each; they import numpy as np). Their
# typed entry points are def functions over cython.floating, called as fn[key](...) with the
# key of the input arrays' dtype.

cdef str _floating_key(dtype, str supported):
    """The cython.floating specialisation ("float" or "double") for arrays of ``dtype``;
    for any other dtype, TypeError("<supported>, not <dtype>")."""
    if dtype == np.float32:
        return "float"
    if dtype == np.float64:
        return "double"
    raise TypeError(f"{supported}, not {dtype}")
