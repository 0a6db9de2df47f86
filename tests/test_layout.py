"""The package's architecture, checked: imports only point down the layers, and
there are no import cycles (docs/architecture.md has the map)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxcnn"

# Bottom to top. A module may import modules of its own layer or below, never above.
LAYERS = [
    {"errors", "_timing", "_fs", "provenance", "host_memory", "compilation_cache", "plots"},
    {"config"},
    {"ops"},
    {"layers"},
    {"models"},
    {"data", "sharding", "distributed"},
    {"training"},
    {"checkpoint"},
    {"bench", "compare"},
    {"run", "inference", "experiment"},
    {"cli", "__main__", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(module: str) -> str:
    """``jaxcnn.data._core`` -> ``data``; ``jaxcnn`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path) -> set[str]:
    """Every jaxcnn module ``path`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "jaxcnn"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "jaxcnn":
                continue
            if module == "jaxcnn":  # from jaxcnn import ops, data, ...
                found |= {f"jaxcnn.{a.name}" for a in node.names}
            else:
                found.add(module)
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        yield (name[:-len(".__init__")] if name.endswith(".__init__") else name), path


def test_every_module_has_a_layer():
    missing = sorted({_top(name) for name, _ in _modules()} - set(RANK))
    assert not missing, f"modules with no layer in tests/test_layout.py: {missing}"


@pytest.mark.parametrize("name, path", list(_modules()), ids=lambda v: str(v))
def test_imports_point_down(name, path):
    mine = RANK[_top(name)]
    upward = sorted(m for m in _imports(path)
                    if _top(m) in RANK and RANK[_top(m)] > mine and _top(m) != _top(name))
    assert not upward, f"{name} (layer {mine}) imports upper layers: {upward}"


def test_no_import_cycles():
    graph = {name: {m for m in _imports(path) if m != name} for name, path in _modules()}
    # Edges between jaxcnn's own modules. A package's __init__ imports its children, so a
    # child that imported its package (rather than a sibling's private module) would close
    # a cycle, and is caught here.
    names = set(graph)
    graph = {n: {m for m in deps if m in names} for n, deps in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        if node in visiting:
            cycles.append(trail[trail.index(node):] + [node])
            return
        if node in done:
            return
        visiting.add(node)
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [nxt])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_public_modules_declare_their_public_names():
    import importlib

    public = [name for name, _ in _modules()
              if not any(part.startswith("_") for part in name.split(".")[1:])]  # __main__ too
    for name in public:
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), name
        for public in module.__all__:
            assert hasattr(module, public), f"{name}.__all__ names {public!r}, which is missing"
