"""Import layering of the three packages: ``workloads -> compiler -> pimsim``, and no circles.

Every ``.py`` file under ``pimsim/``, ``compiler/`` and ``workloads/`` is discovered on disk and
parsed with :mod:`ast` (nothing is imported). Every import statement counts, wherever it is:
at module level, inside a function, under ``if TYPE_CHECKING:``. The module graph is built so:

* ``import a.b.c`` imports ``a.b.c``; ``from a.b import name`` imports ``a.b.name`` when that is
  a module of the repository, else ``a.b``; relative imports are resolved against the importing
  module's package (``from . import x`` in ``a/b/c.py`` is ``a.b.x`` or ``a.b``).
* Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` (and ``a``), so there is an edge to
  each enclosing package of the imported module too, except to the importer's own enclosing
  packages (Python has started those before the importer runs).
* A package ``__init__`` that imports its own submodules (re-exporting them) is not a circle
  with those submodules: edges from a package to modules inside it are left out. Everything
  else a package ``__init__`` imports counts.
* Modules outside the three packages (numpy, torch, the standard library) are not in the graph,
  nor are imports by name at run time (``importlib.import_module``).

Fails on: a ``pimsim`` module importing ``compiler`` or ``workloads``; a ``compiler`` module
importing ``workloads``; any circle (a strongly connected component of more than one module)
that is not listed in ``KNOWN_TO_FIX``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pimsim", "compiler", "workloads")
# layer of each top-level package: a module may import only its own layer or lower ones
LAYER = {"pimsim": 0, "compiler": 1, "workloads": 2}

# Circles outside the simulator that are still to be broken, each as its sorted module names.
# pimsim has none and must keep it that way; remove an entry once its circle is gone.
KNOWN_TO_FIX: list[tuple[str, ...]] = []


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the three packages under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the repository that ``module`` (at ``path``) names in an import statement."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if _is_package(path) else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for a in node.names:
                sub = f"{base}.{a.name}"
                names.add(sub if sub in known else base)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def _enclosing(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    """The module graph of the three packages (edges: importer -> imported), per the rules above."""
    mods = _modules(root)
    known = set(mods)
    g = nx.DiGraph()
    g.add_nodes_from(known)
    for module, path in mods.items():
        own = set(_enclosing(module))
        for target in _imported(module, path, known):
            for t in (*_enclosing(target), target):
                if t == module or t in own or t not in known:
                    continue
                if _is_package(path) and t.startswith(module + "."):
                    continue  # a package re-exporting its own submodules
                g.add_edge(module, t)
    return g


def _cycle_text(g: nx.DiGraph, comp: set[str]) -> str:
    """One circle through a component, as ``a -> b -> a``."""
    cycle = nx.find_cycle(g.subgraph(comp))
    return " -> ".join([u for u, _ in cycle] + [cycle[0][0]])


def _upward(g: nx.DiGraph) -> list[str]:
    """Imports from a lower package into a higher one (pimsim -> compiler, ...)."""
    return sorted(f"{a} imports {b}" for a, b in g.edges
                  if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]])


def test_layers_point_down():
    bad = _upward(import_graph())
    assert not bad, ("imports must point workloads -> compiler -> pimsim, never up:\n  "
                     + "\n  ".join(bad))


def test_no_import_circles():
    g = import_graph()
    comps = [c for c in nx.strongly_connected_components(g) if len(c) > 1]
    known = {tuple(sorted(k)) for k in KNOWN_TO_FIX}
    found = {tuple(sorted(c)) for c in comps}
    new = [c for c in comps if tuple(sorted(c)) not in known]
    in_pimsim = [c for c in comps if any(m.split(".")[0] == "pimsim" for m in c)]
    assert not in_pimsim, "import circles in pimsim:\n  " + "\n  ".join(
        _cycle_text(g, c) for c in in_pimsim)
    assert not new, ("import circles (break each by moving the shared code into a lower "
                     "module):\n  " + "\n  ".join(_cycle_text(g, c) for c in new))
    gone = sorted(known - found)
    assert not gone, f"circles in KNOWN_TO_FIX no longer exist, remove them from the list: {gone}"


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


def test_graph_rules(tmp_path):
    """The resolution rules, on a small tree: relative imports, a from-import of a module or of a
    name, an import inside a function, enclosing packages, a package re-exporting its children."""
    _tree(tmp_path, {
        "pimsim/__init__.py": "",
        "pimsim/low.py": "X = 1\n",
        "pimsim/sub/__init__.py": "from pimsim.sub.leaf import Y\nfrom .. import low\n",
        "pimsim/sub/leaf.py": "from . import other\nfrom .other import Z\nY = 2\n",
        "pimsim/sub/other.py": "def f():\n    from ..low import X\n    return X\nZ = 3\n",
        "pimsim/top.py": "import pimsim.sub.leaf\nfrom pimsim.low import X\n",
        "compiler/__init__.py": "",
        "compiler/c.py": "from pimsim import low\n",
        "workloads/__init__.py": "",
        "workloads/w.py": "import numpy\nfrom compiler.c import *\n",
    })
    g = import_graph(tmp_path)
    assert set(g.edges) == {
        ("pimsim.sub", "pimsim.low"),  # `from .. import low`; its own leaf is a re-export
        ("pimsim.sub.leaf", "pimsim.sub.other"),  # `from . import other`, `from .other import Z`
        ("pimsim.sub.other", "pimsim.low"),  # relative, inside a function
        ("pimsim.top", "pimsim.sub.leaf"),
        ("pimsim.top", "pimsim.sub"),  # importing pimsim.sub.leaf runs pimsim/sub/__init__
        ("pimsim.top", "pimsim.low"),  # `from pimsim.low import X`: X is a name, not a module
        ("compiler.c", "pimsim.low"),
        ("compiler.c", "pimsim"),  # another package's __init__ runs too
        ("workloads.w", "compiler.c"),  # numpy is not in the graph
        ("workloads.w", "compiler"),
    }


def test_a_circle_through_a_package_init_counts(tmp_path):
    """A module that imports a package whose ``__init__`` imports that module back is a circle."""
    _tree(tmp_path, {
        "pimsim/__init__.py": "",
        "pimsim/config.py": "from pimsim.timing.tables import T\n",
        "pimsim/timing/__init__.py": "from pimsim.config import C\n",
        "pimsim/timing/tables.py": "T = 1\n",
        "compiler/__init__.py": "",
        "workloads/__init__.py": "",
    })
    comps = [c for c in nx.strongly_connected_components(import_graph(tmp_path)) if len(c) > 1]
    assert comps == [{"pimsim.config", "pimsim.timing"}]


def test_an_upward_import_inside_a_function_counts(tmp_path):
    _tree(tmp_path, {
        "pimsim/__init__.py": "",
        "pimsim/cli.py": "def types():\n    from compiler.mapping import E\n    return E\n",
        "compiler/__init__.py": "",
        "compiler/mapping.py": "def f():\n    import workloads.zoo\n",
        "workloads/__init__.py": "",
        "workloads/zoo.py": "",
    })
    assert _upward(import_graph(tmp_path)) == [
        "compiler.mapping imports workloads", "compiler.mapping imports workloads.zoo",
        "pimsim.cli imports compiler", "pimsim.cli imports compiler.mapping"]
