#!/usr/bin/env bash
# Run HERE (not on the device): stage what the GPU machine needs into two ignored carry folders,
# each under the device tool's 64 MiB upload limit:
#   .device/a : GGUF part0, wheels the device lacks, WikiText-2 parquet, tokenizers, calibration corpus
#   .device/b : GGUF part1
# Shared data is read from $PPLGATE_SHARED (default ../shared); nothing is committed.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SHARED=${PPLGATE_SHARED:-../shared}
rm -rf .device && mkdir -p .device/a/wheels .device/a/data .device/a/tokenizers .device/b
cp "$SHARED"/models/smollm2-135m-instruct-q4_1/*.part0 .device/a/
cp "$SHARED"/models/smollm2-135m-instruct-q4_1/*.part1 .device/b/
cp "$SHARED"/wheels/py312/*.whl .device/a/wheels/
cp "$SHARED"/data/wikitext-2-raw-v1/test-00000-of-00001.parquet .device/a/data/
cp "$SHARED"/data/calibration/python-3.11-docs-prose.jsonl .device/a/data/
cp -r "$SHARED"/tokenizers/llama2 "$SHARED"/tokenizers/gpt2 .device/a/tokenizers/
du -sh .device/a .device/b
