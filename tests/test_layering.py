"""The package's layering (issue "architecture"): the public surface is budgetkit/__init__.py
(and budgetkit.sync, .metering, .export, .webhooks, .integrations, the CLI); the internals live in
budgetkit._core, which depends on no outer module; no module imports a private name
(``_x``) of another package or module of budgetkit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import budgetkit as bk

PACKAGE = Path(bk.__file__).resolve().parent
OUTER = (
    "budgetkit.sync",
    "budgetkit.metering",
    "budgetkit.export",
    "budgetkit.webhooks",
    "budgetkit.cli",
    "budgetkit.integrations",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of every import of ``path`` (name None for ``import module``)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def test_the_modules_were_found() -> None:
    assert "budgetkit._core.client" in MODULES and "budgetkit.cli.commands" in MODULES


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("budgetkit._core")))
def test_core_depends_on_no_outer_module(name: str) -> None:
    for module, _ in imports(MODULES[name]):
        assert not module.startswith(OUTER), (name, module)
        assert module != "budgetkit", f"{name} imports the public package (a cycle)"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_of_another_module_is_imported(name: str) -> None:
    own_package = name.rsplit(".", 1)[0]
    for module, imported in imports(MODULES[name]):
        if not module.startswith("budgetkit"):
            continue
        inside = module in (name, own_package) or module.startswith(own_package + ".")
        private_parts = [p for p in module.split(".")[1:] if p.startswith("_") and p != "_core"]
        assert inside or not private_parts, (name, module)
        dunder = imported is not None and imported.startswith("__")
        if imported is not None and imported.startswith("_") and not dunder and not inside:
            pytest.fail(f"{name} imports the private name {imported} of {module}")


def test_the_public_api_is_one_file() -> None:
    """Every public name is importable from budgetkit itself and is documented."""
    for name in bk.__all__:
        obj = getattr(bk, name)
        if callable(obj) and not isinstance(obj, type(bk.UNSET)):
            assert (obj.__doc__ or "").strip(), f"budgetkit.{name} has no docstring"
