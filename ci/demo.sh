#!/usr/bin/env bash
# Set up (see ci/setup.sh) and measure the embedded SmolLM2-135M on the first 2 canonical windows.
# Extra arguments go to `pplgate eval` (e.g. --max-windows 148 for the full run, --json out.json).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec "$PY" -m pplgate.cli eval --dtype fp32 --device cpu --max-windows 2 "$@"
