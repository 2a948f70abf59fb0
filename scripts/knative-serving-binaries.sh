#!/usr/bin/env bash
# Builds Knative Serving's own components from the knative.dev/serving module, unmodified,
# into a cache outside the repository: the controller (Revisions → Deployments, Services,
# ServerlessServices), the autoscaler (KPA decisions and the stats websocket), the activator
# and the queue-proxy. The activator tests run rouse against them, and the benchmarks put
# Knative's activator and queue-proxy beside rouse's. Static builds (pure-Go DNS resolver) so
# the local test node can run the queue-proxy as a container of a Pod.
# The first run on a machine takes 3 to 8 minutes (fetching modules, compiling); later runs
# return at once. The CRDs and default ConfigMaps of the same version are copied beside them.
#
#   scripts/knative-serving-binaries.sh        # prints the folder holding the binaries
#
# ROUSE_K8S_CACHE overrides the cache folder (default ~/.cache/rouse-k8s).
set -euo pipefail

SERVING=v0.42.2
BINARIES=(controller autoscaler activator queue)
# Knative's own test app, a fast Go server, for the benchmarks' warm revision.
APPS=(helloworld)
CACHE=${ROUSE_K8S_CACHE:-$HOME/.cache/rouse-k8s}/knative-serving-$SERVING

have_all() {
    [[ -f $CACHE/config/ok ]] || return 1
    for b in "${BINARIES[@]}" "${APPS[@]}"; do [[ -x $CACHE/$b ]] || return 1; done
}
if have_all; then
    echo "$CACHE"
    exit 0
fi

command -v go >/dev/null || { echo "knative-serving-binaries: Go is needed to build Knative Serving's components" >&2; exit 1; }
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<GOMOD
module rouse.test/knative-serving

go 1.22
GOMOD
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "knative.dev/serving/cmd/activator"
	_ "knative.dev/serving/cmd/autoscaler"
	_ "knative.dev/serving/cmd/controller"
	_ "knative.dev/serving/cmd/queue"
	_ "knative.dev/serving/test/test_images/helloworld"
)
GO
export GOFLAGS=-mod=mod
go get "knative.dev/serving@$SERVING" >&2
go mod tidy >&2
for b in "${BINARIES[@]}"; do
    CGO_ENABLED=0 go build -o "$CACHE/$b.tmp" "knative.dev/serving/cmd/$b" >&2
    mv "$CACHE/$b.tmp" "$CACHE/$b"
done
for b in "${APPS[@]}"; do
    CGO_ENABLED=0 go build -o "$CACHE/$b.tmp" "knative.dev/serving/test/test_images/$b" >&2
    mv "$CACHE/$b.tmp" "$CACHE/$b"
done
# The CRDs and default ConfigMaps, from the modules the binaries were built from: Serving's
# own, and the networking (ServerlessService, Certificate, Ingress, ClusterDomainClaim) and
# caching (Image) ones its controller watches.
serving=$(go list -m -f '{{.Dir}}' knative.dev/serving)
networking=$(go list -m -f '{{.Dir}}' knative.dev/networking)
caching=$(go list -m -f '{{.Dir}}' knative.dev/caching)
rm -rf "$CACHE/config"
mkdir -p "$CACHE/config/crds" "$CACHE/config/configmaps"
cp "$serving"/config/core/300-resources/*.yaml "$CACHE/config/crds/"
for f in serverlessservice certificate ingress domain-claim; do
    cp "$networking/config/$f.yaml" "$CACHE/config/crds/networking-$f.yaml"
done
cp "$caching/config/image.yaml" "$CACHE/config/crds/caching-image.yaml"
cp "$serving"/config/core/configmaps/*.yaml "$CACHE/config/configmaps/"
touch "$CACHE/config/ok"
echo "$CACHE"
