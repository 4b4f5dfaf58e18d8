"""No module of autoctx imports from a higher layer (README "How it is built").

Every import, module-level or inside a function, is read with ast; `if TYPE_CHECKING:` blocks (annotations only)
are skipped. A module may import from its own layer or any lower one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autoctx"

# lowest first; a module belongs to the first entry whose prefix names it (or a package above it)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "units", "__init__")),
    ("gguf", ("gguf",)),
    ("model", ("model", "quant_policy")),
    ("memory", ("memory", "extras", "catalog")),
    ("probe", ("probe",)),
    ("planner", ("planner", "verify", "profiles")),
    ("runtimes", ("runtimes", "resolve", "budgets")),
    ("loop", ("loop", "bench")),
    ("front", ("report", "options", "commands", "cli")),
]


def layer_of(module: str) -> int:
    """The layer index of `module` (dotted, without the `autoctx.` prefix)."""
    top = module.split(".")
    for i, (_, names) in enumerate(LAYERS):
        if top[0] in names:
            return i
    raise AssertionError(f"autoctx.{module} is in no layer: add it to tests/test_layers.py LAYERS")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported autoctx module without the prefix) for every import outside `if TYPE_CHECKING:`."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            elif (node.module or "").startswith("autoctx"):
                names = [node.module.removeprefix("autoctx").lstrip(".")]
            else:
                names = []
            found.extend((node.lineno, n) for n in names if n)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name.removeprefix("autoctx.")) for a in node.names
                         if a.name.startswith("autoctx."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for module, path in _modules().items():
        mine = layer_of(module)
        for line, target in imports_of(module, path):
            theirs = layer_of(target)
            if theirs > mine:
                wrong.append(f"autoctx/{path.relative_to(PACKAGE)}:{line}: {module} ({LAYERS[mine][0]}) imports "
                             f"{target} ({LAYERS[theirs][0]})")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer():
    for module in _modules():
        layer_of(module)


@pytest.mark.parametrize("source, offending", [
    ("from .runtimes.llamacpp.args import to_server_args\n", "runtimes.llamacpp.args"),
    ("def f():\n    from .loop import closed_loop\n", "loop"),
])
def test_a_lower_module_importing_a_higher_one_is_caught(tmp_path, source, offending):
    path = tmp_path / "planner.py"
    path.write_text(source)
    (line, target), = imports_of("planner", path)
    assert target == offending and layer_of(target) > layer_of("planner")


def test_annotations_only_imports_are_not_counted(tmp_path):
    path = tmp_path / "verify.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .runtimes.llamacpp.logparse import "
                    "ServerLog\n")
    assert imports_of("verify", path) == []
