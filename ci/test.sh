#!/usr/bin/env bash
# Set up (see ci/setup.sh), lint, and run the test-suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
"$PY" -m ruff check src tests
"$PY" -m ruff format --check src tests
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "ci: pytest collected no tests: failing" >&2
    exit 1
fi
exit $rc
