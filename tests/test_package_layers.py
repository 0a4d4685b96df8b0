"""The layering the design promises, checked on the source: bert_core is plain PyTorch and Python, the MLflow
side (tracking) knows no Prefect, tasks never reach up into flows, only tracking calls MLflow; and a family's
knowledge lives in its family object, so no module outside bert_core/families branches on a family's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bert_core.families import FAMILIES
from tests.conftest import REPO_ROOT

# package -> top-level modules it must never import
# (launcher/ sits above them all: it only restarts the process and hands over to flows or bert_core)
FORBIDDEN = {
    "bert_core": {"prefect", "mlflow", "optuna", "tasks", "tracking", "flows", "launcher"},
    "tracking": {"prefect", "tasks", "flows", "launcher"},
    "tasks": {"mlflow", "flows", "launcher"},
    "flows": {"mlflow", "launcher"},
}


def python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_above_it(package):
    offenders = {str(p.relative_to(REPO_ROOT)): sorted(imported_roots(p) & FORBIDDEN[package])
                 for p in python_files(package)}
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_families_name_the_families():
    """A family name as a string literal outside bert_core/families is a branch on it (or a table of it)."""
    names = set(FAMILIES)
    found = []
    for package in ("bert_core", "tasks", "tracking", "flows"):
        for path in python_files(package):
            if path.parent.name == "families":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found
