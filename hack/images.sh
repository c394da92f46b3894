#!/usr/bin/env bash
# Builds the project's images here, from the top-level Dockerfile, with no container registry:
# the standard base images are replaced, through the Dockerfile's build args, by images built from
# Debian (hack/base-image.sh, hack/images/Dockerfile.python), and torch comes from $SHARED/wheels.
#
#   hack/images.sh          builds, and prints one "name=image" line per image:
#     operator=slm-local/slm-operator:dev          --target operator
#     engine=slm-local/slm-profiler-cpu:dev        --target profiler-cpu (vLLM CPU + slm-profiler)
#     e2e-engine=slm-local/vllm-cpu-e2e:dev        engine + a tiny random-weight model at /models/tiny-llama
#
# Docker's layer cache makes a second run take seconds; a code change rebuilds only our wheel.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
shared="${SHARED:-$root/../shared}"
# NB: the classic builder: BuildKit would fetch the Dockerfile's `# syntax` frontend from Docker Hub.
export DOCKER_BUILDKIT=0
log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
timed() { # name command...: run, log the time it took
  local name="$1" t=$SECONDS; shift
  "$@" >"$logdir/$name.log" 2>&1 || die "$name failed (log: $logdir/$name.log): $(tail -n 3 "$logdir/$name.log" | tr '\n' ' ')"
  log "$name: $((SECONDS - t)) s"
}
logdir="${SLM_RUN_DIR:-$root/.run}/images"
mkdir -p "$logdir"

base="$(bash "$here/base-image.sh" | tail -n 1)"
# The images these tags name now: once rebuilt, the old ones are dangling copies (GBs) to remove.
previous=$(docker image inspect -f '{{.Id}}' slm-local/slm-operator:dev slm-local/slm-profiler-cpu:dev \
           slm-local/vllm-cpu-e2e:dev 2>/dev/null || true)
python_image="slm-local/python:3.11-${base##*:}"
operator=slm-local/slm-operator:dev
engine=slm-local/slm-profiler-cpu:dev
e2e_engine=slm-local/vllm-cpu-e2e:dev

# NB: offline, pip must find torch's +cpu wheel here; the PyTorch index is not reachable.
if compgen -G "$shared/wheels/torch-*.whl" >/dev/null; then
  for w in "$shared"/wheels/torch-*.whl; do
    [[ -f "$here/wheels/$(basename "$w")" ]] || cp "$w" "$here/wheels/"
  done
  extra_index=""
else
  log "no torch wheel in $shared/wheels: the engine image takes torch from the PyTorch CPU index"
  extra_index="https://download.pytorch.org/whl/cpu"
fi

ctx="$(mktemp -d)"; trap 'rm -rf "$ctx"' EXIT
# NB: a TLS-inspecting proxy's CA, trusted on this machine, must be trusted by pip in the images too.
mkdir -p "$ctx/ca"
cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
timed python docker build --build-arg "BASE_IMAGE=$base" -f "$here/images/Dockerfile.python" -t "$python_image" "$ctx"
timed operator docker build --build-arg "PYTHON_IMAGE=$python_image" --target operator -t "$operator" "$root"
timed engine docker build --build-arg "PYTHON_IMAGE=$python_image" --build-arg "PIP_EXTRA_INDEX_URL=$extra_index" \
  --target profiler-cpu -t "$engine" "$root"
cp "$here/make_tiny_model.py" "$ctx/"
timed e2e-engine docker build --build-arg "ENGINE_IMAGE=$engine" -f "$here/images/Dockerfile.e2e-model" -t "$e2e_engine" "$ctx"
for old in $previous; do
  # NB: only an image no tag names any more; one still tagged (unchanged, or tagged by the user) stays.
  [[ -z "$(docker image inspect -f '{{join .RepoTags ","}}' "$old" 2>/dev/null)" ]] && docker rmi "$old" >/dev/null 2>&1 || true
done
for pair in "operator=$operator" "engine=$engine" "e2e-engine=$e2e_engine"; do
  log "${pair%%=*}: ${pair#*=} $(docker image inspect -f '{{.Size}}' "${pair#*=}" | awk '{printf "%.0f MB", $1/1e6}')"
  echo "$pair"
done
