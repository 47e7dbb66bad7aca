# cython: language_level=3
"""OpenMP team sizes, shared by the kNN and the Gaussian kernels of csrc/cpu."""


cdef inline int team_size(int n_threads, Py_ssize_t n_tasks) noexcept nogil:
    """n_threads, but no more than the region's n_tasks tasks (at least one). A thread with
    nothing to do still has to be woken: after an idle pause that takes milliseconds on
    some VMs (a 100-row Gaussian call took 7.7 ms on two threads, 1.0 ms on one, on this
    project's 2-core VM)."""
    if n_tasks < n_threads:
        return <int>n_tasks if n_tasks > 0 else 1
    return n_threads
