#!/usr/bin/env bash
# The GPU gate, as a GPU CI runner calls it.
#   ci/gpu.sh [REPORT_DIR] [extra pytest args...]      e.g. ci/gpu.sh out -k smollm2 --update-baselines
# 1. checks the environment (a CUDA device, versions), 2. installs what is missing: online from PyPI,
# or offline from a wheel directory ($PPLGATE_WHEELS, installed --no-deps), 3. runs `pytest -m gpu`
# with JUnit/JSON/Markdown reports into REPORT_DIR, 4. exits non-zero exactly when the gate fails
# (pytest's "no tests collected" counts as a failure: a gate that ran nothing must not pass).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPORT_DIR=${1:-pplgate-report}
[ $# -gt 0 ] && shift
mkdir -p "$REPORT_DIR"
PY=${PYTHON:-python3}

echo "== environment"
$PY - <<'PY' || { echo "ci/gpu.sh: no usable CUDA device: the GPU gate cannot run here" >&2; exit 2; }
import platform, sys
import torch, transformers
ok = torch.cuda.is_available()
print(f"python {platform.python_version()}  torch {torch.__version__}  transformers {transformers.__version__}  cuda {ok}")
if ok:
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB")
sys.exit(0 if ok else 1)
PY

echo "== dependencies"
# the same list as pyproject.toml's dependencies and extras (gguf, awq, llmcompressor, report, bnb, torchao,
# hqq, pytest of test).
# Line 1: what the gate needs; line 2: what only Llama-2 (SentencePiece) tokenizers need, installed
# when possible (the offline wheel directory may lack them; the committed GPU entries do not use them).
deps=$($PY - <<'PY'
import importlib.util

def have(mod):
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False

need = {"datasets": "datasets", "awq": "autoawq==0.2.9", "gguf": "gguf", "accelerate": "accelerate",
        "yaml": "pyyaml", "ruamel.yaml": "ruamel.yaml", "filelock": "filelock", "tqdm": "tqdm",
        "matplotlib": "matplotlib", "pytest": "pytest", "llmcompressor": "llmcompressor==0.14.0.1",
        "compressed_tensors": "compressed-tensors==0.19.0", "bitsandbytes": "bitsandbytes==0.50.2",
        "torchao": "torchao==0.18.0", "hqq": "hqq==0.2.8.post1", "einops": "einops", "termcolor": "termcolor"}
want = {"sentencepiece": "sentencepiece", "google.protobuf": "protobuf"}
print(" ".join(pkg for mod, pkg in need.items() if not have(mod)))
print(" ".join(pkg for mod, pkg in want.items() if not have(mod)))
PY
)
missing=$(sed -n 1p <<<"$deps")
optional=$(sed -n 2p <<<"$deps")
if [ -n "$missing" ]; then
  if [ -n "${PPLGATE_WHEELS:-}" ]; then
    echo "installing offline from $PPLGATE_WHEELS: $missing"
    # shellcheck disable=SC2086
    $PY -m pip install -q --no-index --no-deps --find-links "$PPLGATE_WHEELS" $missing || exit 2
  else
    echo "installing from PyPI: $missing"
    # autoawq without its dependencies: they pin torch/transformers versions that would replace the runner's
    # shellcheck disable=SC2086
    others=$(printf '%s\n' $missing | grep -v '^autoawq' | tr '\n' ' ')
    # shellcheck disable=SC2086
    # DISABLE_CUDA=1: hqq ships as an sdist; its optional CUDA kernels would need nvcc (HQQ runs its PyTorch backend)
    # shellcheck disable=SC2086
    [ -n "${others// }" ] && { DISABLE_CUDA=1 $PY -m pip install -q $others || exit 2; }
    case " $missing " in *" autoawq"*) $PY -m pip install -q --no-deps autoawq==0.2.9 || exit 2 ;; esac
  fi
fi
if [ -n "$optional" ]; then
  if [ -n "${PPLGATE_WHEELS:-}" ]; then
    # shellcheck disable=SC2086
    $PY -m pip install -q --no-index --no-deps --find-links "$PPLGATE_WHEELS" $optional ||
      echo "ci/gpu.sh: warning: $optional not installed (no wheel in $PPLGATE_WHEELS): Llama-2 tokenizers will not load"
  else
    # shellcheck disable=SC2086
    $PY -m pip install -q $optional ||
      echo "ci/gpu.sh: warning: $optional not installed: Llama-2 tokenizers will not load"
  fi
fi
$PY -c "import pplgate" 2>/dev/null || $PY -m pip install -q --no-deps -e . || exit 2

echo "== gate"
# baselines/ (the gate) and tests/gpu/ (fidelity against AutoAWQ's own loop); PPLGATE_GPU_PATHS overrides.
# Markers: `gpu` (the gate) pre-merge; the scheduled job adds the fidelity checks with
# PPLGATE_GPU_MARKERS="gpu or fidelity" (they check pplgate itself, not the model under review).
MARKERS=${PPLGATE_GPU_MARKERS:-gpu}
# shellcheck disable=SC2086
# -o addopts: one process on the GPU (this checkout's pytest options start xdist workers for the CPU tests);
# pass -n N --dist loadgroup after the report dir to spread models over N workers
$PY -m pytest -o addopts=-ra -m "$MARKERS" -p no:cacheprovider --pplgate-report "$REPORT_DIR" --junitxml "$REPORT_DIR/junit.xml" \
  -o junit_family=xunit1 ${PPLGATE_GPU_PATHS:-baselines tests/gpu} "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "ci/gpu.sh: pytest collected no GPU gate tests (check baselines/, -k and PPLGATE_GPU_MARKERS=$MARKERS)" >&2
  exit 1
fi
exit $rc
