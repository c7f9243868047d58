#!/usr/bin/env bash
# Build the servers keyd/kube's integration test runs against: kube-apiserver
# and kube-controller-manager from k8s.io/kubernetes, and etcd from
# go.etcd.io/etcd/server/v3 at the version Kubernetes itself requires, from
# the build module tools/k8s (its own go.mod: the servers' dependency graph
# and the staging replaces stay out of the project's go.mod).
#   scripts/k8s.sh            binaries in out/tools/bin/ (cached: a rebuild
#                             happens only when tools/k8s, this script or the
#                             Go toolchain changed)
#   scripts/k8s.sh --rebuild  ignore the stamp (Go's build cache still applies)
# Prints the binary directory last; run the test with
#   PALISADE_K8S_BIN=$(scripts/k8s.sh | tail -1) go test ./keyd/kube/
# Cold: about 10 min and 3 GB of RAM on 2 cores (docs/kubeadm.md); warm: < 1 s.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

K8S_VERSION=v1.37.2
bin=$root/out/tools/bin
mod=$root/tools/k8s

rebuild=0
[ "${1:-}" = --rebuild ] && rebuild=1

# The stamp covers everything that decides the binaries' content.
stamp=$( { cat "$mod/go.mod" "$mod/go.sum" "$0"; go version; } | sha256sum | cut -d' ' -f1)
if [ $rebuild = 0 ] && [ -f "$bin/.stamp" ] && [ "$(cat "$bin/.stamp")" = "$stamp" ] &&
	[ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/etcd" ]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$bin"
rm -f "$bin/.stamp"
# kubernetes' hack/lib/version.sh sets these; without them the servers report
# v0.0.0-master and kubeadm's version checks refuse them. A fixed build date
# keeps the binaries reproducible.
major=${K8S_VERSION#v}; major=${major%%.*}
minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
	ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

cd "$mod"
start=$SECONDS
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
go build -trimpath -ldflags "$ld" -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -ldflags "$ld" -o "$bin/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
echo "k8s: built kube-apiserver, kube-controller-manager, etcd in $((SECONDS - start)) s" >&2
echo "$stamp" >"$bin/.stamp"
echo "$bin"
