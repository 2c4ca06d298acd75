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

step "train examples/iris.yaml: six algorithms, tuned with stratified CV, gated, published"
modelyard train --spec examples/iris.yaml --set data="{dataset: iris}"

step "promote the new version to production"
version=$(modelyard models list --name iris --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["version"])')
modelyard models promote iris "$version"

step "the registry"
modelyard models list --name iris
modelyard models show iris@production
