#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules into a cache outside the repo.
#
# Why from source: this machine kind has no Docker engine and no prebuilt Kubernetes binaries,
# but it reaches the Go module proxy. Each binary is built once per pinned version set and reused.
#
#   hack/build-binaries.sh            build what is missing, print the bin folder on the last line
#   hack/build-binaries.sh --check    build nothing: print the bin folder if complete, else exit 3
#   SLM_K8S_ASSETS=/dir hack/...      use binaries already there (like envtest's KUBEBUILDER_ASSETS)
#
# NB: k8s.io/kubernetes has `replace` directives to its staging folders, which `go install pkg@v`
# refuses; so its commands (and etcd, which it requires) are built from a wrapper module made
# here, whose go.mod replaces each staging module with the published k8s.io/<name> of the release.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm kind kubelet kubeadm kube-proxy)
check_only=false
case "${1:-}" in
  "") ;;
  --check) check_only=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ -n "${SLM_K8S_ASSETS:-}" ]]; then
  missing=()
  for b in "${want[@]}"; do [[ -x "$SLM_K8S_ASSETS/$b" ]] || missing+=("$b"); done
  # kind and the node binaries (kubelet, kubeadm, kube-proxy) only matter where a Docker engine exists.
  for opt in kind kubelet kubeadm kube-proxy; do missing=("${missing[@]/#$opt}"); done
  [[ -z "${missing[*]// /}" ]] || die "SLM_K8S_ASSETS=$SLM_K8S_ASSETS lacks: ${missing[*]}. Put those binaries there or unset SLM_K8S_ASSETS to build them."
  echo "$SLM_K8S_ASSETS"; exit 0
fi

cache_root="${SLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator}"
bin="$cache_root/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION-kind-$KIND_VERSION/bin"

need=()
for b in "${want[@]}"; do [[ -x "$bin/$b" ]] || need+=("$b"); done
if [[ ${#need[@]} -eq 0 ]]; then log "all binaries cached in $bin"; echo "$bin"; exit 0; fi
if $check_only; then log "not built yet in $bin: ${need[*]} (run \`make binaries\`)"; exit 3; fi
mkdir -p "$bin"

command -v go >/dev/null || die "Go is not installed (need Go >= 1.26 for Kubernetes $KUBERNETES_VERSION). Install Go, or set SLM_K8S_ASSETS to a folder holding: ${want[*]}."
proxy="$(go env GOPROXY | cut -d, -f1)"
if [[ "$proxy" == https://* ]] && ! curl -fsS --max-time 20 -o /dev/null "$proxy/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.info"; then
  die "the Go module proxy $proxy does not answer for k8s.io/kubernetes@$KUBERNETES_VERSION. Check the network/GOPROXY, or set SLM_K8S_ASSETS to prebuilt binaries."
fi
log "building ${need[*]} into $bin (cold: ~20-40 min on 2 cores; cached afterwards)"
start=$SECONDS
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod"
has() { [[ " ${need[*]} " == *" $1 "* ]]; }

work="$cache_root/src"
if has etcd || has kube-apiserver || has kube-controller-manager || has kube-scheduler || has kubectl \
   || has kubelet || has kubeadm || has kube-proxy; then
  w="$work/k8s-$KUBERNETES_VERSION"
  mkdir -p "$w/cmd/etcd"
  modfile="$(mktemp)"
  curl -fsS --max-time 60 "$proxy/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod" -o "$modfile" \
    || die "could not fetch go.mod of k8s.io/kubernetes@$KUBERNETES_VERSION from $proxy"
  {
    echo "module slm-operator.local/k8sbins"
    echo
    echo "go 1.26"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $KUBERNETES_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    echo "replace ("
    # Every staging replace of the release, pointed at the published module of the same release.
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$modfile" \
      | grep -vx 'k8s.io/sample-cli-plugin' \
      | while read -r m; do echo "	$m => $m $KUBE_STAGING_VERSION"; done
    echo ")"
  } > "$w/go.mod"
  rm -f "$modfile"
  cat > "$w/cmd/etcd/main.go" <<'GO'
// Command etcd runs the etcd server from the module that Kubernetes itself requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  cat > "$w/tools.go" <<'GO'
//go:build tools

// Package tools pins the Kubernetes commands we build so `go mod tidy` keeps their dependencies.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  ( cd "$w" && log "resolving modules for Kubernetes $KUBERNETES_VERSION (downloads ~1 GB on a cold cache)" \
      && go mod tidy >&2 ) || die "go mod tidy failed for the Kubernetes wrapper module in $w (see above)"
  pkgs=()
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kubeadm kube-proxy; do has "$b" && pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  has etcd && pkgs+=("./cmd/etcd")
  # One `go build` for all of them: they share most packages, so one invocation compiles each once.
  ( cd "$w" && log "compiling ${pkgs[*]}" && go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) \
      -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION" -o "$bin/" "${pkgs[@]}" >&2 ) \
    || die "building Kubernetes binaries failed (see above)"
  log "kubernetes + etcd built after $((SECONDS - start)) s"
fi

gobin_install() { # name module/path version [extra ldflags]
  local name="$1" pkg="$2" ver="$3" extra="${4:-}"
  log "building $name from $pkg@$ver"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w $extra" "$pkg@$ver" >&2 || die "building $name ($pkg@$ver) failed (see above)"
}
has kwok && gobin_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
# NB: helm's version is a link-time variable; unset, `helm version` says only the minor ("v3.19").
has helm && gobin_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
has kind && gobin_install kind sigs.k8s.io/kind "$KIND_VERSION"
log "all binaries ready in $bin after $((SECONDS - start)) s"
echo "$bin"
