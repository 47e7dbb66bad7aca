"""The package's layers, checked: every module belongs to one layer, imports point only
down (or within a layer), and no two modules import each other, directly or in a ring.

An import counts wherever it stands (module level or inside a function), so a lazy import
that points up is caught too. The layers, bottom to top, are the README's "Architecture".
"""
import ast
from pathlib import Path

import fastzsl

PACKAGE = Path(fastzsl.__file__).parent

# bottom first; a module belongs to the first layer with a prefix that names it or its package
LAYERS = [
    ("plumbing", ("fastzsl._array", "fastzsl._validation", "fastzsl._threads", "fastzsl._files",
                  "fastzsl._optional", "fastzsl._platform", "fastzsl._model_files",
                  "fastzsl._version", "fastzsl._ext")),
    ("backends", ("fastzsl.backends",)),
    ("kernel API", ("fastzsl.neighbors", "fastzsl.loop", "fastzsl.gaussian",
                    "fastzsl.knn_graph", "fastzsl.pynomaly", "fastzsl.faiss")),
    ("models", ("fastzsl.features", "fastzsl.embeddings", "fastzsl.mapping", "fastzsl.softmax",
                "fastzsl.calibration", "fastzsl.novelty_gate",
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
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and the README)")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The fastzsl modules that ``module`` imports (submodules named in a from-import too)."""
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
