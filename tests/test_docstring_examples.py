"""The docstring examples run, and print what they show (``python -m pytest`` runs them, as
``--doctest-modules fastzsl`` would, with a skip for a module whose optional library is
missing)."""
import doctest
import importlib
from pathlib import Path

import pytest

import fastzsl

PACKAGE = Path(fastzsl.__file__).parent
# libraries an optional extra brings; a module that needs a missing one is skipped
OPTIONAL = {"numba", "cupy", "torch", "faiss", "dask", "distributed", "matplotlib", "gensim",
            "pandas", "pyarrow"}


def _modules_with_examples():
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" in path.read_text():
            parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


MODULES = _modules_with_examples()


def test_examples_are_found():
    assert {"fastzsl.neighbors", "fastzsl.loop", "fastzsl.knn_graph", "fastzsl.faiss"} <= \
        set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs {exc.name}, which is not installed")
        raise
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    examples = 0
    for test in finder.find(module, name):
        examples += len(test.examples)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert examples > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
