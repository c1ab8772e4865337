#!/usr/bin/env bash
# Offline check of the Kubernetes manifests (no cluster needed): render each overlay with
# `kubectl kustomize`, then validate every rendered object with `kubernetes-validate --strict`
# against the Kubernetes API schemas (unknown fields are errors). Prints kind/name per object.
#   bash k8s/validate.sh [OVERLAY_DIR ...]     default: every folder of k8s/overlays
# KUBERNETES_VERSION (default 1.37.0, the newest kubernetes-validate 1.37 ships) picks the schemas.
# Without kubectl it says so and exits 0 (skipped); the policy tests skip the same way.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${KUBERNETES_VERSION:-1.37.0}"

if ! command -v kubectl >/dev/null; then
    echo "k8s/validate.sh: SKIPPED, kubectl is not installed (it renders the overlays offline)"
    exit 0
fi
if ! command -v kubernetes-validate >/dev/null; then
    echo "k8s/validate.sh: kubernetes-validate is not on PATH: pip install -e '.[dev]'" >&2
    exit 1
fi

if [ "$#" -eq 0 ]; then
    set -- "$here"/overlays/*/
fi
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
for overlay in "$@"; do
    name="$(basename "$overlay")"
    echo "== $name"
    kubectl kustomize "$overlay" >"$rendered/$name.yaml"
    # CRDs (the optional PodMonitor) have no schema here: a warning, not a failure
    kubernetes-validate --strict --kubernetes-version "$version" "$rendered/$name.yaml" \
        | sed "s|$rendered/||"
done
