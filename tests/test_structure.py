"""The shape the code keeps: short functions, test peers outside the wheel, and `outbox api`
serving the app through an import string (tasks/ never imports api/)."""

from __future__ import annotations

import ast
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from uvicorn.importer import import_from_string

from api.app import app_from_environment
from tasks.cli.processes import API_APP

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("config", "worker", "tasks", "api")
# About 50 lines, decorators and docstring included; ruff's PLR0915 counts statements.
MOST_LINES = 55


def function_lengths(package: str) -> dict[str, int]:
    lengths: dict[str, int] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                assert node.end_lineno is not None
                name = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                lengths[name] = node.end_lineno - first + 1
    return lengths


def test_no_production_function_is_longer_than_about_fifty_lines() -> None:
    lengths = {name: n for package in PRODUCTION for name, n in function_lengths(package).items()}
    assert len(lengths) > 500  # the walk found the code
    assert {name: n for name, n in lengths.items() if n > MOST_LINES} == {}


def wheel_packages() -> set[str]:
    """The packages setuptools puts in the wheel: every folder with an ``__init__.py`` that
    ``[tool.setuptools.packages.find] include`` matches (its patterns are globs)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = [top for top in ROOT.iterdir() if top.is_dir() and not top.name.startswith(".")]
    names = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in tops
        for init in top.rglob("__init__.py")
    }
    return {name for name in names if any(fnmatch(name, pattern) for pattern in include)}


def test_the_wheel_holds_the_production_packages_and_not_the_test_peers() -> None:
    packages = wheel_packages()
    assert set(PRODUCTION) <= packages
    assert "worker.transports.smtp" in packages
    assert "worker.transports.graph" in packages
    assert not {p for p in packages if p.split(".")[0] in ("peers", "tests", "bench")}


def test_outbox_api_hands_uvicorn_an_import_string_of_the_app_factory() -> None:
    assert import_from_string(API_APP) is app_from_environment
