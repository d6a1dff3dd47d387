#!/usr/bin/env bash
# Device: the GPU gate three times, timed (run after stage2.sh has set up the environment).
#   1. cold quantization cache, --update-baselines: measures and writes the GPU entries
#   2. warm cache: the plain gate, exactly as a GPU runner calls it (ci/gpu.sh)
#   3. cache off: re-quantizes AWQ from scratch, so 1 vs 3 is the run-to-run noise of the whole pipeline
# Results go to $OUT: the rewritten baselines, logs, a timing table and the reports (one tarball).
set -uo pipefail
OUT=${OUT:?set OUT}
mkdir -p "$OUT" /tmp/reports
rm -rf "${PPLGATE_CACHE_DIR:?}"
run() {  # name, args...
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  bash ci/gpu.sh /tmp/reports/$name "$@" > /tmp/reports/$name.log 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%-8s rc=%s wall=%d.%03ds args=%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$*" | tee -a "$OUT/timings.txt"
  grep -E "^(\| |pplgate|FAILED|PASSED|ERROR|=+ .* =+$)" /tmp/reports/$name.log | tail -25
}
run cold --update-baselines
cp baselines/*.yaml "$OUT/"
run warm
run nocache --pplgate-cache off
tar czf "$OUT/reports.tgz" -C /tmp reports
