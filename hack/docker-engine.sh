#!/usr/bin/env bash
# Makes sure a Docker engine answers, for the kind cluster and the image builds (make kind-up, e2e).
#
#   hack/docker-engine.sh          use the running engine, else install (Debian docker.io) and start one
#   hack/docker-engine.sh --check  start nothing: exit 0 if an engine answers, else print why, exit 3
#   hack/docker-engine.sh --stop   stop the engine this script started (and only that one)
#
# An engine that already answers `docker info` is used as it is. Otherwise, as root on Debian, this
# installs `docker.io` and starts `dockerd` by hand (no systemd here), its state under
# ~/.cache/slm-operator/docker (log, pid).
#
# NB: on machines whose capability bounding set lacks a capability that `--privileged` asks for
# (this one has no CAP_SYS_RESOURCE), runc fails with "unable to apply caps". The engine we start
# then uses hack/runc-nocap as its default runtime: it drops just those capabilities from each
# container's spec. kind's node image uses the same shim for privileged pods (kube-proxy).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${SLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator}"
state="$cache_root/docker"
log() { printf '[docker-engine %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

answers() { timeout 20 docker info >/dev/null 2>&1; }

case "${1:-}" in
  --check)
    answers && exit 0
    command -v docker >/dev/null || { echo "no docker command on this machine"; exit 3; }
    echo "docker info failed: $(timeout 20 docker info 2>&1 | tail -n 1)"; exit 3 ;;
  --stop)
    if [[ -f "$state/dockerd.pid" ]] && kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null; then
      pid=$(cat "$state/dockerd.pid")
      kill "$pid"
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      rm -f "$state/dockerd.pid"
      log "stopped dockerd (pid $pid)"
    else
      log "no dockerd started by this script is running"
    fi
    # The engine's config as it was before this script wrote its own.
    if [[ -f "$state/daemon.json.ours" ]]; then
      if [[ -f "$state/daemon.json.before" ]]; then mv "$state/daemon.json.before" /etc/docker/daemon.json
      else rm -f /etc/docker/daemon.json; fi
      rm -f "$state/daemon.json.ours"
    fi
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--check|--stop]" >&2; exit 2 ;;
esac

if answers; then log "a Docker engine answers (docker info)"; exit 0; fi
[[ $(id -u) -eq 0 ]] || die "no Docker engine answers and this is not root: start Docker yourself (or run as root to let this script install and start one)"

if ! command -v dockerd >/dev/null; then
  command -v apt-get >/dev/null || die "no dockerd and no apt-get: install a Docker engine yourself"
  log "installing Debian's docker.io (Docker engine) with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null || die "apt-get install docker.io failed"
  # NB: where systemd runs, the package's postinst has started an engine already.
  if answers; then log "docker.io installed; its service answers"; exit 0; fi
fi

mkdir -p "$state" /etc/docker
runtime_json=""
# Any capability missing from the bounding set (here CAP_SYS_RESOURCE) means the shim is needed.
bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
full=$(( (1 << ($(cat /proc/sys/kernel/cap_last_cap) + 1)) - 1 ))
if (( (16#$bnd & full) != full )) || [[ "${SLM_FORCE_RUNC_SHIM:-}" == 1 ]]; then
  log "this machine's bounding set lacks capabilities --privileged asks for: runtime hack/runc-nocap"
  shim="$(bash "$here/go-tool.sh" "$here/runc-nocap")" || die "cannot build hack/runc-nocap (see above)"
  runtime_json="\"runtimes\": {\"slm-runc\": {\"path\": \"$shim\"}}, \"default-runtime\": \"slm-runc\","
fi
if [[ -f /etc/docker/daemon.json && ! -f "$state/daemon.json.ours" ]]; then
  cp /etc/docker/daemon.json "$state/daemon.json.before"
fi
cat > /etc/docker/daemon.json <<JSON
{ $runtime_json "storage-driver": "overlay2", "exec-opts": ["native.cgroupdriver=cgroupfs"] }
JSON
touch "$state/daemon.json.ours"

log "starting dockerd (log: $state/dockerd.log)"
nohup dockerd >"$state/dockerd.log" 2>&1 &
echo $! > "$state/dockerd.pid"
for _ in $(seq 1 60); do
  kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null || die "dockerd exited: $(tail -n 3 "$state/dockerd.log" | tr '\n' ' ')"
  answers && { log "dockerd ready (pid $(cat "$state/dockerd.pid"))"; exit 0; }
  sleep 1
done
die "dockerd did not answer within 60 s (see $state/dockerd.log)"
