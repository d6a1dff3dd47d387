#!/usr/bin/env bash
# Device call 2 (carry .device/b), made right after call 1: join the GGUF, verify it, then run "$@".
set -euo pipefail
D=/root/pplgate
GGUF=$D/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f $GGUF ]; then
  [ -f $D/SmolLM2-135M-Instruct.Q4_1.gguf.part0 ] || { echo "part0 missing: the machine went cold; run stage1 again" >&2; exit 3; }
  cat $D/SmolLM2-135M-Instruct.Q4_1.gguf.part0 .device/b/SmolLM2-135M-Instruct.Q4_1.gguf.part1 > $GGUF.tmp
  mv $GGUF.tmp $GGUF
fi
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $GGUF" | sha256sum -c -
if ls .device/b/wheels/*.whl >/dev/null 2>&1 && [ ! -f $D/site/llmcompressor/__init__.py ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $D/site .device/b/wheels/*.whl
fi
source bench/device/env.sh
"$@"
