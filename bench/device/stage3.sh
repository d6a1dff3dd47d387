#!/usr/bin/env bash
# Optional device call (carry .device/c) while the machine is warm: install matplotlib for the PNG
# reports, then run "$@".
set -euo pipefail
D=/root/pplgate
python3 -c "import matplotlib" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $D/site .device/c/*.whl
source bench/device/env.sh
"$@"
