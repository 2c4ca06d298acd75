#!/usr/bin/env bash
# `make run`: the demo, end to end, on the embedded default (SQLite + a file store under ./.modelyard).
# Set MODELYARD_DATABASE_URL / MODELYARD_STORE_URI (and AWS_*) to run the same steps on Postgres and S3.
set -euo pipefail
cd "$(dirname "$0")/.."
modelyard() { .venv/bin/modelyard "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "registry schema"
modelyard db upgrade

step "load the iris data into the registry as a versioned dataset"
modelyard data load examples/data/iris.csv --name iris
modelyard data list --name iris

step "the training pipeline on kfp.local: six algorithms tuned with stratified CV, gated, published"
if ! modelyard train --spec examples/iris.yaml --set data="{dataset: iris}" --auto-deploy; then
  echo "the gate kept the current production version"
fi

step "the registry"
modelyard models list --name iris

step "serve iris@production over KServe V1 and V2 (REST :8080, gRPC :8081); Ctrl-C stops it"
exec .venv/bin/modelyard up
