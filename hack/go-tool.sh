#!/usr/bin/env bash
# Builds one of the project's small Go programs (hack/runc-nocap, hack/kind-node/pause) into the
# tools cache, once per source change, and prints the binary's path.
#
#   hack/go-tool.sh SOURCE_DIR      e.g. hack/go-tool.sh hack/runc-nocap
set -euo pipefail
src="$(cd "${1:?usage: hack/go-tool.sh SOURCE_DIR}" && pwd)"
cache_root="${SLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator}"
out="$cache_root/tools/$(basename "$src")"
if [[ ! -x "$out" || -n "$(find "$src" -type f -newer "$out" -print -quit)" ]]; then
  command -v go >/dev/null || { echo "[go-tool] Go is needed to build $src" >&2; exit 1; }
  mkdir -p "$(dirname "$out")"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out" .) \
    || { echo "[go-tool] building $src failed" >&2; exit 1; }
fi
echo "$out"
