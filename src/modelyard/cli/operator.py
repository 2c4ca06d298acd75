"""`modelyard operator`: the Model resource's controller (kopf), in the foreground until stopped; and
`modelyard request-run`, which asks it for a run of one Model (what a schedule's CronJob runs)."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Annotated

import typer

from modelyard.cli.common import err, out, reports_errors, settings
from modelyard.errors import InvalidInput, ModelyardError
from modelyard.settings import Settings

if TYPE_CHECKING:
    from modelyard.monitoring.prometheus_server import PrometheusServer
    from modelyard.operator.kube import Cluster
    from modelyard.operator.local import LocalPods


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
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Run training Jobs and predictors on this machine (the local control plane runs no pods), "
            "and a Prometheus that scrapes them when MODELYARD_OPERATOR__PROMETHEUS_URL is unset.",
        ),
    ] = False,
) -> None:
    """Train, serve and roll out every Model resource (models.modelyard.io) it watches."""
    if bool(namespaces) == all_namespaces:
        raise InvalidInput("give --namespace NAME (one or more) or --all-namespaces: one of the two")
    import kopf

    from modelyard.operator.controller import Controller, build_registry
    from modelyard.operator.kube import Cluster
    from modelyard.operator.local import register, stop_local
    from modelyard.registry import Registry

    current = settings()
    local = local or current.operator.local
    if local:
        current = current.model_copy(update={"operator": current.operator.model_copy(update={"local": True})})
    with Registry(current.database_url) as registry:
        cluster = Cluster()
        pods, prometheus = None, None
        if local:
            pods, current, prometheus = start_local(current, cluster)
        try:
            controller = Controller(settings=current, cluster=cluster, registry=registry)
            kopf_registry = build_registry(controller, clusterwide=all_namespaces)
            if pods is not None:
                register(kopf_registry, pods)
            watched = "every namespace" if all_namespaces else ", ".join(namespaces or [])
            where = "; training and predictors run on this machine" if local else ""
            say(f"modelyard operator: watching Models in {watched}{where}")
            kopf.run(
                registry=kopf_registry,
                standalone=True,
                clusterwide=all_namespaces,
                namespaces=namespaces or [],
                liveness_endpoint=liveness,
            )
        finally:
            if pods is not None:
                stop_local(pods, prometheus)


def say(line: str) -> None:
    err.print(line, highlight=False)


def start_local(current: Settings, cluster: Cluster) -> tuple[LocalPods, Settings, PrometheusServer | None]:
    """The local pods' runner, the settings to run with (a Prometheus started here for the analyses) and
    that Prometheus; KServeRunning when KServe's manager would fight the runner for the InferenceServices'
    status."""
    from modelyard.monitoring.prometheus_server import PROMETHEUS_PROGRAM
    from modelyard.operator.local import LocalPods, analysis_prometheus, check_no_kserve

    check_no_kserve(cluster.client.client)
    pods = LocalPods(current, cluster, say)
    current, prometheus = analysis_prometheus(current, shutil.which(PROMETHEUS_PROGRAM), say)
    return pods, current, prometheus


@reports_errors
def request_run_command(
    model: Annotated[str, typer.Argument(help="The Model resource's name.")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="The Model's namespace.")],
) -> None:
    """Ask the operator for one training run of a Model now, as its schedule does: the operator starts
    it with the Model's runner (a Job, or a KFP run), or skips it while a run is in flight."""
    import urllib3
    from kubernetes.dynamic.exceptions import DynamicApiError

    from modelyard.operator.children import SCHEDULE
    from modelyard.operator.launcher import ModelResourceLauncher, RequestRefused

    try:
        request = ModelResourceLauncher(namespace).start(model, SCHEDULE)
    except DynamicApiError as exc:
        message = f"cannot ask Model {namespace}/{model} for a run: {exc.summary()}"
        if exc.status == 403:
            # its own exit code: the schedule's Job fails at once, and the operator names the Role
            hint = " (its ServiceAccount needs patch on models.modelyard.io)"
            raise RequestRefused(message + hint) from exc
        raise ModelyardError(message) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise ModelyardError(f"cannot reach the Kubernetes API server: {exc}") from exc
    out.print(f"asked the operator for a run: {request}", highlight=False)
