#!/usr/bin/env bash
# Device (after stage2.sh set up the environment): the GPU entries of the llm-compressor kinds.
#   1. cold cache, --update-baselines: quantize GPTQ and llm-compressor AWQ, measure the in-memory models
#      (every GPU entry runs, so the relational rules see rtn-w4g64 of the same session)
#   2. warm: the same entries loaded from the cache's compressed-tensors directories (save -> load round trip)
#   3, 4. cache off, twice: re-quantize from scratch (run-to-run spread of quantization + evaluation)
# Writes $OUT/llmc-timings.txt, the rewritten baseline file, and the JSON reports of every run.
set -uo pipefail
OUT=${OUT:?set OUT}
mkdir -p "$OUT/llmc"
rm -rf "${PPLGATE_CACHE_DIR:?}"
run() {  # name, args...
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  bash ci/gpu.sh "$OUT/llmc/$name" "$@" > "$OUT/llmc/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%-9s rc=%s wall=%d.%03ds args=%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$*" | tee -a "$OUT/llmc-timings.txt"
  grep -E "^(\| |FAILED|PASSED|ERROR|=+ .* =+$)" "$OUT/llmc/$name.log" | tail -12
}
run cold --update-baselines
cp baselines/smollm2-135m-instruct.yaml "$OUT/llmc/smollm2-135m-instruct.after-cold.yaml"
git checkout -- baselines 2>/dev/null || true
run warm -k "gptq or llmc or rtn"
run nocache1 --pplgate-cache off -k "gptq or llmc or rtn"
run nocache2 --pplgate-cache off -k "gptq or llmc or rtn"
