#!/usr/bin/env bash
# Rehearse `.ci/run` the way CI runs it: a clean clone of a commit, a *copy* of ../shared at a
# different absolute path (CI's paths are not ours: anything machine-specific in a committed
# baseline shows up here as drift), an empty HOME (cold quantization cache), CPU only.
#
#   bash ci/clean_clone_check.sh [REV] [WORKDIR]     # REV defaults to HEAD, WORKDIR to a new temp dir
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
rev="${1:-HEAD}"
work="${2:-$(mktemp -d /tmp/pplgate-cicheck.XXXXXX)}"
shared_src="${PPLGATE_SHARED:-$repo/../shared}"
[[ -d "$shared_src" ]] || { echo "clean_clone_check: no shared dir at $shared_src (set PPLGATE_SHARED)" >&2; exit 2; }

mkdir -p "$work/elsewhere"
git clone -q "$repo" "$work/elsewhere/main"
git -C "$work/elsewhere/main" checkout -q "$(git -C "$repo" rev-parse "$rev")"
cp -a "$(cd "$shared_src" && pwd -P)" "$work/elsewhere/shared"   # a copy, not a symlink: paths must differ
mkdir -p "$work/home"
echo "clean_clone_check: $(git -C "$work/elsewhere/main" rev-parse --short HEAD) in $work/elsewhere/main"
cd "$work/elsewhere/main"
env -u PPLGATE_WIKITEXT -u PPLGATE_CALIBRATION -u PPLGATE_SHARED -u PPLGATE_SMOLLM2_GGUF \
    HOME="$work/home" CI=true bash .ci/run
