#!/usr/bin/env bash
# Device call 1 (carry .device/a): keep its files outside the repo, where they survive while the
# machine stays warm, install the wheels the image lacks. Then run "$@" if given.
set -euo pipefail
D=/root/pplgate
mkdir -p $D/site
cp .device/a/*.part0 $D/
cp -r .device/a/data .device/a/tokenizers $D/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $D/site .device/a/wheels/*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
echo "stage1 ok: $(ls $D)"
if [ $# -gt 0 ]; then source bench/device/env.sh; "$@"; fi
