#!/usr/bin/env bash
# Multi-GPU gate measurements (issue 6). Needs CUDA; pplgate importable; PPLGATE_WIKITEXT set.
#   bench/multigpu/run.sh OUT_DIR TOKENIZER_DIR [N_MODELS] [SIZE]
# 1. builds N random-weight Llama models with one baseline file each and records them (1 process),
# 2. times the gate on 1 GPU (-n 1) and on every visible GPU (-n <gpus>), one xdist worker per GPU,
#    --dist loadgroup (all variants of a model on one worker),
# 3. compares the PPL of SmolLM2 on one GPU with the same model split across all GPUs (device_map).
set -uo pipefail
OUT=${1:?OUT_DIR}; TOK=${2:?TOKENIZER_DIR}; NM=${3:-4}; SIZE=${4:-1b}
mkdir -p "$OUT"; W=/tmp/pplgate-multigpu; rm -rf "$W"
NG=$(python3 -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $NG" | tee "$OUT/multigpu.txt"
python3 bench/multigpu/make_gate_models.py --out "$W" --n-models "$NM" --size "$SIZE" --tokenizer "$TOK" || exit 1
PYT="python3 -m pytest -p pplgate.plugin -p no:cacheprovider --rootdir $W --baselines-dir $W/baselines -m gpu -q"
$PYT "$W/baselines" --update-baselines > "$OUT/record.log" 2>&1 || { tail -30 "$OUT/record.log"; exit 1; }
for n in $(printf '%s\n' 1 "$NG" | sort -un); do
  t0=$(date +%s%N)
  $PYT "$W/baselines" -n "$n" --dist loadgroup > "$OUT/gate-n$n.log" 2>&1
  rc=$?; ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "gate: $NM models, -n $n (one worker per GPU): rc=$rc wall=$((ms / 1000)).$((ms % 1000))s" | tee -a "$OUT/multigpu.txt"
  tail -3 "$OUT/gate-n$n.log"
done
python3 bench/multigpu/split_ppl.py --json "$OUT/split.json" | tee -a "$OUT/multigpu.txt"
