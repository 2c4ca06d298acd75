"""The chart's artifacts through real tools: promtool, checkov, hadolint, skaffold's schema, kustomize, and
the scripts the chart's pods run, run here against a real S3 gateway and a real predictor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelyard.deploy import chart

from ..conftest import S3Service
from ..serving.conftest import server_env, start_server, write_tiny_bundle
from .conftest import CASE_IDS, ROOT, named, of_kind, rendered, shared_dir

CHECKOV_VENV = ROOT / ".venv-checkov"
CHECKOV_VERSION = "3.3.30"
DOCKERFILES = [ROOT / "model-server" / "Dockerfile", ROOT / "images" / "modelyard" / "Dockerfile"]


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, **kwargs)


# ---------------------------------------------------------------- Prometheus rules and config


def _rule_files(case: str) -> list[dict[str, Any]]:
    objects = rendered(case)
    files = []
    for config_map in of_kind(objects, "ConfigMap"):
        if config_map["metadata"]["name"] == "modelyard-rules":
            files += [yaml.safe_load(text) for text in config_map["data"].values()]
    files += [{"groups": rule["spec"]["groups"]} for rule in of_kind(objects, "PrometheusRule")]
    return files


@pytest.mark.parametrize("case", ["01-bundled", "03-kube-prometheus-stack"])
def test_rendered_rules_pass_promtool(case: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    files = _rule_files(case)
    assert files
    paths = []
    for index, document in enumerate(files):
        path = tmp_path / f"rules-{index}.yaml"
        path.write_text(yaml.safe_dump(document))
        paths.append(str(path))
    result = run([promtool, "check", "rules", *paths])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_bundled_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """Debian builds Prometheus without Kubernetes service discovery, so promtool checks the config with
    the pod discovery swapped for a static target: every relabelling rule is still parsed and checked."""
    config = named(rendered("01-bundled"), "ConfigMap", "modelyard-prometheus")["data"]["prometheus.yml"]
    document = yaml.safe_load(config)
    scrape = document["scrape_configs"][1]
    assert scrape["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["ml"]}}]
    assert document["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    del scrape["kubernetes_sd_configs"]
    scrape["static_configs"] = [{"targets": ["127.0.0.1:8082"]}]
    document["rule_files"] = []
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(document))
    result = run([str(shutil.which("promtool")), "check", "config", "--syntax-only", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "x", "expr": "rate(x[5m]"}]}]})
    )
    result = run([str(shutil.which("promtool")), "check", "rules", str(path)])
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


# ---------------------------------------------------------------- checkov and hadolint


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov in a virtualenv of its own: its pins (boto3, packaging, ...) clash with the project's."""
    binary = CHECKOV_VENV / "bin" / "checkov"
    if not binary.exists():
        # this environment's pip installs into it (--python): no pip of its own to bootstrap, and the
        # newer pip resolves and installs checkov's tree in half the time of the venv's bundled one
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(CHECKOV_VENV)], check=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(CHECKOV_VENV / "bin" / "python"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"checkov=={CHECKOV_VERSION}",
            ],
            check=True,
            timeout=900,
        )
    return binary


def _checkov(binary: Path, *arguments: str) -> dict[str, Any]:
    result = run(
        [str(binary), "--config-file", str(Path(__file__).parent / "checkov.yaml"), "-o", "json", *arguments]
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    return {
        "passed": sum(r["summary"]["passed"] for r in reports),
        "failed": [
            f"{c['check_id']} {c['resource']} ({c['file_path']})"
            for r in reports
            for c in r["results"]["failed_checks"]
        ],
    }


def test_checkov_passes_the_rendered_manifests_of_every_case(checkov: Path, tmp_path: Path) -> None:
    for case in CASE_IDS:
        (tmp_path / f"{case}.yaml").write_text("---\n".join(yaml.safe_dump(obj) for obj in rendered(case)))
    outcome = _checkov(checkov, "-d", str(tmp_path), "--framework", "kubernetes")
    assert outcome["passed"] > 1000
    assert not outcome["failed"]


def test_checkov_passes_both_dockerfiles(checkov: Path) -> None:
    arguments = [part for path in DOCKERFILES for part in ("-f", str(path))]
    outcome = _checkov(checkov, *arguments, "--framework", "dockerfile")
    assert outcome["passed"] > 0
    assert not outcome["failed"]


def test_checkov_catches_a_privileged_pod(checkov: Path, tmp_path: Path) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "ml"},
        "spec": {"containers": [{"name": "c", "image": "x:1", "securityContext": {"privileged": True}}]},
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(pod))
    outcome = _checkov(checkov, "-d", str(tmp_path), "--framework", "kubernetes")
    assert any(failure.startswith("CKV_K8S_16 ") for failure in outcome["failed"])


def test_the_platform_image_is_hadolint_clean_and_runs_as_uid_1000() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    dockerfile = ROOT / "images" / "modelyard" / "Dockerfile"
    result = run([str(hadolint), str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "USER 1000:0" in text
    assert "[pipelines,onnx]" in text


# ---------------------------------------------------------------- skaffold, kind, manifests/, README


def test_skaffold_yaml_matches_its_schema_and_builds_both_images() -> None:
    schema = json.loads((shared_dir() / "schemas" / "skaffold_v4beta14.json").read_text())
    document = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert not [error.message for error in validator.iter_errors(document)]
    assert document["apiVersion"] == "skaffold/v4beta14"
    dockerfiles = {artifact["docker"]["dockerfile"] for artifact in document["build"]["artifacts"]}
    assert dockerfiles == {"model-server/Dockerfile", "images/modelyard/Dockerfile"}
    (release,) = document["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "charts/modelyard"
    # every value skaffold sets is a value the chart's schema knows
    values: dict[str, Any] = {}
    for key, value in release["setValueTemplates"].items():
        values = chart.merge_values(values, chart.parse_set(f"{key}={'x' if '{{' in str(value) else value}"))
    chart.render(values)
    misspelt = json.loads(json.dumps(document))
    misspelt["deploy"]["helm"]["releases"][0]["setValueTemplate"] = {}
    assert list(validator.iter_errors(misspelt))


def test_kind_config_pins_the_node_image_by_digest_and_maps_ports() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = config["nodes"]
    image, _, digest = node["image"].partition("@sha256:")
    assert image.startswith("kindest/node:v1.") and len(digest) == 64
    assert {m["hostPort"] for m in node["extraPortMappings"]} == {8080, 3000}
    assert "config_path" in config["containerdConfigPatches"][0]


def test_manifests_are_rendered_from_the_chart() -> None:
    expected = chart.manifest_files(chart.render(crds=True))
    on_disk = {path.name: path.read_text() for path in (ROOT / "manifests").glob("*.yaml")}
    assert sorted(on_disk) == sorted(expected), "manifests/ is stale: run `make manifests`"
    for name, text in expected.items():
        assert chart.masked(on_disk[name]) == chart.masked(text), (
            f"manifests/{name} is stale: run `make manifests`"
        )


def test_manifests_hold_no_helm_hooks_or_tests() -> None:
    text = "".join(path.read_text() for path in (ROOT / "manifests").glob("*.yaml"))
    assert "helm.sh/hook" not in text
    assert "modelyard-test" not in text
    kustomization = yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "modelyard"


def test_the_chart_readme_documents_every_value() -> None:
    readme = (chart.CHART_DIR / "README.md").read_text()
    assert chart.readme_with_values_table(readme, chart.values_table()) == readme, "run `make chart-docs`"
    schema = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
    for key in schema["properties"]:
        assert f"`{key}" in readme


def test_every_value_in_values_yaml_has_a_described_row_in_the_table() -> None:
    table = chart.values_table()
    rows = {line.split("`")[1]: line for line in table.splitlines()[2:]}
    defaults = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())

    def documented(values: dict[str, Any], path: str) -> None:
        for key, value in values.items():
            dotted = f"{path}.{key}" if path else key
            if dotted in rows:
                assert not rows[dotted].endswith("|  |"), f"{dotted} has no description"
            elif isinstance(value, dict):
                documented(value, dotted)
            else:
                pytest.fail(f"values.yaml's {dotted} is not in the values table")

    documented(defaults, "")


# ---------------------------------------------------------------- the pods' scripts, run here


def test_the_bucket_job_creates_the_bucket_and_is_idempotent(s3: S3Service) -> None:
    bucket = f"chart-{os.getpid()}"
    env = {**os.environ, **s3.env(), "MODELYARD_STORE_URI": f"s3://{bucket}", "BUCKET_WAIT_SECONDS": "10"}
    script = chart.CHART_DIR / "files" / "create-bucket.py"
    first = run([sys.executable, str(script)], env=env)
    assert first.returncode == 0, first.stderr
    assert f"created bucket {bucket}" in first.stdout
    second = run([sys.executable, str(script)], env=env)
    assert f"bucket {bucket} exists" in second.stdout
    assert bucket in {b["Name"] for b in s3.client().list_buckets()["Buckets"]}


def test_the_bucket_job_names_an_unreachable_endpoint() -> None:
    env = {
        **os.environ,
        "MODELYARD_STORE_URI": "s3://nowhere",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "b",
        "AWS_REGION": "us-east-1",
        "BUCKET_WAIT_SECONDS": "0",
    }
    result = run([sys.executable, str(chart.CHART_DIR / "files" / "create-bucket.py")], env=env)
    assert result.returncode == 1
    assert "cannot create bucket nowhere" in result.stderr


@pytest.mark.parametrize("kind", ["numeric", "mixed"])
def test_the_helm_test_script_infers_through_a_real_predictor(kind: str, tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "bundle", kind, name="iris")
    server = start_server(tmp_path / "bundle", tmp_path / "home", wait_for="/v2/health/ready")
    try:
        env = {**server_env(tmp_path), "MODEL_URL": server.url, "MODEL_NAME": "iris", "TIMEOUT_SECONDS": "30"}
        result = run([sys.executable, str(chart.CHART_DIR / "files" / "helm-test.py")], env=env)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "iris: ready, and one V2 inference answered" in result.stdout


def test_the_helm_test_script_fails_naming_a_model_that_never_gets_ready(tmp_path: Path) -> None:
    env = {**os.environ, "MODEL_URL": "http://127.0.0.1:9", "MODEL_NAME": "iris", "TIMEOUT_SECONDS": "1"}
    result = run([sys.executable, str(chart.CHART_DIR / "files" / "helm-test.py")], env=env)
    assert result.returncode == 1
    assert "model iris at http://127.0.0.1:9 not ready" in result.stderr
