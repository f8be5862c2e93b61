"""The package's own shape: no import circle, science apart from the machinery, small files.

Read with ``ast`` from the source (nothing is imported), so a violation names the file and line:

- no import circle between the modules of ``glio_kit`` (imports inside functions count too;
  those under ``if TYPE_CHECKING:`` do not, as they never run);
- nothing in the science packages (``data``, ``gan``, ``detect``, ``evaluate``, ``figures``,
  ``exercises``) imports ``glio_kit.run`` except its settings, ``glio_kit.run.config``;
- no module over 400 lines;
- no function over 80 lines unless a comment in its first lines says why it is long: a line
  starting with ``# long:`` within the first five lines of its body.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "glio_kit"
SCIENCE = ("data", "gan", "detect", "evaluate", "figures", "exercises")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_nodes(tree):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                todo += child.orelse
                continue
            todo.append(child)


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """``(imported glio_kit module, line)`` for every import in the file, relative ones resolved."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[:len(base) - node.level + 1]
                mod = ".".join(root + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from . import x" / "from .pkg import mod": the names may be modules themselves
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out += [(t, node.lineno) for t in targets if t.split(".")[0] == "glio_kit" and t in known]
    return out


def import_graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, list[tuple[str, int]]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None.

    A package's ``__init__`` importing its own submodules is not a circle of two files, so the
    edge from a submodule to its parent package is left out.
    """
    edges = {m: sorted({t for t, _ in deps if t != m and not m.startswith(t + ".")})
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, ()):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in edges:
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_a_circle_is_found():
    # the finder itself: a made-up graph with a circle of three, and one without
    g = {"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)]}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert find_cycle({"a": [("b", 1)], "b": [("c", 1)], "c": []}) is None


def test_science_imports_nothing_of_run_but_settings():
    bad = []
    for name, deps in import_graph().items():
        if name.split(".")[1:2] and name.split(".")[1] in SCIENCE:
            bad += [f"{modules()[name].relative_to(PACKAGE.parent)}:{line} imports {t}"
                    for t, line in deps if (t == "glio_kit.run" or t.startswith("glio_kit.run."))
                    and t != "glio_kit.run.config"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_at_most_400_lines(name):
    n = len(modules()[name].read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{modules()[name]}: {n} lines; split it (one job per file)"


def long_functions(path: Path) -> list[str]:
    src = path.read_text()
    lines = src.splitlines()
    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            first = node.body[0]  # the docstring, when there is one
            body_start = first.end_lineno if isinstance(first, ast.Expr) else first.lineno - 1
            head = lines[body_start:body_start + 5]
            if n > MAX_FUNCTION_LINES and not any(h.strip().startswith("# long:") for h in head):
                out.append(f"{path}:{node.lineno} {node.name}: {n} lines")
    return out


def test_no_long_function_without_a_reason():
    bad = [f for p in modules().values() for f in long_functions(p)]
    assert not bad, "\n".join(bad)
