"""The shape the design promises a newcomer, checked on the source: no function outside bench/ is longer than
80 lines (one that is has several jobs, and its pieces want names)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

MAX_FUNCTION_LINES = 80
CHECKED = ("bert_core", "tasks", "tracking", "flows", "launcher", "tests")


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_is_longer_than_80_lines():
    too_long = [f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                for package in CHECKED for path in sorted((REPO_ROOT / package).rglob("*.py"))
                for node in functions(path) if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not too_long, too_long


def test_the_check_sees_the_packages():
    """Guards the test above against checking nothing (a renamed package, a wrong root)."""
    counted = sum(1 for package in CHECKED for path in (REPO_ROOT / package).rglob("*.py") for _ in functions(path))
    assert counted > 500
