"""The package's layers, checked: every module belongs to one layer, imports point only
down (or within a layer), and no two modules import each other, directly or in a ring.

An import counts wherever it stands (module level or inside a function), so a lazy import
that points up is caught too. The compiled modules count as well: ``csrc/cpu/<op>_cpu.pyx``
(with the ``.pxi`` files it includes) is the module ``fastzsl._ext.<op>_cpu``, and its
Python imports are read from the Cython text. The layers, bottom to top, are those of
docs/architecture.md.
"""
import ast
import re
from pathlib import Path

import fastzsl

PACKAGE = Path(fastzsl.__file__).parent
CYTHON_SOURCES = PACKAGE.parent / "csrc" / "cpu"

# bottom first; a module belongs to the first layer with a prefix that names it or its package
LAYERS = [
    # the OpenMP runtime query is plumbing (thread control); the other compiled kernels
    # belong to the cython backend
    ("plumbing", ("fastzsl._array", "fastzsl._validation", "fastzsl._threads", "fastzsl._files",
                  "fastzsl._locks", "fastzsl._progress",
                  "fastzsl._optional", "fastzsl._platform", "fastzsl._model_files",
                  "fastzsl._version", "fastzsl._ext.threads_cpu")),
    ("backends", ("fastzsl.backends", "fastzsl._ext")),
    ("kernel API", ("fastzsl.neighbors", "fastzsl.loop", "fastzsl.gaussian",
                    "fastzsl.knn_graph", "fastzsl.pynomaly", "fastzsl.faiss")),
    ("models", ("fastzsl.features", "fastzsl.embeddings", "fastzsl.mapping", "fastzsl.softmax",
                "fastzsl.calibration", "fastzsl.adaptation", "fastzsl.novelty_gate",
                "fastzsl._training", "fastzsl.metrics", "fastzsl.zeroshot",
                "fastzsl.persistence", "fastzsl.batch", "fastzsl.fitting", "fastzsl.testing")),
    ("application", ("fastzsl.app",)),
    ("command line", ("fastzsl.cli", "fastzsl.__main__")),
]
FACADE = "fastzsl"  # the package itself: public names, loaded lazily on first use


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules.update({f"fastzsl._ext.{p.stem}": p for p in CYTHON_SOURCES.glob("*_cpu.pyx")})
    return modules


# "import a.b", "from a.b import c, d" and "from a.b cimport c" lines of Cython text
_CYTHON_IMPORT = re.compile(r"^\s*(?:c?import\s+([\w.]+)|from\s+([\w.]+)\s+c?import\s+(.+))$",
                            re.MULTILINE)


def _cython_text(path: Path) -> str:
    """A .pyx file with the .pxi files it includes (from its folder), recursively."""
    text = path.read_text()
    for name in re.findall(r'^\s*include\s+"([^"]+)"', text, re.MULTILINE):
        text += "\n" + _cython_text(path.parent / name)
    return text


def _cython_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The fastzsl modules a Cython module imports (absolute imports, as Cython writes)."""
    found = set()
    for plain, base, names in _CYTHON_IMPORT.findall(_cython_text(path)):
        if plain:
            candidates = [plain]
        else:
            subs = [f"{base}.{n.strip()}" for n in names.strip("() ").split(",")]
            candidates = subs + ([base] if not set(subs) <= known else [])
        found.update(n for n in candidates if n in known or n == FACADE)
    found.discard(module)
    return found


def _layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and docs/architecture.md)")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The fastzsl modules that ``module`` imports (submodules named in a from-import too)."""
    if path.suffix == ".pyx":
        return _cython_imports(module, path, known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            # "from package import submodule" imports the submodule; any other name, the package
            names = submodules + ([base] if not set(submodules) <= known else [])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and node.args[0].value.startswith("fastzsl")):
            names = [node.args[0].value]
        else:
            continue
        found.update(n for n in names if n in known or n == FACADE)
    found.discard(module)
    return found


def _graph():
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, p, known) for m, p in modules.items()}


def test_every_module_has_a_layer_and_imports_point_down():
    graph = _graph()
    wrong = []
    for module, targets in sorted(graph.items()):
        if module == FACADE:
            continue
        rank = _layer(module)
        for target in sorted(targets):
            if target == FACADE:
                # the public API is for the layers that use the library, not for its parts
                if rank < _layer("fastzsl.app"):
                    wrong.append(f"{module} imports the package facade 'fastzsl'")
            elif _layer(target) > rank:
                wrong.append(f"{module} ({LAYERS[rank][0]}) imports {target} "
                             f"({LAYERS[_layer(target)][0]})")
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: t - {FACADE} for m, t in _graph().items() if m != FACADE}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_relative_and_string_imports(tmp_path):
    """The rules above are only as good as the import finder: check it on known text."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from .. import _threads\n"
        "from ..backends import get_backend\n"
        "def later():\n"
        "    from fastzsl.zeroshot import ZeroShotClassifier\n"
        "    import importlib; importlib.import_module('fastzsl.batch')\n")
    known = {"fastzsl._threads", "fastzsl.backends", "fastzsl.zeroshot", "fastzsl.batch"}
    assert _imports("fastzsl.backends.probe", source, known) == known


def test_the_checker_reads_cython_sources_and_their_includes(tmp_path):
    """The compiled modules are in the graph, with the imports of the .pxi files they
    include: a Cython kernel that imported the kernel API would be caught."""
    (tmp_path / "part.pxi").write_text("from fastzsl.neighbors import knn\n")
    source = tmp_path / "probe_cpu.pyx"
    source.write_text("cimport cython\nfrom libc.math cimport sqrt\n"
                      "from fastzsl._threads import blas_single_threaded\n"
                      'include "part.pxi"\n')
    known = {"fastzsl._threads", "fastzsl.neighbors"}
    assert _imports("fastzsl._ext.probe_cpu", source, known) == known
    graph = _graph()
    assert "fastzsl.backends._gaussian_gemm" in graph["fastzsl._ext.gaussian_cpu"]
    assert "fastzsl._threads" in graph["fastzsl._ext.knn_cpu"]
