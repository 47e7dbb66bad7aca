# cython: language_level=3
"""OpenMP as the compiled kernels see it (they share this libgomp): for thread-control tests
and for loading the OpenMP runtime early, so that a ``threadpoolctl.threadpool_limits``
entered after ``import fastzsl`` finds it and limits the kernels too."""
from cython.parallel cimport parallel
from openmp cimport omp_get_max_threads, omp_get_num_threads, omp_get_thread_num


def max_threads():
    """omp_get_max_threads(): the team size a kernel's parallel region asks for."""
    return omp_get_max_threads()


def team_size():
    """The number of threads a parallel region (as the kernels open them) actually gets."""
    cdef int size = 0
    cdef int* out = &size  # written through a pointer: a plain name is thread-private
    with nogil, parallel():
        if omp_get_thread_num() == 0:
            out[0] = omp_get_num_threads()
    return size
