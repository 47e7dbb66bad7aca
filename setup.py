"""Builds the Cython/OpenMP CPU kernels from csrc/cpu/<op>_cpu.pyx into fastzsl._ext, and
lists the packages: every package under fastzsl/ (found), plus fastzsl.cuda, the CUDA
sources in csrc/cuda shipped as package data (pyproject.toml maps the folder).

Every ``csrc/cpu/*_cpu.pyx`` becomes ``fastzsl._ext.<op>_cpu``: adding a kernel file or a
subpackage needs no edit here. Flags are portable (-O3, OpenMP); set FASTZSL_NATIVE=1 to add -march=native.
"""
import glob
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

compile_args = ["-O3", "-fopenmp"]
link_args = ["-fopenmp"]
if os.environ.get("FASTZSL_NATIVE") == "1":
    compile_args.append("-march=native")
if sys.platform == "darwin":  # Apple clang spells OpenMP differently; build without it.
    compile_args = ["-O3"]
    link_args = []

extensions = [
    Extension(
        f"fastzsl._ext.{os.path.splitext(os.path.basename(path))[0]}",
        [path],
        include_dirs=[np.get_include(), "csrc/cpu"],
        # Headers, shared .pxd and the .pxi parts of a module (knn_cpu.pyx includes them).
        depends=sorted(glob.glob("csrc/cpu/*.h") + glob.glob("csrc/cpu/*.pxd")
                       + glob.glob("csrc/cpu/*.pxi")),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for path in sorted(glob.glob("csrc/cpu/*_cpu.pyx"))
]

setup(
    packages=find_packages(include=["fastzsl", "fastzsl.*"]) + ["fastzsl.cuda"],
    ext_modules=cythonize(
        extensions,
        include_path=["csrc/cpu"],  # shared .pxd helpers (gemm_tiles.pxd, omp_team.pxd)
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
