#!/usr/bin/env bash
# Lint, no set-up: ruff check + ruff format --check on src and tests, then import-linter's layer
# contracts when pyproject.toml configures them ([tool.importlinter]). Uses $PY (ci/test.sh passes its
# venv's python) or else the python3 on PATH (tox -e lint). ci/test.sh runs it before pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
"$PY" -m ruff check src tests
"$PY" -m ruff format --check src tests
if grep -q '^\[tool\.importlinter\]' pyproject.toml; then
    echo "ci: lint-imports (contracts in pyproject.toml [tool.importlinter])"
    "$PY" -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())'
fi
