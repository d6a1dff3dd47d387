#!/usr/bin/env bash
# bench/cpu_repro.py on a GPU runner's host CPU, GPU hidden (run via stage2.sh after stage1.sh),
# each configuration on its own pair of cores (2 threads, as the 2-core CPU tier); JSON lines to $OUT.
set -uo pipefail
export CUDA_VISIBLE_DEVICES=
lscpu | grep -E 'Model name|Vendor|Flags' | cut -c1-200 | tee "$OUT/cpu.txt"
python3 -c "import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability()); print(torch.__config__.show())" \
  | head -8 | tee -a "$OUT/cpu.txt"
R=/tmp/cpu_repro && mkdir -p $R
run() {  # cores name args...
  local cores=$1 name=$2; shift 2
  taskset -c "$cores" python3 bench/cpu_repro.py --digests "$R/$name.digests.json" "$@" >"$R/$name.log" 2>&1
  tail -1 "$R/$name.log" >>"$OUT/repro.jsonl"
}
run 0,1 gptq-none --lever none &
run 2,3 gptq-f64 --lever f64 &
run 4,5 gptq-f64cal --lever f64cal &
run 6 gptq-f64cal-t1 --lever f64cal --threads 1 &
run 7 gptq-none-t1 --lever none --threads 1 &
run 8,9 llmc-awq-none --kind llmc-awq --lever none &
run 10,11 llmc-awq-f64cal --kind llmc-awq --lever f64cal &
wait
tar -czf "$OUT/cpu_repro.tgz" -C $R .  # one archive for the per-run logs and digests
cat "$OUT/repro.jsonl"
