"""`modelyard install` and `modelyard deploy`: the Helm chart on a cluster, and a version on its
InferenceService (the logic lives in modelyard.deploy)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli.common import MODEL_REF_HELP, model_ref, out, reports_errors, settings
from modelyard.registry.refs import ModelRef


@reports_errors
def install_command(
    values: Annotated[
        list[Path] | None, typer.Option("--values", "-f", help="Values file (repeatable).")
    ] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY.PATH=VALUE (repeatable).")] = None,
    release: Annotated[str, typer.Option("--release", help="Helm release name.")] = "modelyard",
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace (created if missing).")
    ] = "modelyard",
    kubeconfig: Annotated[Path | None, typer.Option("--kubeconfig", help="Kubeconfig file.")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")] = None,
    helm: Annotated[
        Path | None, typer.Option("--helm", help="helm binary (default: PATH, then make k8s-tools').")
    ] = None,
    chart: Annotated[
        Path | None, typer.Option("--chart", help="Chart folder (default: charts/modelyard).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until everything is ready.")] = True,
    timeout: Annotated[str, typer.Option("--timeout", help="How long helm waits, e.g. 10m.")] = "10m",
) -> None:
    """Install the Helm chart, or upgrade it, with values (through pyhelm3 and the helm binary)."""
    from modelyard.deploy.chart import CHART_DIR, load_values
    from modelyard.deploy.install import install

    installed = install(
        release,
        namespace,
        load_values(values or [], sets or []),
        helm=helm,
        chart_dir=chart or CHART_DIR,
        kubeconfig=kubeconfig,
        context=context,
        wait=wait,
        timeout=timeout,
    )
    out.print(
        f"{installed.release} revision {installed.revision} in {installed.namespace}: {installed.status}"
    )
    if installed.notes:
        out.print(installed.notes, highlight=False, markup=False)


@reports_errors
def deploy_command(
    model: Annotated[
        ModelRef, typer.Option("--model", "-m", parser=model_ref, metavar="REF", help=MODEL_REF_HELP)
    ],
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace of the InferenceService.")
    ] = "modelyard",
    inference_service: Annotated[
        str | None, typer.Option("--inference-service", help="InferenceService name (default: the model's).")
    ] = None,
    kubeconfig: Annotated[Path | None, typer.Option("--kubeconfig", help="Kubeconfig file.")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")] = None,
) -> None:
    """Point an InferenceService at a version's bundle (KServe rolls it out), then put it in production."""
    from modelyard.deploy.kube import deploy

    deployed = deploy(
        settings(),
        model,
        namespace=namespace,
        inference_service=inference_service,
        kubeconfig=kubeconfig,
        context=context,
    )
    out.print(
        f"{deployed.name}@{deployed.version} is in production: InferenceService "
        f"{deployed.namespace}/{deployed.inference_service} serves {deployed.storage_uri}",
        highlight=False,
    )
