#!/usr/bin/env bash
# Issue 14 on a lent 2x or 4x H100 machine, in calls of <= 10 minutes (the device tool's limit). Carry
# .device/s (made by `bash bench/multigpu/stage_x4.sh` here: the Llama-2 tokenizer, the WikiText-2
# parquet, the wheels the image lacks). Each call names its steps:
#   A: prepare (build + record, not timed) and the -n 1 gate;  B: -n 2 and -n 4, the 70B shape on 2 GPUs;
#   N2: the -n 2 gate alone (after A, on a 2-GPU machine);
#   C: the 70B shape on 4 GPUs, the 7B identity check (1 GPU vs plain split vs pipelined);  D: that check on 2 GPUs
#   T: prepare, then -n 1,2,4 with this checkout;  O: -n 1 and -n 4 with the older src in .device/old (same
#   machine: run right after T), then the GPU tests of placement/exit/freeing;  G: those tests alone
# A later call re-prepares if the machine went cold in between (then its timings are still same-machine).
set -uo pipefail
OUT=${OUT:?set OUT}
S=/tmp/pplgate-site
if [ ! -f $S/.ok ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S .device/s/wheels/*.whl && touch $S/.ok
fi
export PYTHONPATH=$S:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# the image sets PYTHONDONTWRITEBYTECODE and its site-packages ship without usable bytecode: without a
# writable prefix every worker recompiled ~5,000 modules at start-up (measured on the H100: 14.6 s -> 6.4 s)
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pplgate-pycache
export PPLGATE_WIKITEXT=$PWD/.device/s/test-00000-of-00001.parquet
TOK=$PWD/.device/s/llama2
W=/tmp/pplgate-scale
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee -a "$OUT/gpus.txt"
python3 -c "import torch, transformers, pytest, xdist; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pytest', pytest.__version__, 'xdist', xdist.__version__)" | tee -a "$OUT/gpus.txt"
prepare() { [ -f $W/prepare.json ] || { python3 bench/multigpu/scale.py prepare --work $W --tokenizer "$TOK" --size 7b --n-models 4 && cp $W/prepare.json "$OUT/"; }; }
step() { echo "== $* ($(date +%T))"; }
gpu_tests() {
  step "GPU tests: NVML, xdist placement and exit, freeing"
  python3 -m pytest -p no:cacheprovider -q tests/pytest_plugin/test_gpus.py tests/pytest_plugin/test_xdist_gpus.py \
    tests/pytest_plugin/test_free_models.py 2>&1 | tee "$OUT/gpu-tests.txt"
}
for s in "$@"; do
  case $s in
    A) step prepare; prepare; step "time -n 1"; python3 bench/multigpu/scale.py time --work $W --out "$OUT/scale-n1" --workers 1 ;;
    B) prepare; NG=$(nvidia-smi -L | wc -l); WK=$([ "$NG" -ge 4 ] && echo 2,4 || echo 2)
       step "time -n $WK"; python3 bench/multigpu/scale.py time --work $W --out "$OUT/scale-n$NG" --workers $WK
       step "70b on 2"; python3 bench/multigpu/big_model.py --tokenizer "$TOK" --shape 70b --gpus 2 --windows 64 --pipeline --json "$OUT/big-70b-2gpu.json" ;;
    T) prepare; step "time -n 1,2,4"; python3 bench/multigpu/scale.py time --work $W --out "$OUT/scale" --workers 1,2,4 ;;
    O) prepare; step "time -n 1,4 (old: $(cat .device/old/REV))"
       python3 bench/multigpu/scale.py time --work $W --out "$OUT/scale-old" --workers 1,4 --src .device/old/src --label "$(cat .device/old/REV)"
       gpu_tests ;;
    G) gpu_tests ;;
    N2) prepare; step "time -n 2"; python3 bench/multigpu/scale.py time --work $W --out "$OUT/scale-n2" --workers 2 ;;
    D) step "7b check on 2"; python3 bench/multigpu/big_model.py --tokenizer "$TOK" --shape 7b --gpus 2 --windows 32 --pipeline --check-single --json "$OUT/check-7b-2gpu.json" ;;
    C) step "70b on 4"; python3 bench/multigpu/big_model.py --tokenizer "$TOK" --shape 70b --gpus 4 --windows 64 --pipeline --json "$OUT/big-70b-4gpu.json"
       step "7b check"; python3 bench/multigpu/big_model.py --tokenizer "$TOK" --shape 7b --gpus 4 --windows 32 --pipeline --check-single --json "$OUT/check-7b-4gpu.json" ;;
  esac
done
step done
# the device tool brings back at most 8 files: everything in one archive
( cd "$OUT" && tar czf /tmp/pplgate-results.tgz . && find . -mindepth 1 -delete && mv /tmp/pplgate-results.tgz "$OUT/results.tgz" )
