#!/usr/bin/env bash
# Device: the GPU gate against the COMMITTED baselines (nothing is re-recorded), cold quantization
# cache then warm, timed; prints each entry's PPL. Run after stage2.sh has set up the environment.
set -uo pipefail
OUT=${OUT:?set OUT}
mkdir -p "$OUT" /tmp/reports
rm -rf "${PPLGATE_CACHE_DIR:?}"
rc_all=0
for name in cold warm; do
  t0=$(date +%s%N)
  bash ci/gpu.sh /tmp/reports/$name "$@" > /tmp/reports/$name.log 2>&1
  rc=$?
  [ $rc -ne 0 ] && rc_all=$rc
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%-5s rc=%s wall=%d.%03ds\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) | tee -a "$OUT/timings.txt"
  grep -E "^(smollm2|model|FAILED|ERROR|=+ .*(passed|failed).* =+$)|slowest|^[0-9.]+s (call|setup)" /tmp/reports/$name.log | tail -30
done
python3 - <<'PY' | tee -a "$OUT/timings.txt"
import json, pathlib
for run in ("cold", "warm"):
    for f in sorted(pathlib.Path("/tmp/reports", run).glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except ValueError:
            continue
        for rec in data.get("records", []) if isinstance(data, dict) else []:
            print(run, rec.get("variant"), rec.get("status"), rec.get("ppl"), rec.get("baseline"))
PY
tar czf "$OUT/reports.tgz" -C /tmp reports
exit $rc_all
