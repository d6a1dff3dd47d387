#!/usr/bin/env bash
# Rehearse `.ci/run` the way a new machine runs it: a clean clone of a commit (uncommitted changes are
# not in it), a *copy* of ../shared at a different absolute path (CI's paths are not ours: anything
# machine-specific in a committed baseline shows up here as drift), an empty HOME (no pip cache, cold
# quantization cache, no user config), none of this shell's python/venv/pplgate/HF variables (pip's
# index settings stay: see below), CPU only. `.ci/run` builds its own isolated venv in the clone.
#
#   bash ci/clean_clone_check.sh [REV] [WORKDIR]     # REV defaults to HEAD, WORKDIR to a new temp dir
#
# The full output goes to WORKDIR/ci-run.log; the last line is a one-line summary:
#   clean_clone_check: <sha> .ci/run exit 0 in 611s: 260 passed, 0 failed, 0 errors, 0 skipped
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
rev="${1:-HEAD}"
work="${2:-$(mktemp -d /tmp/pplgate-cicheck.XXXXXX)}"
shared_src="${PPLGATE_SHARED:-$repo/../shared}"
[[ -d "$shared_src" ]] || { echo "clean_clone_check: no shared dir at $shared_src (set PPLGATE_SHARED)" >&2; exit 2; }
sha_full="$(git -C "$repo" rev-parse --verify "$rev^{commit}")"

mkdir -p "$work/elsewhere"
git clone -q "$repo" "$work/elsewhere/main"
git -C "$work/elsewhere/main" checkout -q "$sha_full"
cp -a "$(cd "$shared_src" && pwd -P)" "$work/elsewhere/shared"   # a copy, not a symlink: paths must differ
mkdir -p "$work/home"
sha="$(git -C "$work/elsewhere/main" rev-parse --short HEAD)"
log="$work/ci-run.log"
echo "clean_clone_check: $sha in $work/elsewhere/main (shared copied to $work/elsewhere/shared, HOME=$work/home)"
echo "clean_clone_check: output also in $log"
cd "$work/elsewhere/main"

# A new machine has none of these: drop them rather than let them leak into the run. pip settings
# that only say where packages come from (indexes, find-links, certificates, timeouts) are this
# machine's, as a CI runner has its own: they stay. (Without them, here, pip takes PyPI's torch: the
# CUDA build, ~5 GB of venv.) Any other PIP_* (a cache dir, constraints, --user, a target) goes.
unset_args=()
while IFS= read -r name; do
    case "$name" in
        PIP_INDEX_URL | PIP_EXTRA_INDEX_URL | PIP_FIND_LINKS | PIP_TRUSTED_HOST | PIP_CERT | PIP_CLIENT_CERT | \
            PIP_PROXY | PIP_DEFAULT_TIMEOUT | PIP_TIMEOUT | PIP_RETRIES | PIP_DISABLE_PIP_VERSION_CHECK) ;;
        PPLGATE_* | PIP_* | VIRTUAL_ENV* | CONDA_* | HF_* | HUGGINGFACE_* | TRANSFORMERS_* | TORCH_HOME | \
            PYTHONPATH | PYTHONHOME | PYTHONUSERBASE | PYTHONSTARTUP | PYTHONNOUSERSITE | \
            XDG_CACHE_HOME | XDG_CONFIG_HOME | XDG_DATA_HOME)
            unset_args+=(-u "$name") ;;
    esac
done < <(compgen -e)
# an active venv's bin/ leaves PATH too (its python would create the new venv)
clean_path="$PATH"
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    clean_path="$(tr ':' '\n' <<<"$PATH" | grep -vxF "$VIRTUAL_ENV/bin" | paste -sd: -)"
fi

start=$(date +%s)
set +e
env ${unset_args[@]+"${unset_args[@]}"} PATH="$clean_path" HOME="$work/home" CI=true bash .ci/run 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
secs=$(( $(date +%s) - start ))

# pytest's final line, e.g. "==== 2 failed, 258 passed, 3 skipped, 1 error in 611.20s (0:10:11) ===="
final="$(sed 's/\x1b\[[0-9;]*m//g' "$log" |
    grep -E '^=+ .*([0-9]+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)|no tests ran).* in [0-9.]+s' |
    tail -n1 | sed -E 's/^=+ //; s/ =+$//')" || true
if [[ -z "$final" ]]; then
    echo "clean_clone_check: $sha .ci/run exit $rc in ${secs}s: no pytest summary line (set-up or lint failed?), see $log"
    exit "$rc"
fi
count() {  # count WORD-REGEX: the number before it in pytest's final line, 0 when absent
    local n
    n="$(grep -oE "[0-9]+ ($1)\b" <<<"$final" | head -n1 | cut -d' ' -f1)" || true
    echo "${n:-0}"
}
summary="$(count passed) passed, $(count failed) failed, $(count 'errors?') errors, $(count skipped) skipped"
extras="$(grep -oE '[0-9]+ (deselected|xfailed|xpassed|warnings?)\b' <<<"$final" | paste -sd, - | sed 's/,/, /g')" || true
[[ -n "$extras" ]] && summary+=", $extras"
# what was skipped, and why (the done-condition: nothing skipped for a missing module or data)
sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^SKIPPED ' || true
echo "clean_clone_check: $sha .ci/run exit $rc in ${secs}s: $summary"
exit "$rc"
