#!/usr/bin/env bash
# One lent H100, after stage2.sh set up the environment: the GPU measurements of issues 11-13, by step.
#   llmc    : ci/gpu.sh cold with --update-baselines (every GPU entry; gptq and llm-compressor AWQ quantize,
#             the compressed-tensors directory is measured), then warm (loaded from the cache)
#   nocache : the llm-compressor entries re-quantized from scratch, in memory (run-to-run spread + round trip)
#   kld     : bench/bench_kld.py, every quantized variant vs fp16 over all 148 windows (uses the cache)
#   speed   : bench/gate_speed.py, the three original GPU entries cold and warm, main's code (.device/old/src,
#             carried) vs this checkout, interleaved on this machine
#   cigpu     : ci/gpu.sh end to end on the three original entries (with their KLD rules), cold then warm twice
#   pyc       : is the image's bytecode written and read (import times with and without PYTHONPYCACHEPREFIX)
#   kldrec    : cold cache, every GPU entry but fp16 re-recorded with its reference (--update-baselines
#               --force-update): KLD / top-1 vs fp16 and the speed rule; the rewritten file is copied to $OUT
#   kldwarm   : the same gate, warm (from the caches), no update: every rule must pass
#   kldnocache: the same gate with the cache off (every quantization again, in memory): run-to-run spread
#   speed3    : bench/gate_speed.py on the three original entries (bench/device/original_entries.py of the
#               file as committed), the previous version (.device/old/src, carried: git archive 7c6fdef src) vs this checkout, cold + 2 warm
#   eager7b   : bench/bench_gpu.py, the 7B-shape fp16 model (random weights): pplgate vs AutoAWQ's loop
#   profile   : cProfile of one warm gate run (top functions by cumulative time)
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
BASE=baselines/smollm2-135m-instruct.yaml
PRISTINE=/root/pplgate/pristine.yaml  # the file as committed, kept across calls while the machine is warm
[ -f $PRISTINE ] || cp $BASE $PRISTINE
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
    cigpu) rm -rf "${PPLGATE_CACHE_DIR:?}"
           for run in cold warm1 warm2; do
             gate "cigpu-$run" -k "gpu-fp16 or gpu-rtn-w4g64 or gpu-awq-w4g64"
           done ;;
    pyc) python3 -c "import sys, os, transformers; d = os.path.dirname(transformers.__file__); print('dont_write_bytecode', sys.dont_write_bytecode, 'writable', os.access(d, os.W_OK), 'pycache present', os.path.isdir(os.path.join(d, '__pycache__')))"
         for prefix in "" "$PYTHONPYCACHEPREFIX" "$PYTHONPYCACHEPREFIX"; do
           t0=$(date +%s%N); env PYTHONPYCACHEPREFIX="$prefix" python3 -c "import torch, transformers, transformers.modeling_utils"
           echo "import torch+transformers (PYTHONPYCACHEPREFIX='$prefix'): $(( ($(date +%s%N) - t0) / 1000000 )) ms"
         done ;;
    kldrec) rm -rf "${PPLGATE_CACHE_DIR:?}"
            gate kldrec --update-baselines --force-update -k "not gpu-fp16"
            cp $BASE "$OUT/smollm2-135m-instruct.gpu-kldrec.yaml"; cp $BASE /root/pplgate/kldrec.yaml ;;
    kldwarm) gate kldwarm ;;
    kldnocache) gate kldnocache --pplgate-cache off ;;
    speed3) [ -f /root/pplgate/kldrec.yaml ] || cp $BASE /root/pplgate/kldrec.yaml
            python3 bench/device/original_entries.py $PRISTINE $BASE
            python3 bench/gate_speed.py "$OUT/gate-speed3-h100.json" --marker gpu --warm 2 --work-dir /tmp/gs3 \
              --src old=$PWD/.device/old/src --src new=$PWD/src 2>&1 | tail -30
            cp /root/pplgate/kldrec.yaml $BASE ;;
    eager7b) python3 bench/bench_gpu.py --dataset "$PPLGATE_WIKITEXT" --llama-tokenizer "$PPLGATE_SHARED_TOKENIZERS/llama2" \
               --cases llama2-7b-shape-fp16 --batch-sizes-7b 4 --reps 2 --out "$OUT/eager7b" 2>&1 | tail -15 ;;
    profile) python3 -m cProfile -o "$OUT/gate-warm.prof" -m pytest -m gpu baselines -p no:cacheprovider -q \
               > "$OUT/profile-gate.log" 2>&1; tail -3 "$OUT/profile-gate.log"
             python3 -c "import pstats,sys; pstats.Stats(sys.argv[1], stream=open(sys.argv[2],'w')).sort_stats('cumulative').print_stats(80)" \
               "$OUT/gate-warm.prof" "$OUT/gate-warm-profile.txt"; head -c 3000 "$OUT/gate-warm-profile.txt" | tail -c 2000 ;;
  esac
done
echo "== done ($(date +%T))"
