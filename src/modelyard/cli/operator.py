"""`modelyard operator`: the Model resource's controller (kopf), in the foreground until stopped."""

from __future__ import annotations

from typing import Annotated

import typer

from modelyard.cli.common import err, reports_errors, settings
from modelyard.errors import InvalidInput


@reports_errors
def operator_command(
    namespaces: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch Models in this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch Models in every namespace.")
    ] = False,
    liveness: Annotated[
        str | None,
        typer.Option("--liveness", help="Serve a liveness probe here, e.g. http://0.0.0.0:8080/healthz."),
    ] = None,
) -> None:
    """Train, serve and roll out every Model resource (models.modelyard.io) it watches."""
    if bool(namespaces) == all_namespaces:
        raise InvalidInput("give --namespace NAME (one or more) or --all-namespaces: one of the two")
    import kopf

    from modelyard.operator.controller import Controller, build_registry
    from modelyard.operator.kube import Cluster
    from modelyard.registry import Registry

    current = settings()
    with Registry(current.database_url) as registry:
        controller = Controller(settings=current, cluster=Cluster(), registry=registry)
        watched = "every namespace" if all_namespaces else ", ".join(namespaces or [])
        err.print(f"modelyard operator: watching Models in {watched}", highlight=False)
        kopf.run(
            registry=build_registry(controller, clusterwide=all_namespaces),
            standalone=True,
            clusterwide=all_namespaces,
            namespaces=namespaces or [],
            liveness_endpoint=liveness,
        )
