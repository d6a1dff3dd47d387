#!/usr/bin/env bash
# Set up (ci/setup.sh: a venv, skipped when up to date) and measure the embedded SmolLM2-135M on the
# first 2 canonical windows. Expect a line with `ppl=18.8375` and `2/148 windows`.
# Extra arguments go to `pplgate eval` (e.g. --max-windows 148 for the full run, --json out.json).
set -euo pipefail
# shellcheck source=ci/setup.sh
source "$(dirname "$0")/setup.sh"
exec "$PY" -m pplgate.cli eval --dtype fp32 --device cpu --max-windows 2 "$@"
