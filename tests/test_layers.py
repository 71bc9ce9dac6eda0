"""Layers point down: the runtime never imports a verb, the CLI or the bench/check/train packages, and no modules
import each other in a cycle. Read from the source with ast (imports inside functions count too), nothing imported."""
from __future__ import annotations

import ast
from pathlib import Path

from pyorthrus.cli import VERBS

ROOT = Path(__file__).resolve().parent.parent

# The runtime: what `from pyorthrus import Orthrus`, the PyTorch reference and the build's source need. Each may
# import the others; none may import anything else of pyorthrus (a verb, pyorthrus.cli, pyorthrus.cli_options, the
# bench/check/train/convert/testing packages).
RUNTIME = {f"pyorthrus.{name}" for name in (
    "_lib", "assets", "auto", "completions", "engine", "errors", "files", "formats", "gguf_meta", "llama_source",
    "llama_defaults", "model", "options", "pass_costs", "paths", "profiles", "prompts", "qwen35_layout", "reference",
    "reference_qwen35", "sampling", "stats", "streaming", "strict")} \
    | {"pyorthrus"}


def modules() -> dict[str, Path]:
    """Module name -> file, for pyorthrus/ and convert/ (installed as pyorthrus.convert)."""
    found = {}
    for folder, package in ((ROOT / "pyorthrus", "pyorthrus"), (ROOT / "convert", "pyorthrus.convert")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            found[".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The pyorthrus modules `name` imports anywhere in its file. `from P import a` counts as importing P.a where
    that is a module, else P; a module's own packages are left out (Python initialises them first anyway)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
            found |= submodules if len(submodules) == len(node.names) else submodules | {base}
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_runtime_modules_exist_and_are_no_verbs():
    graph = import_graph()
    assert RUNTIME <= set(graph), sorted(RUNTIME - set(graph))
    assert not RUNTIME & {module for module, _ in VERBS.values()}


def test_runtime_imports_only_the_runtime():
    graph = import_graph()
    upward = {name: sorted(graph[name] - RUNTIME) for name in sorted(RUNTIME) if graph[name] - RUNTIME}
    assert upward == {}, f"runtime modules importing verbs, the CLI or bench/check/train/convert: {upward}"


def test_no_import_cycles():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == [], f"modules importing each other: {cycles}"
