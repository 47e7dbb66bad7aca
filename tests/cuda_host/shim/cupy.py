"""``import cupy`` as the CPU harness's stand-in (tests/cuda_host/fake_cupy.py), for scripts
run with this directory on PYTHONPATH (benchmarks/gpu_check.sh with FASTZSL_CUDA_HOST=1)."""
import sys

from tests.cuda_host import fake_cupy

sys.modules[__name__] = fake_cupy
