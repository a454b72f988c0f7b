"""The package layout holds: no import cycles, each package imports only the layers below it, and each
boundary library has one owner (DESIGN.md section 3 and section 7.1).

Every import counts, also one inside a function or under TYPE_CHECKING: a cycle hidden behind a
function-level import is still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "nativellm"

# Lower layers first; a module may import its own layer and those before it, never one after it.
LAYERS = ("foundation", "hardware", "build", "models", "mlx", "serve", "ops", "cli")
FOUNDATION = {
    "__init__",
    "errors",
    "run",
    "paths",
    "fsutil",
    "progress",
    "versions",
    "download",
    "specs",
    "validate",
    "client",
}

# Third-party boundaries and the modules allowed to import them.
OWNERS = {
    "subprocess": {"nativellm.run"},
    "pystemd": {"nativellm.serve.systemd"},
    "typer": {"nativellm.cli.*"},
    "click": {"nativellm.cli.*"},
    "rich": {"nativellm.cli.*"},
    "httpx": {"nativellm.client", "nativellm.download", "nativellm.models.hf", "nativellm.ops.loadgen"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "foundation"
    if parts[1] == "__main__":
        return "cli"
    if parts[1] in FOUNDATION:
        return "foundation"
    return parts[1]


def imports_of(path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file; `from pkg import mod` resolves to the module."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield (sub if sub in known else node.module), node.lineno


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    known = set(files)
    return {
        mod: {imp for imp, _ in imports_of(path, known) if imp in known and imp != mod}
        for mod, path in files.items()
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between packages (a foundation module counts as its own package)."""

    def pkg(m: str) -> str:
        return m if layer_of(m) == "foundation" else ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for a, targets in edges.items():
        for b in targets:
            if pkg(a) != pkg(b) and not (pkg(b) == "nativellm" and layer_of(a) != "foundation"):
                out.setdefault(pkg(a), set()).add(pkg(b))
    return out


def test_the_domain_packages_exist() -> None:
    for package in LAYERS[1:]:
        assert (PKG / package / "__init__.py").is_file(), f"nativellm.{package} is missing"
    flat = {p.stem for p in PKG.glob("*.py")}
    assert flat <= FOUNDATION | {"__main__"}, f"modules outside a domain package: {sorted(flat - FOUNDATION)}"


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_packages() -> None:
    cycle = find_cycle(package_edges(graph()))
    assert cycle is None, "package import cycle: " + " -> ".join(cycle or [])


def test_each_package_imports_only_layers_below_it() -> None:
    bad = [
        f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
        for a, targets in graph().items()
        for b in targets
        if LAYERS.index(layer_of(b)) > LAYERS.index(layer_of(a))
    ]
    assert not bad, "layering violations:\n" + "\n".join(sorted(bad))


def _owned_by(module: str, owners: set[str]) -> bool:
    return any(module == o or (o.endswith(".*") and module.startswith(o[:-1])) for o in owners)


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_boundary_library_has_its_owners_only(library: str) -> None:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    bad = [
        f"{path.relative_to(SRC)}:{line} imports {imp}"
        for mod, path in files.items()
        for imp, line in imports_of(path, set(files))
        if imp.split(".")[0] == library and not _owned_by(mod, OWNERS[library])
    ]
    assert not bad, f"{library} outside {sorted(OWNERS[library])}:\n" + "\n".join(bad)


# The checks themselves must be able to fail.
def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_a_function_level_import_counts(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from nativellm.cli import app\n")
    assert ("nativellm.cli.app", 2) in set(imports_of(f, {"nativellm.cli.app"}))
