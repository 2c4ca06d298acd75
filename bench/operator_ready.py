"""How long from `kubectl apply` of a Model to a Ready InferenceService, training excluded.

    .venv/bin/python bench/operator_ready.py [--runs 5] [--interval 10]

Starts a control plane of its own (scripts/cluster.py: etcd, the API server, controllers, kwok's nodes
and KServe's controller in Standard mode), applies the Model CRD and a modelyard ServingRuntime, trains
the iris example once with `modelyard train --in-process --auto-deploy` into a SQLite registry and a
file:// store (so a production version exists and no run is waited for), and starts `modelyard operator
--all-namespaces` with MODELYARD_OPERATOR__INTERVAL_S=--interval. Each run applies the Model in a fresh
namespace and polls the API server every 50 ms for the InferenceService's Ready condition and the Model's.
kwok's pods are Ready at once, so the figure is the control plane's and the operator's share, not an
image pull or a model load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELYARD = str(Path(sys.executable).parent / "modelyard")


def load_cluster_module() -> Any:
    spec = importlib.util.spec_from_file_location("modelyard_bench_cluster", ROOT / "scripts" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ready(document: dict[str, Any] | None) -> bool:
    for condition in ((document or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval", type=float, default=10.0, help="MODELYARD_OPERATOR__INTERVAL_S")
    args = parser.parse_args()

    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    from modelyard.operator.crd import CHART_CRD

    cluster = load_cluster_module()
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-operator-") as scratch:
        work = Path(scratch)
        plane = cluster.ControlPlane(work / "cluster")
        kubeconfig = plane.start()
        operator = None
        try:
            plane.kubectl("apply", "--server-side", "-f", str(CHART_CRD))
            plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/models.modelyard.io")
            env = {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "MODELYARD_HOME": str(work / "home"),
                "MODELYARD_DATABASE_URL": f"sqlite:///{work / 'registry.db'}",
                "MODELYARD_STORE_URI": f"file://{work / 'store'}",
                "MODELYARD_OPERATOR__INTERVAL_S": str(args.interval),
            }
            train = [MODELYARD, "train", "--spec", str(ROOT / "examples" / "iris.yaml"), "--in-process"]
            train += ["--auto-deploy", "--set", "algorithms=[logistic_regression]"]
            train += ["--set", "search.trials=2", "--set", "gate.min_score=0.5"]
            subprocess.run(train, env=env, check=True, capture_output=True)
            log = (work / "operator.log").open("wb")
            operator = subprocess.Popen(
                [MODELYARD, "operator", "--all-namespaces"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))
            resource = yaml.safe_load((ROOT / "examples" / "iris-model.yaml").read_text())
            resource["spec"]["data"] = {"path": str(ROOT / "examples" / "data" / "iris.csv")}
            del resource["spec"]["training"]
            runtime = {
                "apiVersion": "serving.kserve.io/v1alpha1",
                "kind": "ServingRuntime",
                "metadata": {"name": "modelyard"},
                "spec": {
                    "supportedModelFormats": [{"name": "modelyard", "version": "1", "autoSelect": True}],
                    "protocolVersions": ["v2"],
                    "containers": [{"name": "kserve-container", "image": "modelyard/predictor:bench"}],
                },
            }
            service_times, model_times = [], []
            for run in range(args.runs):
                namespace = f"bench-{run}"
                plane.create_namespace(namespace)
                plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(runtime))
                started = time.monotonic()
                plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(resource))
                service_at = model_at = None
                while model_at is None or service_at is None:
                    now = time.monotonic() - started
                    if now > 300:
                        raise SystemExit(f"run {run}: not Ready after 300 s; see {work / 'operator.log'}")
                    try:
                        service = api.get_namespaced_custom_object(
                            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", "iris"
                        )
                    except ApiException:
                        service = None
                    if service_at is None and ready(service):
                        service_at = now
                    model = api.get_namespaced_custom_object(
                        "modelyard.io", "v1alpha1", namespace, "models", "iris"
                    )
                    if model_at is None and ready(model):
                        model_at = now
                    time.sleep(0.05)
                service_times.append(service_at)
                model_times.append(model_at)
                print(f"run {run}: InferenceService Ready {service_at:.2f} s, Model Ready {model_at:.2f} s")
            for label, times in (("InferenceService Ready", service_times), ("Model Ready", model_times)):
                print(
                    f"{label}: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
                    f"max {max(times):.2f} s over {len(times)} runs (interval {args.interval:g} s)"
                )
        finally:
            if operator is not None:
                operator.terminate()
                operator.wait(15)
            plane.stop()


if __name__ == "__main__":
    main()
