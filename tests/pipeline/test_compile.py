"""Compiled pipelines: fresh, loadable by KFP, credentials injected from Kubernetes; a valid deploy patch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kfp import components

from modelyard.deploy.kube import storage_uri_patch
from modelyard.errors import InvalidInput
from modelyard.pipeline.client import compile_pipelines, kfp_cron

from ..conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "pipelines"
SCHEMAS = ROOT.parent / "shared" / "schemas"
CREDENTIAL_TASKS = ("fingerprint", "prepare", "decide", "publish", "deploy")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("MODELYARD_PIPELINE__")}
    for key in saved:
        del os.environ[key]
    try:
        return {path.name: path for path in compile_pipelines(tmp_path_factory.mktemp("compiled"))}
    finally:
        os.environ.update(saved)


def test_checked_in_pipelines_are_fresh(compiled: dict[str, Path]) -> None:
    assert compiled, "nothing compiled"
    for name, fresh in compiled.items():
        checked_in = CHECKED_IN / name
        assert checked_in.exists(), f"pipelines/{name} is missing: run `modelyard pipeline compile`"
        assert checked_in.read_text() == fresh.read_text(), (
            f"pipelines/{name} is stale: run `modelyard pipeline compile` and commit it"
        )


def test_packages_load_with_kfp(compiled: dict[str, Path]) -> None:
    training = components.load_component_from_file(str(CHECKED_IN / "training.yaml"))
    assert training.name == "modelyard-training"
    assert {"spec_yaml", "auto_deploy", "inference_service", "namespace"} <= set(
        training.component_spec.inputs
    )
    for name in compiled:
        assert components.load_component_from_file(str(CHECKED_IN / name)).name


def _platform_executors(package: Path) -> dict[str, Any]:
    documents = list(yaml.safe_load_all(package.read_text()))
    platform = next(doc for doc in documents if doc and "platforms" in doc)
    executors: dict[str, Any] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return executors


def test_credentials_come_from_kubernetes_secrets_and_config_map() -> None:
    executors = _platform_executors(CHECKED_IN / "training.yaml")
    for task in CREDENTIAL_TASKS:
        config = executors[f"exec-{task}"]
        secrets = {entry["secretName"]: entry for entry in config["secretAsEnv"]}
        assert set(secrets) == {"modelyard-database", "modelyard-s3"}, task
        env_from_secrets = {pair["envVar"] for entry in secrets.values() for pair in entry["keyToEnv"]}
        assert env_from_secrets == {"MODELYARD_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        config_maps = config["configMapAsEnv"]
        assert config_maps[0]["configMapName"] == "modelyard-config"
        assert {p["envVar"] for p in config_maps[0]["keyToEnv"]} == {
            "MODELYARD_STORE_URI",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
        }
    assert "exec-tune" not in executors, "tuning needs no credentials"


def test_the_database_url_is_read_under_the_secret_key_the_settings_name(tmp_path: Path) -> None:
    """An external database's Secret (the chart's externalDatabase.urlKey) may hold the URL under any key.
    The pipeline reads its settings when it is defined, at import: so a process of its own compiles it."""
    env = {
        **os.environ,
        "MODELYARD_PIPELINE__DATABASE_SECRET": "acme-db",
        "MODELYARD_PIPELINE__DATABASE_SECRET_KEY": "url",
    }
    modelyard = str(Path(sys.executable).parent / "modelyard")
    done = subprocess.run(
        [modelyard, "pipeline", "compile", "--output-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    executors = _platform_executors(tmp_path / "training.yaml")
    for task in CREDENTIAL_TASKS:
        secrets = {entry["secretName"]: entry for entry in executors[f"exec-{task}"]["secretAsEnv"]}
        assert secrets["acme-db"]["keyToEnv"] == [{"secretKey": "url", "envVar": "MODELYARD_DATABASE_URL"}]


def test_components_run_in_the_project_image_without_installing_packages() -> None:
    package = (CHECKED_IN / "training.yaml").read_text()
    spec = next(doc for doc in yaml.safe_load_all(package) if doc and "deploymentSpec" in doc)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == "ghcr.io/modelyard/modelyard:0.1.0", name
        assert "pip install" not in " ".join(container["command"]), f"{name} installs packages at run time"


def test_the_pipeline_has_the_issue_s_shape() -> None:
    package = (CHECKED_IN / "training.yaml").read_text()
    fragments = ["parameterIterator", "triggerPolicy", "system.ClassificationMetrics", "system.HTML"]
    fragments += ["system.Markdown", "system.Metrics", "system.Model", "system.Dataset"]
    for fragment in fragments:
        assert fragment in package, fragment
    spec = next(doc for doc in yaml.safe_load_all(package) if doc and "deploymentSpec" in doc)
    executors = {name.removeprefix("exec-") for name in spec["deploymentSpec"]["executors"]}
    assert executors == {"fingerprint", "prepare", "tune", "decide", "publish", "reject", "deploy"}


def test_only_the_steps_keyed_on_the_data_s_content_are_cached() -> None:
    package = (CHECKED_IN / "training.yaml").read_text()
    spec = next(doc for doc in yaml.safe_load_all(package) if doc and "root" in doc)
    tasks = {**spec["root"]["dag"]["tasks"]}
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    components = spec["components"]
    cached = {
        name
        for name, task in tasks.items()
        if task.get("cachingOptions", {}).get("enableCache")
        and "executorLabel" in components[task["componentRef"]["name"]]  # a task, not a sub-DAG
    }
    assert cached == {"prepare", "tune"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("0 3 * * *", "0 0 3 * * *"),
        ("30 0 3 * * 1-5", "30 0 3 * * 1-5"),
        ("*/15  *  * * *", "0 */15 * * * *"),
    ],
)
def test_cron_expressions_become_kfp_s_six_fields(given: str, expected: str) -> None:
    assert kfp_cron(given) == expected


@pytest.mark.parametrize("bad", ["", "every day", "0 3 * *", "0 0 3 * * * *", "0 3 * * * ; rm"])
def test_bad_cron_is_refused_with_an_example(bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"expected 5 fields .* e\.g\. '0 3 \* \* \*'"):
        kfp_cron(bad)


def _closed(schema: Any) -> Any:
    """Treat `properties` without `additionalProperties` as closed, so a misspelled field is caught."""
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        open_by_design = schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and "additionalProperties" not in schema and not open_by_design:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def test_deploy_patch_keeps_the_inference_service_valid() -> None:
    schema_file = SCHEMAS / "inferenceservice_serving_v1beta1.json"
    if not schema_file.exists():
        unavailable(f"{schema_file} not found: shared/ belongs beside the repository")
    schema = _closed(json.loads(schema_file.read_text()))
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "modelyard"}, "runtime": "modelyard"}}},
    }
    patched = _merge(isvc, storage_uri_patch("s3://models/iris/3"))
    jsonschema.validate(patched["spec"] | {}, schema["properties"]["spec"])
    assert patched["spec"]["predictor"]["model"]["storageUri"] == "s3://models/iris/3"
    misspelled = _merge(isvc, {"spec": {"predictor": {"model": {"storageURI": "s3://x"}}}})
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        jsonschema.validate(misspelled["spec"], schema["properties"]["spec"])
