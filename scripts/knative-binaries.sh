#!/usr/bin/env bash
# Builds Knative's ingress conformance suite and the test images its tests run as Pods, from
# the knative.dev/networking module (the version Knative Serving v0.42 pins), into a cache
# outside the repository. The suite is the `go test` binary of
# test/conformance/ingress, unmodified; the images are the Go programs of test/test_images,
# built static (pure-Go DNS resolver) so the local test node can run them as Pods.
# The first run on a machine takes 2 to 6 minutes (fetching modules); later runs return at once.
#
#   scripts/knative-binaries.sh        # prints the folder holding the binaries
#
# ROUSE_K8S_CACHE overrides the cache folder (default ~/.cache/rouse-k8s).
set -euo pipefail

NETWORKING=v0.0.0-20240716111826-bab7f2a3e556
IMAGES=(runtime grpc-ping httpproxy retry timeout wsserver)
CACHE=${ROUSE_K8S_CACHE:-$HOME/.cache/rouse-k8s}/knative-networking-$NETWORKING

have_all() {
    [[ -x $CACHE/ingress-conformance ]] || return 1
    for b in "${IMAGES[@]}"; do [[ -x $CACHE/$b ]] || return 1; done
}
if have_all; then
    echo "$CACHE"
    exit 0
fi

command -v go >/dev/null || { echo "knative-binaries: Go is needed to build Knative's conformance suite" >&2; exit 1; }
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<GOMOD
module rouse.test/knative-conformance

go 1.22
GOMOD
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "knative.dev/networking/test/conformance/ingress"
	_ "knative.dev/networking/test/test_images/runtime"
)
GO
export GOFLAGS=-mod=mod
go get "knative.dev/networking@$NETWORKING" >&2
go mod tidy >&2
go test -tags e2e -c -o "$CACHE/ingress-conformance.tmp" knative.dev/networking/test/conformance/ingress >&2
mv "$CACHE/ingress-conformance.tmp" "$CACHE/ingress-conformance"
for img in "${IMAGES[@]}"; do
    CGO_ENABLED=0 go build -o "$CACHE/$img.tmp" "knative.dev/networking/test/test_images/$img" >&2
    mv "$CACHE/$img.tmp" "$CACHE/$img"
done
echo "$CACHE"
