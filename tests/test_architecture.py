"""The seams of the house, checked on the source: no circular imports between poolx's modules (at any level,
lazy imports inside functions included), and no module but `poolx.variants` and `poolx.providers` deciding by a
provider's or a precision's name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import poolx

SRC = Path(poolx.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the poolx modules it imports (a `from package import name` counts the submodule when `name` is
    one, else the package)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        type_only = {  # `if TYPE_CHECKING:` imports never run
            id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_no_circular_imports():
    graph = import_graph()
    assert len(graph) > 30 and "poolx.exporter.export" in graph["poolx.cli"] | set().union(*graph.values())
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package's __init__ that re-exports its own submodules is not a cycle of the code's layers
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") or c[0].startswith(m + ".") for m in c)]
    assert not cycles, "circular imports: " + "; ".join(" -> ".join(c) for c in cycles)


NAMES = r"(cpu|cuda|tensorrt|fp32|fp16|int8|CPUExecutionProvider|CUDAExecutionProvider|TensorrtExecutionProvider)"
COMPARISON = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']{NAMES}["']|["']{NAMES}["']\s*(==|!=)""")


def test_only_variants_and_providers_decide_by_name():
    """Adding a provider or a precision touches one file: nobody else compares their names."""
    allowed = {"variants.py", "providers.py"}
    found = []
    for path in SRC.rglob("*.py"):
        if path.name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if COMPARISON.search(line.split("#")[0]):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
