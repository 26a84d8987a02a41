"""The import checker behind tests/unit/test_layering.py (issue 25, deliverable 3).

Every module under a source tree is parsed with :mod:`ast`; every import in it (module level,
inside functions, under ``TYPE_CHECKING``, relative ones, ``from . import x``) is mapped to the
*unit* it names: a top-level module (``sidecar/tasks.py`` -> ``tasks``), a package
(``sidecar/policy/...`` -> ``policy``), or a settings leaf (``sidecar/policy/settings.py`` ->
``policy.settings``; ``sidecar/server_settings.py``). A package's settings are a unit of their
own so that ``config`` can assemble every section while the package's runtime reads the
assembled whole; since importing ``sidecar.P.settings`` runs ``sidecar/P/__init__.py`` first,
that file's imports count as the leaf's too. Imports spelled as strings
(``importlib.import_module``) are not seen: sidecar/_lazy.py uses them only inside a package.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Import", "Layers", "all_imports", "violations"]

Layers = Sequence[tuple[str, frozenset[str]]]


@dataclass(frozen=True)
class Import:
    """One import of one unit by another: where it is and what it says."""

    source: str
    target: str
    where: str
    text: str


def unit_of(module: str) -> str:
    """``sidecar.policy.engine`` -> ``policy``; ``sidecar.policy.settings`` ->
    ``policy.settings``; ``sidecar`` -> ``sidecar``."""
    parts = module.split(".")
    if len(parts) == 1:
        return parts[0]
    if len(parts) >= 3 and parts[2] == "settings":
        return f"{parts[1]}.settings"
    return parts[1]


def layer_of(unit: str, layers: Layers) -> int:
    """The rank (0: bottom) of ``unit``; ``LookupError`` when no layer holds it."""
    for rank, (_, units) in enumerate(layers):
        if unit in units:
            return rank
        if unit.endswith(".settings") and "*.settings" in units:
            return rank
        if unit.endswith("_settings") and "*_settings" in units:
            return rank
    raise LookupError(unit)


class _Tree:
    """A source tree: ``root`` holds the top-level package (``root/sidecar``)."""

    def __init__(self, root: Path, package: str) -> None:
        self.root = root
        self.package = package

    def module_name(self, path: Path) -> tuple[list[str], bool]:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        return (parts[:-1] if is_package else parts), is_package

    def is_module(self, name: str) -> bool:
        path = self.root.joinpath(*name.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    def imported_modules(self, path: Path) -> list[tuple[str, ast.stmt]]:
        """Every module of the package ``path`` imports, at any depth of its syntax tree,
        resolved to its full name."""
        parts, is_package = self.module_name(path)
        found: list[tuple[str, ast.stmt]] = []
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = parts if is_package else parts[:-1]
                    base = package[: len(package) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                names = [module]
                names += [
                    f"{module}.{a.name}" for a in node.names if self.is_module(f"{module}.{a.name}")
                ]
            mine = [n for n in names if n == self.package or n.startswith(f"{self.package}.")]
            found += [(name, node) for name in mine]
        return found

    def imports_in(self, path: Path, source: str | None = None) -> list[Import]:
        """Every import of another unit in ``path`` (as ``source``, default its own unit)."""
        parts, _ = self.module_name(path)
        source = source or unit_of(".".join(parts))
        found: list[Import] = []
        for name, node in self.imported_modules(path):
            target = unit_of(name)
            if target != source:
                where = f"{path.relative_to(self.root)}:{node.lineno}"
                found.append(Import(source, target, where, ast.unparse(node)))
        return found


def all_imports(root: Path, package: str = "sidecar") -> list[Import]:
    """Every cross-unit import in ``root/package`` (generated gRPC code aside)."""
    tree = _Tree(root, package)
    found: list[Import] = []
    for path in sorted((root / package).rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        found.extend(tree.imports_in(path))
        if path.name == "__init__.py" and (path.parent / "settings.py").is_file():
            found.extend(tree.imports_in(path, source=f"{path.parent.name}.settings"))
    return found


def violations(
    found: Sequence[Import], layers: Layers, allowed_pairs: frozenset[frozenset[str]]
) -> list[str]:
    """Each problem, naming the file, line and import: a unit in no layer, an import of a
    higher layer, two units importing each other, a longer cycle."""
    unknown = set()
    for imp in found:
        for unit in (imp.source, imp.target):
            try:
                layer_of(unit, layers)
            except LookupError:
                unknown.add(f"{imp.where}: `{imp.text}`: unit {unit!r} is in no layer")
    if unknown:
        return sorted(unknown)
    problems: list[str] = []
    edges: dict[str, dict[str, Import]] = {}
    for imp in found:
        edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
        low, high = layer_of(imp.source, layers), layer_of(imp.target, layers)
        if high > low and frozenset({imp.source, imp.target}) not in allowed_pairs:
            problems.append(
                f"{imp.where}: `{imp.text}`: {imp.source} ({layers[low][0]}) imports "
                f"{imp.target} ({layers[high][0]}), a higher layer"
            )
    for source, targets in sorted(edges.items()):
        for target, imp in sorted(targets.items()):
            back = edges.get(target, {}).get(source)
            if back is None or source > target or frozenset({source, target}) in allowed_pairs:
                continue
            problems.append(
                f"{source} and {target} import each other: {imp.where}: `{imp.text}` and "
                f"{back.where}: `{back.text}`"
            )
    kept = {
        source: {t: i for t, i in targets.items() if frozenset({source, t}) not in allowed_pairs}
        for source, targets in edges.items()
    }
    for component in _components(kept):
        if len(component) > 2:  # two: reported above as importing each other
            problems.append("import cycle among: " + ", ".join(component))
    return problems


def _components(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components
