"""Compile the pipelines to KFP IR YAML, and drive a real Kubeflow Pipelines through `kfp.Client`."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _arguments(
    spec: ModelSpec, auto_deploy: bool, inference_service: str, namespace: str, run_id: str = ""
) -> dict[str, Any]:
    return {
        "spec_yaml": spec_to_yaml(spec),
        "auto_deploy": auto_deploy,
        "inference_service": inference_service,
        "namespace": namespace,
        "run_id": run_id,
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
    host: str,
    spec: ModelSpec,
    *,
    auto_deploy: bool,
    inference_service: str,
    namespace: str,
    run_name: str = "",
) -> Submitted:
    """Start one run of the training pipeline for ``spec``; a ``run_name`` given is also the run id its
    version is registered under (the operator finds the run's version by it)."""
    client = _client(host)
    with tempfile.TemporaryDirectory() as scratch:
        package = compile_pipelines(Path(scratch))[0]
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=_arguments(spec, auto_deploy, inference_service, namespace, run_name),
            run_name=run_name or f"{spec.name}-{_stamp()}",
            experiment_name=EXPERIMENT,
            namespace=None,
        )
    return Submitted("run", result.run_id, f"{host}/#/runs/details/{result.run_id}")


@dataclass(frozen=True)
class RunState:
    """A KFP run as `kfp.Client.get_run` reports it: its state (V2beta1RuntimeState's names) and error."""

    id: str
    state: str
    error: str


def find_run(host: str, run_name: str) -> str | None:
    """The id of the newest run named ``run_name``, if KFP has one."""
    import json

    client = _client(host)
    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": run_name}
    with _reaching(host):
        found = client.list_runs(
            page_size=1, sort_by="created_at desc", filter=json.dumps({"predicates": [predicate]})
        )
    runs = found.runs or []
    return str(runs[0].run_id) if runs else None


def run_state(host: str, run_id: str) -> RunState:
    """How the run ``run_id`` stands."""
    client = _client(host)
    with _reaching(host):
        found = client.get_run(run_id)
    error = found.error.message if found.error is not None and found.error.message else ""
    return RunState(run_id, str(found.state or "RUNTIME_STATE_UNSPECIFIED"), error)


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


@contextmanager
def _reaching(host: str) -> Iterator[None]:
    """KFP's API and transport errors as a ModelyardError naming the host."""
    import kfp_server_api  # type: ignore[import-untyped]
    import urllib3

    try:
        yield
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ModelyardError(f"Kubeflow Pipelines at {host}: {exc}") from exc


def _stamp() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
