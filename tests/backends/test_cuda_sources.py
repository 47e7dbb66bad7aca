"""The CUDA kernel sources and their loader, checked without a GPU.

* ``test_nvcc_*`` compile every ``csrc/cuda/*.cu`` with nvcc for sm_80 and sm_90 and fail
  on any error or warning: once as the loader hands it to NVRTC (headers inlined,
  ``#line`` directives, the constants prepended as ``#define`` lines), once as the file
  stands with the same constants as ``-D`` flags. Skipped only when nvcc is on neither
  PATH nor /usr/local/cuda/bin.
* The loader's other work (header inlining, ``#line``, the defines) needs no compiler.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastzsl
from fastzsl.backends.cupy import _loader

CUDA_DIR = Path(__file__).resolve().parents[2] / "csrc" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
CUDA_SOURCES = sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh"))
ARCHS = ("sm_80", "sm_90")


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = Path("/usr/local/cuda/bin/nvcc")
    return str(candidate) if candidate.is_file() else None


@pytest.fixture
def nvcc():
    found = _nvcc()
    if found is None:
        pytest.skip("nvcc not found on PATH nor in /usr/local/cuda/bin")
    return found


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_cuda_sources_exist():
    assert {p.name for p in CU_FILES} >= {"knn_cuda.cu", "loop_cuda.cu", "gaussian_cuda.cu",
                                          "knn_twopass.cu"}  # (each is compiled below)


@pytest.mark.parametrize("path", CUDA_SOURCES, ids=lambda p: p.name)
def test_sources_use_no_host_headers(path):
    # NVRTC (cupy.RawModule) has no host standard library: <cstdio>, <cmath>, ... fail there
    # even though nvcc accepts them.
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.S)  # code only
    assert not re.findall(r"^\s*#\s*include\s*<", text, flags=re.M), \
        f"{path.name} includes a system header, which NVRTC cannot compile"
    for macro in ("INFINITY", "NAN", "M_PI", "printf"):
        assert not re.search(rf"\b{macro}\b", text), f"{path.name} uses host-only {macro}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_the_loaded_source_without_warnings(nvcc, path, arch, tmp_path):
    # Exactly the text RawModule compiles, with the same options.
    source = tmp_path / path.name
    source.write_text(_loader.kernel_source(path.stem))
    cmd = [nvcc, *_loader.OPTIONS, f"-arch={arch}", "--cubin", "-Werror", "all-warnings",
           "-o", str(tmp_path / f"{path.stem}.{arch}.cubin"), str(source)]
    code, output = _run(cmd)
    assert code == 0 and not output, f"{' '.join(cmd)}\n{output}"


def test_nvcc_compiles_the_tensor_core_module_for_pre_ampere_too(nvcc, tmp_path):
    # knn_twopass.cu holds the mma.sync / cvt.rna.tf32 kernel (sm_80+), guarded so that
    # the module (and its FP32 path) still compiles for Turing, the oldest nvcc 13 targets.
    source = tmp_path / "knn_twopass.cu"
    source.write_text(_loader.kernel_source("knn_twopass"))
    cmd = [nvcc, *_loader.OPTIONS, "-arch=sm_75", "--cubin", "-Werror", "all-warnings",
           "-o", str(tmp_path / "knn_twopass.sm_75.cubin"), str(source)]
    code, output = _run(cmd)
    assert code == 0 and not output, f"{' '.join(cmd)}\n{output}"


@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_the_file_as_is(nvcc, path, tmp_path):
    cmd = [nvcc, *_loader.OPTIONS, *_loader.define_flags(), "-arch=sm_80", "--ptx",
           "-Werror", "all-warnings", "-o", str(tmp_path / f"{path.stem}.ptx"), str(path)]
    code, output = _run(cmd)
    assert code == 0 and not output, f"{' '.join(cmd)}\n{output}"


def _uses(path, name):
    """Whether ``path`` or a header it includes mentions macro ``name``."""
    text = _loader.kernel_source(path.stem)
    body = text.split('#line 1 "', 1)[1]  # after the prepended defines
    return re.search(rf"\b{name}\b", body) is not None


@pytest.mark.parametrize("name", sorted(_loader.defines()))
def test_nvcc_stops_when_a_define_is_missing(nvcc, name, tmp_path):
    flags = [flag for flag in _loader.define_flags() if not flag.startswith(f"-D{name}=")]
    users = [path for path in CU_FILES if _uses(path, name)]
    assert users, f"no kernel uses {name}; drop it from _loader.defines()"
    for path in users:
        cmd = [nvcc, *_loader.OPTIONS, *flags, "-arch=sm_80", "-E", "-o",
               str(tmp_path / f"{path.stem}.ii"), str(path)]
        code, output = _run(cmd)
        assert code != 0 and f"{name} must be defined by the loader" in output, \
            f"{' '.join(cmd)}\n{output}"


@pytest.mark.parametrize("path", CUDA_SOURCES, ids=lambda p: p.name)
def test_sources_do_not_define_the_loader_constants(path):
    text = path.read_text()
    for name in _loader.defines():
        assert not re.search(rf"^\s*#\s*define\s+{name}\b", text, flags=re.M), \
            f"{path.name} defines {name}, which only fastzsl/backends/cupy/_loader.py may"


@pytest.mark.parametrize("name", sorted(_loader.defines()))
def test_each_loader_constant_is_guarded_once(name):
    guard = re.compile(rf"^\s*#\s*ifndef\s+{name}\s*\n\s*#\s*error\b", flags=re.M)
    guarded = [path.name for path in CUDA_SOURCES if guard.search(path.read_text())]
    assert len(guarded) == 1, f"{name}: #ifndef/#error guards in {guarded}"


def test_kernel_source_starts_with_the_defines(monkeypatch):
    text = _loader.kernel_source("loop_cuda")
    prelude = [f"#define {name} {value}" for name, value in _loader.defines().items()]
    assert text.splitlines()[:len(prelude) + 1] == prelude + ['#line 1 "loop_cuda.cu"']
    assert _loader.defines()["FASTZSL_TILE_ROWS"] == _loader.TILE_ROWS
    # Read when the source is built, so a changed constant changes CuPy's cache key.
    monkeypatch.setattr(_loader, "REDUCE_THREADS", 128)
    assert "#define FASTZSL_REDUCE_THREADS 128\n" in _loader.kernel_source("loop_cuda")
    assert "-DFASTZSL_REDUCE_THREADS=128" in _loader.define_flags()


def test_kernel_source_inlines_headers():
    text = _loader.kernel_source("knn_cuda")
    assert '#line 1 "knn_cuda.cu"' in text
    assert '#line 1 "common.cuh"' in text and "FASTZSL_COMMON_CUH" in text
    assert not re.search(r'^\s*#\s*include\s+"', text, flags=re.M)
    # After the header, line numbers continue from the #include line of the .cu file.
    lines = (CUDA_DIR / "knn_cuda.cu").read_text().splitlines()
    include_line = next(i for i, line in enumerate(lines, 1) if '#include "common.cuh"' in line)
    assert f'#line {include_line + 1} "knn_cuda.cu"' in text


def test_kernel_source_of_a_missing_file_says_so():
    with pytest.raises(FileNotFoundError, match="not found"):
        _loader.kernel_source("no_such_kernel")


def test_importing_the_backend_does_not_import_cupy():
    code = ("import sys, fastzsl.backends.cupy as m; "
            "assert 'cupy' not in sys.modules; ok, reason = m.is_available(); "
            "print(ok, reason)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(fastzsl.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.startswith("False"):
        assert "fastzsl[gpu]" in proc.stdout or "CUDA GPU" in proc.stdout, proc.stdout


def test_get_backend_names_cupy_when_it_cannot_load():
    from fastzsl.backends import BackendUnavailableError, cupy, get_backend

    ok, reason = cupy.is_available()
    if ok:
        pytest.skip("cupy and a CUDA device are present here")
    with pytest.raises(BackendUnavailableError, match="'cupy'") as info:
        get_backend("cupy")
    assert reason in str(info.value)
