#!/usr/bin/env bash
# Knative's ingress conformance suite against rouse: builds what it needs (the control plane,
# the suite and its test images, rouse), runs the suite unmodified on a control plane of its
# own inside a network namespace of its own, stops everything, and ends with the line
# `N passed, N failed`. The first run on a machine builds the Go components (about 10 minutes
# on 2 cores); later runs take 3 to 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUSE_K8S_BIN=$(scripts/k8s-binaries.sh)
ROUSE_KNATIVE_BIN=$(scripts/knative-binaries.sh)
export ROUSE_K8S_BIN ROUSE_KNATIVE_BIN
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --features kubernetes --test k8s -- --ignored --exact knative_ingress_conformance 2>&1 | tee "$log" || status=$?
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
echo "${summary:-0 passed, 0 failed}"
exit "$status"
