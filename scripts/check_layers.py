"""Check that deepret's imports point down its layers and form no cycle.

Usage: python scripts/check_layers.py [PACKAGE_DIR]   (default: src/deepret beside this script)

Builds the import graph of the package from its code (ast): every ``import`` and ``from ... import``,
including those inside functions; imports under ``if TYPE_CHECKING:`` are listed apart (``type-only:``
lines, for information) and left out of the cycle search, but still have to point down. Prints one line
per problem and exits 1 on any:

- ``cycle:``      modules that import each other, directly or through others;
- ``upward:``     a module importing from a layer above its own;
- ``unassigned:`` a top-level module or package the table below does not place.

A module inside a package (deepret.index.build) belongs to its package's layer (index); imports within
one package only have to be acyclic, and so have modules of one layer.

Layers, top to bottom, and why each module sits where it does (what it imports):

== ============================================================ =======================================
 0 cli, __main__, deepret (the package's __init__: a facade        the entry points; import everything
   re-exporting models.load)
 1 study, index, serve                                           applications: run pipelines, train,
                                                                 build and serve indexes
 2 pipeline, train, compression, robustness                      evaluate/extract/cache a benchmark;
                                                                 compression and robustness are studies
                                                                 run on pipeline.benchmark_features
 3 extract, engines, models, evaluate, rerank, vectors, search,  the building blocks; they import each
   features, whiten, precision, datasets, viz, augment,          other (extract -> models, precision;
   protocols, separation                                         evaluate -> search, protocols;
                                                                 viz.tsne -> features, datasets)
 4 imageio, fileio, runtime, errors, argtypes, version, lazy     leaves: no deepret import but errors
== ============================================================ =======================================

(``engines`` is reserved: no such module yet.)
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__", ""),  # "" is the package itself (its __init__.py)
    ("study", "index", "serve"),
    ("pipeline", "train", "compression", "robustness"),
    ("extract", "engines", "models", "evaluate", "rerank", "vectors", "search", "features", "whiten",
     "precision", "datasets", "viz", "augment", "protocols", "separation"),
    ("imageio", "fileio", "runtime", "errors", "argtypes", "version", "lazy"),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int
    type_only: bool


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root`` by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST, type_only: bool = False):
    """(import node, type_only) for every import anywhere in ``tree``, functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, type_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), type_only)
        else:
            yield from _statements(node, type_only)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a dotted import target) is or lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when under it (clickable), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def imports_of(name: str, path: Path, modules: dict[str, Path], root: Path) -> list[Import]:
    """The package-internal imports of module ``name`` (its file ``path``)."""
    is_package = path.name == "__init__.py"
    rel = _shown(path)
    edges = []
    for node, type_only in _statements(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one, else pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != name:
                edges.append(Import(name, resolved, rel, node.lineno, type_only))
    return edges


def layer_key(module: str) -> str:
    """The table entry of ``module``: its top-level module or package under ``package``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycles(edges: list[Import]) -> list[list[str]]:
    """One shortest cycle through each module that lies on a cycle, without repeats."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    cycles, seen = [], set()
    for start in sorted(graph):
        # breadth-first search for the shortest way from start back to start
        parent: dict[str, str] = {}
        frontier, found = [start], None
        while frontier and found is None:
            nxt = []
            for node in frontier:
                for succ in sorted(graph.get(node, ())):
                    if succ == start:
                        found = node
                        break
                    if succ not in parent:
                        parent[succ] = node
                        nxt.append(succ)
                if found is not None:
                    break
            frontier = nxt
        if found is None:
            continue
        path = [found]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycle = path[::-1]
        low = cycle.index(min(cycle))
        key = tuple(cycle[low:] + cycle[:low])
        if key not in seen:
            seen.add(key)
            cycles.append(list(key))
    return cycles


def check(root: Path) -> tuple[list[str], list[str]]:
    """(problems, type-only notes) of the package at ``root``."""
    package = root.name
    modules = module_names(root)
    edges = [edge for name, path in modules.items() for edge in imports_of(name, path, modules, root)]
    problems = []
    keys = sorted({layer_key(name) for name in modules})
    for key in keys:
        if key not in LAYER_OF:
            problems.append(f"unassigned: {package}.{key} has no layer: add it to LAYERS in "
                            f"scripts/check_layers.py")
    where = {(e.source, e.target): e for e in edges if not e.type_only}
    for cycle in find_cycles([e for e in edges if not e.type_only]):
        hops = list(zip(cycle, cycle[1:] + cycle[:1]))
        at = ", ".join(f"{where[hop].path}:{where[hop].line}" for hop in hops)
        problems.append(f"cycle: {' -> '.join(cycle + cycle[:1])} ({at})")
    for edge in edges:
        src, dst = LAYER_OF.get(layer_key(edge.source)), LAYER_OF.get(layer_key(edge.target))
        if src is not None and dst is not None and dst < src:
            kind = "type-only import" if edge.type_only else "import"
            problems.append(f"upward: {edge.path}:{edge.line}: {edge.source} (layer {src}) {kind} of "
                            f"{edge.target} (layer {dst})")
    notes = [f"type-only: {e.path}:{e.line}: {e.source} -> {e.target}" for e in edges if e.type_only]
    return problems, notes


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "src" / "deepret"
    if not (root / "__init__.py").is_file():
        print(f"check_layers: {root} is not a package (no __init__.py)", file=sys.stderr)
        return 2
    problems, notes = check(root.resolve())
    for line in notes + problems:
        print(line)
    if not problems:
        print(f"check_layers: {root.name}: imports point down, no cycles")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
