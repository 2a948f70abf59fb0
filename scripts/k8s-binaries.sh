#!/usr/bin/env bash
# Builds the real Kubernetes control plane the Kubernetes tests run against:
# etcd, kube-apiserver and kube-controller-manager, from their Go modules, into
# a cache outside the repository; and helm, which renders the chart in deploy/
# for the test that applies it to that control plane. Only the first run on a machine pays the
# build (6 to 15 minutes on 2 cores, most of it fetching Go modules on a new
# machine); later runs find the binaries and
# return at once.
#
#   scripts/k8s-binaries.sh            # prints the folder holding the binaries
#
# ROUSE_K8S_CACHE overrides the cache folder (default ~/.cache/rouse-k8s).
set -euo pipefail

K8S_VERSION=v1.37.2
# k8s.io/kubernetes replaces its k8s.io/* staging modules with local paths, so
# a module that requires it must pin each one to the matching v0.x release.
STAGING_VERSION=v0.${K8S_VERSION#v1.}
CACHE=${ROUSE_K8S_CACHE:-$HOME/.cache/rouse-k8s}/$K8S_VERSION
HELM_VERSION=v4.3.1
BINARIES=(etcd kube-apiserver kube-controller-manager helm)

have_all() {
    for b in "${BINARIES[@]}"; do [[ -x $CACHE/$b ]] || return 1; done
}

# Knative's Ingress CRD, as Knative Serving installs it, from the networking module (the
# version Serving v0.42 pins): the tests of rouse as Knative's ingress create Ingresses of it.
KNATIVE_NETWORKING=knative.dev/networking@v0.0.0-20240716111826-bab7f2a3e556
if [[ ! -s $CACHE/knative-ingress-crd.yaml ]]; then
    command -v go >/dev/null || { echo "k8s-binaries: Go is needed to fetch Knative's CRD" >&2; exit 1; }
    mkdir -p "$CACHE"
    dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$KNATIVE_NETWORKING" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    cp "$dir/config/ingress.yaml" "$CACHE/knative-ingress-crd.yaml.tmp"
    chmod u+w "$CACHE/knative-ingress-crd.yaml.tmp"
    mv "$CACHE/knative-ingress-crd.yaml.tmp" "$CACHE/knative-ingress-crd.yaml"
fi

if have_all; then
    echo "$CACHE"
    exit 0
fi

command -v go >/dev/null || { echo "k8s-binaries: Go is needed to build the control plane" >&2; exit 1; }
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

go mod download -json "k8s.io/kubernetes@$K8S_VERSION" > kubernetes.json
upstream_mod=$(sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p' kubernetes.json)
go_line=$(grep -m1 '^go ' "$upstream_mod")
{
    echo "module rouse.test/k8s-binaries"
    echo
    echo "$go_line"
    grep -m1 '^godebug ' "$upstream_mod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$upstream_mod"
    echo ")"
} > go.mod

# etcd at the version Kubernetes itself is built and tested with: its main
# package lives in the root etcd module, so a three-line main calls etcdmain.
mkdir -p etcd
cat > etcd/main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO

etcd_version=$(grep -m1 'go.etcd.io/etcd/server/v3 ' "$upstream_mod" | awk '{print $2}')
go get "k8s.io/kubernetes@$K8S_VERSION" "go.etcd.io/etcd/server/v3@$etcd_version" >&2
go mod tidy >&2

# So the binaries report a real version (`kube-apiserver --version`, /version).
pkg=k8s.io/component-base/version
minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
export CGO_ENABLED=0
go build -trimpath -ldflags "$ldflags" -o "$CACHE/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
go build -trimpath -ldflags "$ldflags" -o "$CACHE/kube-controller-manager.tmp" k8s.io/kubernetes/cmd/kube-controller-manager >&2
go build -trimpath -ldflags "-s -w" -o "$CACHE/etcd.tmp" ./etcd >&2
# helm in its own module graph (its dependencies need not agree with Kubernetes').
GOBIN="$work/helm-bin" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
mv "$work/helm-bin/helm" "$CACHE/helm.tmp"
for b in "${BINARIES[@]}"; do mv "$CACHE/$b.tmp" "$CACHE/$b"; done
echo "$CACHE"
