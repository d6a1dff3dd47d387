#!/usr/bin/env bash
# The README's test command: set-up once (ci/setup.sh: a venv, skipped when up to date), lint
# (ci/lint.sh: ruff, and import-linter contracts when configured), then the test-suite.
# Extra arguments go to pytest. pytest's "no tests collected" (exit 5) counts as a failure.
set -euo pipefail
# shellcheck source=ci/setup.sh
source "$(dirname "$0")/setup.sh"
PY="$PY" bash ci/lint.sh
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "ci: pytest collected no tests: failing" >&2
    exit 1
fi
exit $rc
