"""Imports point one way (README, "Architecture"): checked on the source, module-level imports only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("activities", "api", "models", "prognet", "prognet_dev", "relay", "webhooks", "workers", "workflows")
DRIVERS = ("sqlmodel", "sqlalchemy", "asyncpg", "redis", "stripe", "aiosmtplib", "httpx", "alembic")

# package → the packages of ours it may import at module level
ALLOWED = {
    "workflows": {"workflows", "models"},
    "activities": {"activities", "models", "prognet", "webhooks"},
    "models": {"models"},
    "prognet": {"prognet"},
    "api": {"api", "models", "prognet", "workflows", "webhooks"},
    "workers": {"workers", "workflows", "activities", "models", "prognet"},
    "relay": {"relay", "models", "prognet"},
    "webhooks": {"webhooks", "models", "prognet"},
    "prognet_dev": set(PACKAGES),
}


def module_level_imports(path: Path) -> set[str]:
    """Top-level names imported at module level (including inside `with` and `if` at the top, not in defs)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, (ast.With, ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return found


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = {
        str(path.relative_to(REPO)): sorted(ours)
        for path in sources(package)
        if (ours := (module_level_imports(path) & set(PACKAGES)) - ALLOWED[package])
    }
    assert wrong == {}


def test_workflows_import_no_driver():
    wrong = {
        str(path.relative_to(REPO)): sorted(drivers)
        for path in sources("workflows")
        if (drivers := module_level_imports(path) & set(DRIVERS))
    }
    assert wrong == {}
