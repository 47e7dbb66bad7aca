"""Compiled CPU kernels (built by setup.py from csrc/cpu)."""
