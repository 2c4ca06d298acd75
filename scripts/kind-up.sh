#!/usr/bin/env bash
# `make kind-up`: a kind cluster from kind-config.yaml with a local registry, cert-manager and KServe
# (Standard mode) at pinned versions, both images built and loaded, and the chart installed.
# Needs docker, kind, kubectl and helm on PATH (none of them exist on the CI machines: the `kind`
# pytest marker covers what runs here).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=modelyard
CERT_MANAGER_VERSION=v1.18.2
KSERVE_VERSION=v0.20.0
REGISTRY_NAME=kind-registry
REGISTRY_PORT=5001
TAG=0.1.0

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is not on PATH" >&2; exit 1; }
done

# The local registry, as in kind's example: a registry:2 container on the kind network.
if [ "$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)" != true ]; then
  docker run -d --restart=always -p "127.0.0.1:${REGISTRY_PORT}:5000" --network bridge --name "$REGISTRY_NAME" registry:2
fi
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config kind-config.yaml
for node in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$node" mkdir -p "/etc/containerd/certs.d/localhost:${REGISTRY_PORT}"
  printf '[host."http://%s:5000"]\n' "$REGISTRY_NAME" \
    | docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/localhost:${REGISTRY_PORT}/hosts.toml"
done
docker network connect kind "$REGISTRY_NAME" 2>/dev/null || true
kubectl apply -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: local-registry-hosting, namespace: kube-public}
data:
  localRegistryHosting.v1: |
    host: "localhost:${REGISTRY_PORT}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
YAML

# cert-manager (KServe's webhook certificates), then KServe in Standard mode.
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
kubectl -n cert-manager wait --for=condition=Available deployment --all --timeout=300s
kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve.yaml"
kubectl -n kserve wait --for=condition=Available deployment --all --timeout=300s
kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve-cluster-resources.yaml"
kubectl -n kserve patch configmap inferenceservice-config --type merge \
  -p '{"data":{"deploy":"{\"defaultDeploymentMode\":\"Standard\"}"}}'

# Both images, built here and loaded into the node.
docker build -f model-server/Dockerfile -t "ghcr.io/modelyard/modelyard-model-server:${TAG}" .
docker build -f images/modelyard/Dockerfile -t "ghcr.io/modelyard/modelyard:${TAG}" .
kind load docker-image --name "$CLUSTER" "ghcr.io/modelyard/modelyard-model-server:${TAG}" "ghcr.io/modelyard/modelyard:${TAG}"

helm upgrade --install modelyard charts/modelyard -n modelyard --create-namespace --wait --timeout 10m
echo "kind-up: done. Next: README, 'Deploy on Kubernetes'."
