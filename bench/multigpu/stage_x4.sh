#!/usr/bin/env bash
# Run HERE: stage .device/s for bench/multigpu/device_x4.sh (tokenizer, WikiText-2 parquet, wheels; < 64 MiB).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SHARED=${PPLGATE_SHARED:-../shared}
rm -rf .device/s && mkdir -p .device/s/wheels
cp -r "$SHARED"/tokenizers/llama2 .device/s/
cp "$SHARED"/data/wikitext-2-raw-v1/test-00000-of-00001.parquet .device/s/
cp "$SHARED"/wheels/py312/*.whl .device/s/wheels/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .device/s/wheels ruamel.yaml==0.19.1
# the previous version's src, for same-machine comparisons (device_x4.sh step O)
OLD_REV=${OLD_REV:-45c5c2b}
rm -rf .device/old && mkdir -p .device/old && git archive "$OLD_REV" src | tar x -C .device/old && echo "$OLD_REV" > .device/old/REV
du -sh .device/s .device/old
