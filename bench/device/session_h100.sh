#!/usr/bin/env bash
# One lent H100, after stage2.sh set up the environment: the GPU measurements of issues 11-13, by step.
#   llmc    : ci/gpu.sh cold with --update-baselines (every GPU entry; gptq and llm-compressor AWQ quantize,
#             the compressed-tensors directory is measured), then warm (loaded from the cache)
#   nocache : the llm-compressor entries re-quantized from scratch, in memory (run-to-run spread + round trip)
#   kld     : bench/bench_kld.py, every quantized variant vs fp16 over all 148 windows (uses the cache)
#   speed   : bench/gate_speed.py, the three original GPU entries cold and warm, main's code (.device/old/src,
#             carried) vs this checkout, interleaved on this machine
# Results under $OUT; the baseline file the cold run rewrote is copied there.
set -uo pipefail
OUT=${OUT:?set OUT}
mkdir -p "$OUT/llmc"
gate() {  # name, args...
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  bash ci/gpu.sh "$OUT/llmc/$name" "$@" > "$OUT/llmc/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%-9s rc=%s wall=%d.%03ds args=%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$*" | tee -a "$OUT/llmc-timings.txt"
  grep -E "^(\| |FAILED|PASSED|ERROR|=+ .* =+$)|^[a-z0-9-]+ +[a-z0-9-]+ +[0-9]" "$OUT/llmc/$name.log" | tail -14
}
CAL=$PPLGATE_CALIBRATION
for s in "$@"; do
  echo "== $s ($(date +%T))"
  case $s in
    llmc) rm -rf "${PPLGATE_CACHE_DIR:?}"
          gate cold --update-baselines; cp baselines/smollm2-135m-instruct.yaml "$OUT/smollm2-135m-instruct.gpu-cold.yaml"
          gate warm ;;
    nocache) gate nocache1 --pplgate-cache off -k "gptq or llmc" ;;
    nocache2) gate nocache2 --pplgate-cache off -k "gptq or llmc" ;;
    kld) G='{"targets":["Linear"],"weights":{"num_bits":4,"type":"int","strategy":"group","group_size":64,"symmetric":false}}'
         python3 bench/bench_kld.py --device cuda --batch-size 16 --reps 2 --out "$OUT/kld-h100.json" \
           --variant rtn:w_bit=4,q_group_size=64,zero_point=true \
           --variant "awq:{\"w_bit\":4,\"q_group_size\":64,\"zero_point\":true,\"version\":\"gemm\",\"calibration\":{\"source\":\"$CAL\",\"n_samples\":128,\"seqlen\":512}}" \
           --variant "gptq:{\"w_bit\":4,\"q_group_size\":64,\"sym\":false,\"dampening_frac\":1.0,\"quant_dtype\":\"fp32\",\"calibration\":{\"source\":\"$CAL\",\"n_samples\":128,\"seqlen\":512}}" \
           --variant "llmc-recipe:{\"recipe\":[{\"AWQModifier\":{}},{\"QuantizationModifier\":{\"targets\":[\"Linear\"],\"ignore\":[\"lm_head\"],\"config_groups\":{\"group_0\":$G}}}],\"quant_dtype\":\"fp32\",\"calibration\":{\"source\":\"$CAL\",\"n_samples\":128,\"seqlen\":512}}" \
           2>&1 | tail -40 ;;
    speed) git checkout -- baselines 2>/dev/null
           python3 - <<'PY'
# the speed comparison gates the three entries both versions know: drop the new ones from this copy
import re
p = "baselines/smollm2-135m-instruct.yaml"
s = open(p).read()
i = s.find("      # GPTQ through llm-compressor, its default recipe")
open(p, "w").write(s if i < 0 else s[:i])
PY
           python3 bench/gate_speed.py "$OUT/gate-speed-h100.json" --marker gpu --warm 2 --work-dir /tmp/gs \
             --src main=$PWD/.device/old/src --src new=$PWD/src 2>&1 | tail -30 ;;
  esac
done
echo "== done ($(date +%T))"
