"""Compile the pipelines to KFP IR YAML, and drive a real Kubeflow Pipelines through `kfp.Client`."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import InvalidInput, ModelyardError
from modelyard.pipeline.steps import spec_to_yaml
from modelyard.spec import ModelSpec

TRAINING_PACKAGE = "training.yaml"
SCORING_PACKAGE = "batch-scoring.yaml"
EXPERIMENT = "modelyard"


def _pipelines() -> dict[str, Callable[..., Any]]:
    from modelyard.pipeline.training import training_pipeline

    found: dict[str, Callable[..., Any]] = {TRAINING_PACKAGE: training_pipeline}
    try:
        from modelyard.pipeline.scoring import batch_scoring_pipeline
    except ImportError:  # pragma: no cover - the scoring pipeline ships with the package
        return found
    found[SCORING_PACKAGE] = batch_scoring_pipeline
    return found


def compile_pipelines(output_dir: Path) -> list[Path]:
    """Write every pipeline's IR YAML into ``output_dir``; return the files written."""
    from kfp import compiler

    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, pipeline in _pipelines().items():
        target = output_dir / file_name
        compiler.Compiler().compile(pipeline, str(target))
        written.append(target)
    return written


# Six fields, as KFP's scheduler reads them: second minute hour day-of-month month day-of-week.
_CRON_FIELD = r"[\d*/,\-?A-Za-z]+"
_CRON = re.compile(rf"^{_CRON_FIELD}( {_CRON_FIELD}){{4,5}}$")


def kfp_cron(expression: str) -> str:
    """Accept a 5-field (standard) or 6-field (KFP, with seconds) cron; return KFP's 6-field form."""
    text = " ".join(expression.split())
    if not _CRON.match(text):
        raise InvalidInput(
            f"--cron {expression!r}: expected 5 fields (minute hour day month weekday), "
            f"or KFP's 6 with seconds first, e.g. '0 3 * * *' for 03:00 every day"
        )
    return text if len(text.split(" ")) == 6 else f"0 {text}"


@dataclass(frozen=True)
class Submitted:
    kind: str  # pipeline, run, recurring run
    id: str
    url: str


def _client(host: str) -> Any:
    if not host:
        raise InvalidInput(
            "no KFP host: pass --host or set MODELYARD_PIPELINE__HOST (e.g. http://localhost:8888)"
        )
    import kfp

    try:
        return kfp.Client(host=host)
    except Exception as exc:
        raise ModelyardError(f"cannot reach Kubeflow Pipelines at {host}: {exc}") from exc


def _arguments(spec: ModelSpec, auto_deploy: bool, inference_service: str, namespace: str) -> dict[str, Any]:
    return {
        "spec_yaml": spec_to_yaml(spec),
        "auto_deploy": auto_deploy,
        "inference_service": inference_service,
        "namespace": namespace,
    }


def upload(host: str, name: str, description: str = "") -> Submitted:
    """Upload the training pipeline, or a new version of it when the name exists."""
    client = _client(host)
    with tempfile.TemporaryDirectory() as scratch:
        package = compile_pipelines(Path(scratch))[0]
        existing = client.get_pipeline_id(name)
        if existing:
            version = client.upload_pipeline_version(
                str(package), pipeline_version_name=f"{name}-{_stamp()}", pipeline_id=existing
            )
            return Submitted(
                "pipeline version", version.pipeline_version_id, f"{host}/#/pipelines/details/{existing}"
            )
        pipeline = client.upload_pipeline(str(package), pipeline_name=name, description=description)
        return Submitted(
            "pipeline", pipeline.pipeline_id, f"{host}/#/pipelines/details/{pipeline.pipeline_id}"
        )


def run(
    host: str, spec: ModelSpec, *, auto_deploy: bool, inference_service: str, namespace: str
) -> Submitted:
    """Start one run of the training pipeline for ``spec``."""
    client = _client(host)
    with tempfile.TemporaryDirectory() as scratch:
        package = compile_pipelines(Path(scratch))[0]
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=_arguments(spec, auto_deploy, inference_service, namespace),
            run_name=f"{spec.name}-{_stamp()}",
            experiment_name=EXPERIMENT,
            namespace=None,
        )
    return Submitted("run", result.run_id, f"{host}/#/runs/details/{result.run_id}")


def schedule(
    host: str,
    spec: ModelSpec,
    cron: str,
    *,
    auto_deploy: bool,
    inference_service: str,
    namespace: str,
) -> Submitted:
    """Create a recurring run of the training pipeline for ``spec`` on a cron schedule."""
    expression = kfp_cron(cron)
    client = _client(host)
    experiment = client.create_experiment(EXPERIMENT)
    with tempfile.TemporaryDirectory() as scratch:
        package = compile_pipelines(Path(scratch))[0]
        job = client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=f"{spec.name}-retrain",
            cron_expression=expression,
            pipeline_package_path=str(package),
            params=_arguments(spec, auto_deploy, inference_service, namespace),
            no_catchup=True,
        )
    return Submitted(
        "recurring run", job.recurring_run_id, f"{host}/#/recurringrun/details/{job.recurring_run_id}"
    )


def _stamp() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
