#!/usr/bin/env bash
# Validates deploy/ with the real parsers, offline once the Go modules are cached (no cluster, no Docker engine):
#   - Kubernetes: `kubectl kustomize deploy/k8s` (if kubectl exists), every object strictly decoded into the
#     client-go API types (unknown fields, wrong types, bad apiVersion/kind fail);
#   - compose: loaded by compose-go, the loader behind `docker compose config` (schema, env files, merge keys).
# Semantic checks only an API server does (e.g. an IntOrString's value) are out of reach; the unit tests in
# tests/unit/test_deploy_manifests.py cover Baton's own rules.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
(cd "$here/validate" && go build -o "$bin/" ./k8s ./compose)
if command -v kubectl >/dev/null; then
    kubectl kustomize "$here/k8s" | "$bin/k8s"
else
    for file in "$here"/k8s/*.yaml; do
        [ "$(basename "$file")" = kustomization.yaml ] || "$bin/k8s" < "$file"
    done
fi
"$bin/k8s" < "$here/k8s/secret.example.yaml"
(cd "$here" && "$bin/compose" compose.yaml >/dev/null) && echo "compose.yaml: valid"
