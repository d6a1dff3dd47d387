#!/usr/bin/env bash
# Run HERE (not on the device): stage what the GPU machine needs into two ignored carry folders,
# each under the device tool's 64 MiB upload limit:
#   .device/a : GGUF part0, wheels the device lacks, WikiText-2 parquet, tokenizers, calibration corpus
#   .device/b : GGUF part1, llm-compressor and its wheels the device lacks (stage2 installs them)
#   .device/c : matplotlib wheels (optional, for the PNG reports)
# Shared data is read from $PPLGATE_SHARED (default ../shared); nothing is committed.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SHARED=${PPLGATE_SHARED:-../shared}
rm -rf .device && mkdir -p .device/a/wheels .device/a/data .device/a/tokenizers .device/b .device/c
cp "$SHARED"/models/smollm2-135m-instruct-q4_1/*.part0 .device/a/
cp "$SHARED"/models/smollm2-135m-instruct-q4_1/*.part1 .device/b/
cp "$SHARED"/wheels/py312/*.whl .device/a/wheels/
cp "$SHARED"/data/wikitext-2-raw-v1/test-00000-of-00001.parquet .device/a/data/
cp "$SHARED"/data/calibration/python-3.11-docs-prose.jsonl .device/a/data/
cp -r "$SHARED"/tokenizers/llama2 .device/a/tokenizers/
# from PyPI, for the device's Python 3.12: ruamel.yaml (required by the gate) into a,
# matplotlib and its compiled deps (optional: PNG reports) into c
PIPDL="python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
$PIPDL -d .device/a/wheels ruamel.yaml==0.19.1
# llm-compressor (kinds gptq, llmc-recipe, hf-checkpoint): the versions of ci/constraints-cpu.txt
mkdir -p .device/b/wheels
$PIPDL -d .device/b/wheels llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru==0.7.3 auto-round==0.15.1 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 nvidia-ml-py==13.615.71 \
  py-cpuinfo==9.0.0
$PIPDL -d .device/c matplotlib==3.11.2 kiwisolver contourpy cycler fonttools pyparsing
du -sh .device/a .device/b .device/c
for d in a b; do
  [ "$(du -sm .device/$d | cut -f1)" -lt 63 ] || { echo "stage: .device/$d is over the 64 MiB upload limit" >&2; exit 1; }
done
