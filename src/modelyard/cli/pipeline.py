"""`modelyard pipeline`: compile the pipelines; upload, run and schedule them on Kubeflow Pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelyard.cli.common import SetOption, err, out, reports_errors, settings

app = typer.Typer(
    help="Compile the pipelines; upload, run and schedule them on Kubeflow.", no_args_is_help=True
)

HostOption = Annotated[
    str | None, typer.Option("--host", help="KFP API endpoint; default MODELYARD_PIPELINE__HOST.")
]
SpecOption = Annotated[Path, typer.Option("--spec", "-s", help="ModelSpec YAML file.")]
DeployOption = Annotated[
    bool, typer.Option("--auto-deploy", help="Deploy the published version (patch the InferenceService).")
]
ServiceOption = Annotated[
    str, typer.Option("--inference-service", help="InferenceService to deploy to; default the model name.")
]


@app.command("compile")
@reports_errors
def pipeline_compile(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write.")] = Path(
        "pipelines"
    ),
) -> None:
    """Write the pipelines' KFP IR YAML (training.yaml, batch-scoring.yaml), ready for the KFP UI."""
    from modelyard.pipeline.client import compile_pipelines

    for path in compile_pipelines(output_dir):
        err.print(f"wrote {path}", highlight=False)


def _host(host: str | None) -> str:
    return host or settings().pipeline.host


def _print_submitted(submitted: Any) -> None:
    err.print(f"created {submitted.kind} [bold]{submitted.id}[/]", highlight=False)
    out.print(submitted.url, highlight=False)


@app.command("upload")
@reports_errors
def pipeline_upload(
    host: HostOption = None,
    name: Annotated[str, typer.Option("--name", help="Pipeline name in KFP.")] = "modelyard-training",
) -> None:
    """Upload the training pipeline to KFP (a new version if it exists)."""
    from modelyard.pipeline.client import upload

    _print_submitted(upload(_host(host), name, "modelyard: spec -> tuned, gated, published model"))


@app.command("run")
@reports_errors
def pipeline_run(
    spec_file: SpecOption,
    overrides: SetOption = None,
    host: HostOption = None,
    auto_deploy: DeployOption = False,
    inference_service: ServiceOption = "",
) -> None:
    """Start a run of the training pipeline on KFP for a spec."""
    from modelyard.pipeline.client import run
    from modelyard.spec import load_spec

    spec = load_spec(spec_file, overrides or [])
    submitted = run(
        _host(host),
        spec,
        auto_deploy=auto_deploy,
        inference_service=inference_service,
        namespace=settings().pipeline.namespace,
    )
    _print_submitted(submitted)


@app.command("schedule")
@reports_errors
def pipeline_schedule(
    spec_file: SpecOption,
    cron: Annotated[str, typer.Option("--cron", help="When to retrain, e.g. '0 3 * * *' (03:00 daily).")],
    overrides: SetOption = None,
    host: HostOption = None,
    auto_deploy: DeployOption = False,
    inference_service: ServiceOption = "",
) -> None:
    """Retrain on a schedule: a KFP recurring run of the training pipeline."""
    from modelyard.pipeline.client import kfp_cron, schedule
    from modelyard.spec import load_spec

    kfp_cron(cron)  # a bad expression fails before anything is contacted
    spec = load_spec(spec_file, overrides or [])
    submitted = schedule(
        _host(host),
        spec,
        cron,
        auto_deploy=auto_deploy,
        inference_service=inference_service,
        namespace=settings().pipeline.namespace,
    )
    _print_submitted(submitted)
