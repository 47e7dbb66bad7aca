"""Root conftest: loaded before tests/conftest.py. See tests/cuda_host/plugin.py (the
cupy backend's kernels on the CPU when CuPy is not installed; test infrastructure only)."""
pytest_plugins = ["tests.cuda_host.plugin"]
