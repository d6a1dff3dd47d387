"""The package's shape: no module over the size limit, and the hooks hand off (the plugin stays thin)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pplgate"
MAX_MODULE_LINES = 400
MAX_HOOK_STATEMENTS = 5


@pytest.mark.parametrize("module", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_the_limit(module: Path) -> None:
    n = len(module.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{module.relative_to(SRC)} has {n} lines (limit {MAX_MODULE_LINES}): split it"


def test_hooks_hand_off_in_a_few_statements() -> None:
    tree = ast.parse((SRC / "pytest_plugin" / "hooks.py").read_text(encoding="utf-8"))
    hooks = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("pytest_")]
    assert len(hooks) >= 10
    for hook in hooks:
        body = [s for s in hook.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        assert len(body) <= MAX_HOOK_STATEMENTS, f"{hook.name} has {len(body)} statements: hand off to the session"
