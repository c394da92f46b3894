#!/usr/bin/env bash
# Builds the kind node image of the local cluster, with nothing pulled from a registry:
#   1. slm-local/debian (hack/base-image.sh: debootstrap);
#   2. the images kubeadm starts (kube-apiserver, -controller-manager, -scheduler, kube-proxy,
#      etcd under their registry.k8s.io names; pause from hack/kind-node/pause), from the binaries
#      hack/build-binaries.sh built;
#   3. the node: Debian's systemd, containerd, runc and CNI plugins, our kubelet/kubeadm/kubectl
#      and crictl, with the images of step 2 imported into its containerd.
#
#   hack/kind-node/build.sh      prints the node image name on the last line
#
# The tag carries a digest of this folder, versions.env and the runc shim: an unchanged input is
# not rebuilt (a second run takes a second).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hack="$(dirname "$here")"
# shellcheck source=../versions.env
source "$hack/versions.env"
cache_root="${SLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slm-operator}"
tools="$cache_root/tools"
# NB: the classic builder: BuildKit would fetch the `# syntax` frontend from Docker Hub.
export DOCKER_BUILDKIT=0
log() { printf '[kind-node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

digest=$( (cd "$hack" && find kind-node runc-nocap go-tool.sh versions.env -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12)
node_image="slm-local/kind-node:$KUBERNETES_VERSION-$digest"
if docker image inspect "$node_image" >/dev/null 2>&1; then log "$node_image present"; echo "$node_image"; exit 0; fi

start=$SECONDS
base="$(bash "$hack/base-image.sh" | tail -n 1)"
bin="$(bash "$hack/build-binaries.sh" | tail -n 1)"
for b in kubelet kubeadm kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd; do
  [[ -x "$bin/$b" ]] || die "$bin/$b is missing: run hack/build-binaries.sh"
done

mkdir -p "$tools"
runc_nocap="$(bash "$hack/go-tool.sh" "$hack/runc-nocap")" || die "building hack/runc-nocap failed"
pause="$(bash "$hack/go-tool.sh" "$here/pause")" || die "building hack/kind-node/pause failed"
if [[ ! -x "$tools/crictl-$CRICTL_VERSION" ]]; then
  log "building crictl $CRICTL_VERSION"
  gobin="$(mktemp -d)"
  CGO_ENABLED=0 GOBIN="$gobin" go install -trimpath -ldflags '-s -w' "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" >&2 \
    || die "building crictl failed"
  mv "$gobin/crictl" "$tools/crictl-$CRICTL_VERSION"; rm -rf "$gobin"
fi

ctx="$(mktemp -d /tmp/slm-kind-node.XXXXXX)"
build_box=""
cleanup() { rm -rf "$ctx"; [[ -z "$build_box" ]] || docker rm -f "$build_box" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# --- 2. the images kubeadm starts ---------------------------------------------------------------
reg=registry.k8s.io
mkdir -p "$ctx/pause" "$ctx/components/bin"
cp "$pause" "$ctx/pause/pause"
docker build -q -f "$here/Dockerfile.pause" -t "$reg/pause:$KUBEADM_PAUSE_TAG" "$ctx/pause" >/dev/null || die "building the pause image failed"
for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd; do cp "$bin/$b" "$ctx/components/bin/"; done
components="slm-local/k8s-components:$KUBERNETES_VERSION-$digest"
log "building $components (control-plane binaries on $base)"
docker build -q --build-arg "BASE_IMAGE=$base" -f "$here/Dockerfile.components" -t "$components" "$ctx/components" >/dev/null \
  || die "building the components image failed"
images=("$reg/pause:$KUBEADM_PAUSE_TAG" "$reg/etcd:$KUBEADM_ETCD_TAG")
docker tag "$components" "$reg/etcd:$KUBEADM_ETCD_TAG"
for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
  docker tag "$components" "$reg/$c:$KUBERNETES_VERSION"; images+=("$reg/$c:$KUBERNETES_VERSION")
done

# --- 3. the node --------------------------------------------------------------------------------
mkdir -p "$ctx/node/bin"
cp -r "$here/files" "$ctx/node/files"
mkdir -p "$ctx/node/files/kind"
echo "$KUBERNETES_VERSION" > "$ctx/node/files/kind/version"
for b in kubelet kubeadm kubectl; do cp "$bin/$b" "$ctx/node/bin/"; done
cp "$tools/crictl-$CRICTL_VERSION" "$ctx/node/bin/crictl"
cp "$runc_nocap" "$ctx/node/bin/runc-nocap"
log "building the node's packages and files on $base"
docker build -q --build-arg "BASE_IMAGE=$base" -f "$here/Dockerfile" -t "slm-local/kind-node-base:$digest" "$ctx/node" >/dev/null \
  || die "building the node image failed"

# NB: the images go into the node's containerd content store unpacked on first use (containerd's
# CRI unpacks a missing snapshot when it creates the container), so the commit stays one copy.
log "importing ${#images[@]} images into the node's containerd"
build_box="slm-kind-node-build-$digest"
docker rm -f "$build_box" >/dev/null 2>&1 || true
docker run -d --privileged --name "$build_box" --entrypoint /usr/bin/containerd "slm-local/kind-node-base:$digest" >/dev/null \
  || die "could not start containerd in the node image"
for _ in $(seq 1 30); do docker exec "$build_box" ctr version >/dev/null 2>&1 && break; sleep 1; done
docker save "${images[@]}" | docker exec -i "$build_box" ctr -n k8s.io images import --no-unpack --all-platforms --digests - >/dev/null \
  || die "ctr images import failed in the node image"
docker exec "$build_box" ctr -n k8s.io images ls -q | sed 's/^/  /' >&2
# NB: containerd is PID 1 here and must see SIGTERM (the image's stop signal is systemd's).
docker kill -s TERM "$build_box" >/dev/null && docker wait "$build_box" >/dev/null
docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint"]' --change 'CMD ["/sbin/init"]' \
  "$build_box" "$node_image" >/dev/null || die "docker commit of the node image failed"
docker rmi "slm-local/kind-node-base:$digest" >/dev/null 2>&1 || true
log "$node_image built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$node_image" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$node_image"
