"""The `modelyard` command line: data, train, models, db.

The CLI only picks files and overrides; everything else comes from Settings (MODELYARD_* variables).
Results go to stdout (tables, or JSON with --json); progress and errors go to stderr.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from modelyard import __version__
from modelyard.errors import ModelyardError
from modelyard.settings import Settings, load_settings

app = typer.Typer(
    name="modelyard",
    help="Classification models from a declared spec to a served, monitored endpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets in the registry database.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions in the registry.", no_args_is_help=True)
db_app = typer.Typer(help="The registry database schema.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")

out = Console(soft_wrap=True)
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a ModelyardError into one red line on stderr and exit code 1, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ModelyardError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False, markup=True)
            raise typer.Exit(1) from exc

    return wrapper


def _settings() -> Settings:
    return load_settings()


def _registry(settings: Settings) -> Any:
    from modelyard.registry import Registry

    return Registry(settings.database_url)


def _print_json(payload: Any) -> None:
    out.print_json(json.dumps(payload, default=str))


def _parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """NAME, NAME@3, NAME@production -> (name, version, stage)."""
    name, _, selector = ref.partition("@")
    if not selector:
        return name, None, None
    if selector.isdigit():
        return name, int(selector), None
    if selector in ("production", "staging", "archived", "none"):
        return name, None, selector
    raise typer.BadParameter(f"{ref!r}: expected NAME, NAME@VERSION or NAME@STAGE (production, staging, ...)")


@contextmanager
def _byte_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit(0)


# ---------------------------------------------------------------- db


@db_app.command("upgrade")
@reports_errors
def db_upgrade() -> None:
    """Apply the registry's migrations (also done automatically on start)."""
    from modelyard.registry.db import upgrade

    settings = _settings()
    revision = upgrade(settings.database_url)
    err.print(f"registry schema at revision [bold]{revision}[/] ({_redact(settings.database_url)})")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------- data


@data_app.command("load")
@reports_errors
def data_load(
    file: Annotated[Path, typer.Argument(help="CSV file to copy into the registry database.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    as_json: JsonFlag = False,
) -> None:
    """Copy a CSV into the registry database as a versioned dataset (same content, same version)."""
    from modelyard.data.ingest import load_csv_dataset

    registry = _registry(_settings())
    with _byte_progress(f"loading {file.name}") as progress:
        record, created = load_csv_dataset(registry, file, name, progress=progress)
    if as_json:
        _print_json({**record.to_dict(), "created": created})
        return
    verb = "loaded" if created else "unchanged, reusing"
    err.print(
        f"{verb} dataset [bold]{record.name}@{record.version}[/]: {record.row_count:,} rows, "
        f"fingerprint {record.fingerprint[:12]}"
    )


@data_app.command("list")
@reports_errors
def data_list(
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this dataset.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List dataset versions."""
    records = _registry(_settings()).list_datasets(name)
    if as_json:
        _print_json([record.to_dict() for record in records])
        return
    table = Table("name", "version", "rows", "columns", "fingerprint", "created", "source")
    for r in records:
        table.add_row(
            r.name,
            str(r.version),
            f"{r.row_count:,}",
            str(len(r.columns)),
            r.fingerprint[:12],
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.source or "",
        )
    out.print(table)


# ---------------------------------------------------------------- train


@app.command("train")
@reports_errors
def train_command(
    spec_file: Annotated[Path, typer.Option("--spec", "-s", help="ModelSpec YAML file.")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a spec field: KEY=VALUE (dotted keys).")
    ] = None,
    auto_deploy: Annotated[
        bool, typer.Option("--auto-deploy", help="Put the published version in production.")
    ] = False,
    in_process: Annotated[
        bool,
        typer.Option("--in-process", help="Run the same steps in this process, without KFP (no cache)."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the training pipeline locally (kfp.local): validate, tune, evaluate, gate, publish."""
    from modelyard.spec import load_spec

    spec = load_spec(spec_file, overrides or [])
    settings = _settings()
    if in_process:
        from modelyard.registry import Stage
        from modelyard.workflow import outcome_summary, run_training

        stage = Stage.PRODUCTION if auto_deploy else Stage.STAGING
        with _step_progress() as progress:
            summary = outcome_summary(run_training(settings, spec, progress=progress, stage=stage))
    else:
        from modelyard.pipeline.local import run_training_locally

        with _task_progress() as on_event:
            run = run_training_locally(settings, spec, auto_deploy=auto_deploy, on_event=on_event)
        summary = run.summary
        if run.cached_tasks:
            reused = Counter(run.cached_tasks)
            listed = ", ".join(f"{task} x{n}" if n > 1 else task for task, n in reused.items())
            err.print(f"reused cached results of: {listed}", highlight=False)
        err.print(f"pipeline log: {run.log_file}", highlight=False)
    if as_json:
        _print_json(summary)
    else:
        _print_training_summary(summary, spec.metric.value)
    if not summary["gate"]["passed"]:
        err.print(
            f"[bold red]gate rejected:[/] {summary['gate']['reason']}; nothing was published", highlight=False
        )
        raise typer.Exit(1)


@contextmanager
def _step_progress() -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar per training step (tune <algorithm>, evaluate, report)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<32}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        tasks: dict[str, Any] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)

        yield update


@contextmanager
def _task_progress() -> Iterator[Callable[[Any], None]]:
    """One line per pipeline task: a spinner while it runs, then its status and time."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err
    ) as bars:
        running: dict[str, list[Any]] = {}  # a loop runs several tasks of one name
        marks = {"SUCCESS": "[green]done[/]", "FAILURE": "[red]failed[/]", "cached": "[cyan]cached[/]"}

        def on_event(event: Any) -> None:
            if event.status == "running":
                running.setdefault(event.task, []).append(bars.add_task(f"{event.task:<20} running", total=1))
                return
            queue = running.get(event.task)
            task_id = queue.pop(0) if queue else bars.add_task("", total=1)
            mark = marks.get(event.status, event.status)
            bars.update(task_id, description=f"{event.task:<20} {mark}", completed=1)
            bars.stop_task(task_id)

        yield on_event


def _print_training_summary(summary: dict[str, Any], metric: str) -> None:
    winner = summary["winner"]["algorithm"]
    table = Table("algorithm", f"CV {metric}", "± std", "trials", "best params", title="candidates")
    for c in sorted(summary["candidates"], key=lambda c: -c["cv_score"]):
        name = f"[bold green]{c['algorithm']} ★[/]" if c["algorithm"] == winner else c["algorithm"]
        params = ", ".join(f"{k}={_cell(v)}" for k, v in c["best_params"].items())
        table.add_row(name, f"{c['cv_score']:.4f}", f"{c['cv_std']:.4f}", str(c["n_trials"]), params)
    out.print(table)
    holdout = Table("metric", "holdout", title="holdout")
    for key, value in summary["holdout"].items():
        holdout.add_row(key, f"{value:.4f}")
    out.print(holdout)
    gate = summary["gate"]
    verdict_text = "[bold green]passed[/]" if gate["passed"] else "[bold red]rejected[/]"
    out.print(f"gate: {verdict_text}: {gate['reason']}", highlight=False)
    published = summary["published"]
    if published is not None:
        out.print(
            f"published [bold]{published['name']}@{published['version']}[/] ({published['stage']}) "
            f"at {published['storage_uri']}",
            highlight=False,
        )


@app.command("score")
@reports_errors
def score_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="NAME (production, else latest), NAME@VERSION, NAME@STAGE or NAME@latest.",
        ),
    ],
    input_uri: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="CSV/Parquet path, file:// or s3:// URI; or table:[SCHEMA.]NAME, query:SELECT ..., "
            "dataset:NAME[@VERSION] in the registry database.",
        ),
    ],
    output_uri: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help=".csv or .parquet path, file:// or s3:// URI (replaced atomically); or table:[SCHEMA.]NAME.",
        ),
    ],
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows predicted at a time.")] = 10_000,
    as_json: JsonFlag = False,
) -> None:
    """Score data with a registered version (the batch scoring pipeline, on kfp.local).

    Writes every input column, then label, proba_<class> per class, model and model_version.
    """
    from modelyard.pipeline.scoring_local import run_scoring_locally

    settings = _settings()
    with _task_progress() as on_event:
        summary = run_scoring_locally(
            settings, model, input_uri, output_uri, on_event=on_event, chunk_rows=chunk_rows
        )
    if as_json:
        _print_json(summary)
        return
    counts = ", ".join(f"{label}: {n:,}" for label, n in summary["class_counts"].items())
    out.print(
        f"scored {summary['rows']:,} rows with [bold]{summary['model']}[/] -> {summary['output']}",
        highlight=False,
    )
    if counts:
        out.print(f"predicted classes: {counts}", highlight=False)
    err.print(f"pipeline log: {summary['log_file']}", highlight=False)


# ---------------------------------------------------------------- pipeline

pipeline_app = typer.Typer(
    help="Compile the pipelines; upload, run and schedule them on Kubeflow.", no_args_is_help=True
)
app.add_typer(pipeline_app, name="pipeline")

HostOption = Annotated[
    str | None, typer.Option("--host", help="KFP API endpoint; default MODELYARD_PIPELINE__HOST.")
]
SpecOption = Annotated[Path, typer.Option("--spec", "-s", help="ModelSpec YAML file.")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a spec field: KEY=VALUE (dotted keys).")
]
DeployOption = Annotated[
    bool, typer.Option("--auto-deploy", help="Deploy the published version (patch the InferenceService).")
]
ServiceOption = Annotated[
    str, typer.Option("--inference-service", help="InferenceService to deploy to; default the model name.")
]


@pipeline_app.command("compile")
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
    return host or _settings().pipeline.host


def _print_submitted(submitted: Any) -> None:
    err.print(f"created {submitted.kind} [bold]{submitted.id}[/]", highlight=False)
    out.print(submitted.url, highlight=False)


@pipeline_app.command("upload")
@reports_errors
def pipeline_upload(
    host: HostOption = None,
    name: Annotated[str, typer.Option("--name", help="Pipeline name in KFP.")] = "modelyard-training",
) -> None:
    """Upload the training pipeline to KFP (a new version if it exists)."""
    from modelyard.pipeline.client import upload

    _print_submitted(upload(_host(host), name, "modelyard: spec -> tuned, gated, published model"))


@pipeline_app.command("run")
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
    settings = _settings()
    submitted = run(
        _host(host),
        spec,
        auto_deploy=auto_deploy,
        inference_service=inference_service,
        namespace=settings.pipeline.namespace,
    )
    _print_submitted(submitted)


@pipeline_app.command("schedule")
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
    settings = _settings()
    submitted = schedule(
        _host(host),
        spec,
        cron,
        auto_deploy=auto_deploy,
        inference_service=inference_service,
        namespace=settings.pipeline.namespace,
    )
    _print_submitted(submitted)


# ---------------------------------------------------------------- models


SUMMARY_METRICS = ("f1_macro", "accuracy", "roc_auc")


def _metrics_cell(metrics: dict[str, float], keys: tuple[str, ...] = SUMMARY_METRICS) -> str:
    return "  ".join(f"{key}={metrics[key]:.3f}" for key in keys if key in metrics)


@models_app.command("list")
@reports_errors
def models_list(
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this model.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List model versions, newest first."""
    records = _registry(_settings()).list_versions(name)
    if as_json:
        _print_json([record.to_dict() for record in records])
        return
    table = Table("name", "version", "stage", "algorithm", "metrics", "created", "storage_uri")
    for r in records:
        stage = f"[bold green]{r.stage}[/]" if r.stage == "production" else r.stage
        table.add_row(
            r.name,
            str(r.version),
            stage,
            r.algorithm,
            _metrics_cell(r.metrics),
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.storage_uri,
        )
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@models_app.command("show")
@reports_errors
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@production.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one model version (the latest unless a version or stage is given)."""
    name, version, stage = _parse_model_ref(ref)
    record = _registry(_settings()).get_version(name, version, stage=stage)
    payload = record.to_dict()
    if as_json:
        _print_json(payload)
        return
    table = Table(show_header=False, box=None)
    for key, value in payload.items():
        table.add_row(f"[bold]{key}[/]", _cell(value))
    out.print(table)


@models_app.command("promote")
@reports_errors
def models_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to put in production.")],
) -> None:
    """Put a version in production; the current production version is archived."""
    record = _registry(_settings()).promote(name, version)
    err.print(f"[bold]{record.name}@{record.version}[/] is now in production")


@models_app.command("rollback")
@reports_errors
def models_rollback(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Archive the production version and restore the one that was in production before it."""
    record = _registry(_settings()).rollback(name)
    err.print(f"rolled back: [bold]{record.name}@{record.version}[/] is in production again")


# ---------------------------------------------------------------- serve, up

EXAMPLE_SPEC = Path(__file__).resolve().parents[2] / "examples" / "iris.yaml"
LOCAL_HOST = "127.0.0.1"

PortOption = Annotated[
    int | None, typer.Option("--port", help="REST port (V1 and V2); default MODELYARD_SERVING__HTTP_PORT.")
]
GrpcPortOption = Annotated[
    int | None,
    typer.Option("--grpc-port", help="gRPC port, 0 for none; default MODELYARD_SERVING__GRPC_PORT."),
]
ListenOption = Annotated[
    str, typer.Option("--host", help="Address to listen on (0.0.0.0 to accept other machines).")
]


def _cached_bundle(settings: Settings, record: Any) -> Path:
    """The verified local copy of a version: HOME/cache/NAME/VERSION (a file:// bundle is used in place)."""
    from modelyard.bundle import fetch_bundle

    destination = settings.home / "cache" / record.name / str(record.version)
    return fetch_bundle(record.storage_uri, destination, s3=settings.s3)


def _server_options(
    settings: Settings, record: Any, bundle: Path, port: int | None, grpc_port: int | None, host: str
) -> Any:
    from modelyard.serving.server import ServerOptions

    return ServerOptions.from_settings(
        settings,
        model_dir=bundle,
        model_name=record.name,
        model_version=str(record.version),
        http_port=port,
        grpc_port=grpc_port,
        host=host,
    )


def _example_instance(metadata: Any) -> list[Any]:
    """One plausible row from the bundle's reference statistics: medians, most frequent values."""
    profiles = metadata.reference_stats.get("features", {})
    row: list[Any] = []
    for feature in metadata.features:
        profile = profiles.get(feature.name, {})
        if feature.type.value == "numeric":
            row.append(profile.get("quantiles", {}).get("0.5", 0.0))
        elif feature.type.value == "categorical":
            frequencies: dict[str, float] = profile.get("frequencies") or {"": 1.0}
            row.append(max(frequencies, key=lambda value: frequencies[value]))
        else:
            row.append(" ".join(list(profile.get("top_words") or {})[:5]))
    return row


def _example_requests(metadata: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A V1 and a V2 request body for ``name``, with one example row."""
    row = _example_instance(metadata)
    v1 = {"instances": [row]}
    if all(feature.type.value == "numeric" for feature in metadata.features):
        inputs = [{"name": "input-0", "datatype": "FP64", "shape": [1, len(row)], "data": [row]}]
    else:
        inputs = [
            {
                "name": feature.name,
                "datatype": "FP64" if feature.type.value == "numeric" else "BYTES",
                "shape": [1],
                "data": [value],
            }
            for feature, value in zip(metadata.features, row, strict=True)
        ]
    return v1, {"inputs": inputs}


def _curl_commands(base_url: str, name: str, v1: dict[str, Any], v2: dict[str, Any]) -> list[str]:
    import shlex

    return [
        f"curl -s {base_url}/v2/health/ready",
        f"curl -s {base_url}/v2/models/{name}",
        f"curl -s -X POST {base_url}/v1/models/{name}:predict -d {shlex.quote(json.dumps(v1))}",
        f"curl -s -X POST {base_url}/v2/models/{name}/infer -d {shlex.quote(json.dumps(v2))}",
    ]


@app.command("serve")
@reports_errors
def serve_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="NAME, NAME@VERSION or NAME@production (default: latest).")
    ],
    port: PortOption = None,
    grpc_port: GrpcPortOption = None,
    host: ListenOption = LOCAL_HOST,
) -> None:
    """Serve a registered model version over KServe V1/V2 (REST and gRPC) until interrupted."""
    from modelyard.serving.server import serve

    settings = _settings()
    name, version, stage = _parse_model_ref(model)
    with _registry(settings) as registry:
        record = registry.get_version(name, version, stage=stage)
    bundle = _cached_bundle(settings, record)
    options = _server_options(settings, record, bundle, port, grpc_port, host)
    err.print(
        f"serving [bold]{record.name}@{record.version}[/] ({record.stage.value}) from {bundle} "
        f"on http://{options.host}:{options.http_port}"
        + (f" and grpc {options.host}:{options.grpc_port}" if options.grpc_port else ""),
        highlight=False,
    )
    serve(options)


def _production_version(settings: Settings, spec_file: Path, overrides: list[str]) -> Any:
    """The production version of the spec's model: trained (in-process) if none exists, then promoted."""
    from modelyard.spec import load_spec

    spec = load_spec(spec_file, overrides)
    with _registry(settings) as registry:
        versions = registry.list_versions(spec.name)
        if not versions:
            from modelyard.workflow import run_training

            err.print(f"no version of [bold]{spec.name}[/] yet: training {spec_file}", highlight=False)
            with _step_progress() as progress:
                outcome = run_training(settings, spec, progress=progress)
            if outcome.published is None:
                raise ModelyardError(f"the gate rejected the trained model: {outcome.verdict.reason}")
            versions = [outcome.published]
        production = registry.production(spec.name)
        if production is None:
            production = registry.promote(spec.name, versions[0].version)
            err.print(f"promoted [bold]{production.ref}[/] to production", highlight=False)
        return production


def _wait_until_ready(url: str, process: Any, timeout_s: float) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ModelyardError(f"the server exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise ModelyardError(f"the server at {url} was not ready after {timeout_s:.0f} s")


def _post(url: str, document: dict[str, Any]) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _smoke_test(options: Any, name: str, v1: dict[str, Any], v2: dict[str, Any]) -> bool:
    """Start the server in a subprocess, send one V1 and one V2 request, print the answers, stop it."""
    import signal
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "modelyard.serving", "--model-dir", str(options.model_dir),
        "--model-name", name, "--model-version", options.model_version, "--host", options.host,
        "--http-port", str(options.http_port), "--grpc-port", str(options.grpc_port),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{options.host}:{options.http_port}"
    ok = True
    try:
        _wait_until_ready(url, process, timeout_s=120)
        for protocol, path, document in (
            ("V1", f"/v1/models/{name}:predict", v1),
            ("V2", f"/v2/models/{name}/infer", v2),
        ):
            status, answer = _post(url + path, document)
            ok = ok and status == 200
            out.print(f"{protocol} {status}: {json.dumps(answer)}", highlight=False, soft_wrap=True)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    if not ok:
        err.print(stderr.decode(errors="replace")[-4000:], highlight=False, markup=False)
    return ok


@app.command("up")
@reports_errors
def up_command(
    spec_file: Annotated[
        Path, typer.Option("--spec", "-s", help="ModelSpec to train if needed.")
    ] = EXAMPLE_SPEC,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a spec field: KEY=VALUE (dotted keys).")
    ] = None,
    port: PortOption = None,
    grpc_port: GrpcPortOption = None,
    host: ListenOption = LOCAL_HOST,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Train and promote if needed, print the commands, and stop.")
    ] = False,
    smoke: Annotated[
        bool,
        typer.Option("--smoke", help="Start the server, send one V1 and one V2 request, print them, stop."),
    ] = False,
) -> None:
    """The demo (`make run`): train the iris example if no version exists, promote it, serve it."""
    from modelyard.bundle import load_bundle

    settings = _settings()
    record = _production_version(settings, spec_file, overrides or [])
    bundle = _cached_bundle(settings, record)
    options = _server_options(settings, record, bundle, port, grpc_port, host)
    metadata = load_bundle(bundle).metadata
    v1, v2 = _example_requests(metadata, record.name)
    base_url = (
        f"http://{LOCAL_HOST if options.host in ('0.0.0.0', '::') else options.host}:{options.http_port}"
    )
    out.print(f"\n[bold]{record.ref}[/] ({record.stage.value}) is ready to serve. Try:\n", highlight=False)
    for command in _curl_commands(base_url, record.name, v1, v2):
        out.print(command, highlight=False, markup=False, soft_wrap=True)
    if options.grpc_port:
        out.print(f"\ngRPC (Open Inference Protocol) on {options.host}:{options.grpc_port}", highlight=False)
    if no_serve:
        return
    if smoke:
        if not _smoke_test(options, record.name, v1, v2):
            raise ModelyardError("the smoke test failed: the server did not answer both requests with 200")
        return
    from modelyard.serving.server import serve

    out.print("")
    serve(options)


# ---------------------------------------------------------------- monitoring

monitor_app = typer.Typer(help="Drift and live accuracy from the prediction log.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


def _duration(text: str) -> Any:
    from datetime import timedelta

    units = {"m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise typer.BadParameter(f"{text!r}: expected a positive duration such as 30m, 24h or 7d")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


@monitor_app.command("report")
@reports_errors
def monitor_report(
    model: Annotated[str, typer.Option("--model", help="NAME or NAME@VERSION (default: production).")],
    since: Annotated[str, typer.Option("--since", help="How far back: 30m, 24h, 7d.")] = "24h",
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path(
        "monitoring-report.html"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead.")] = False,
) -> None:
    """Drift per feature, prediction mix over time and live accuracy, from the prediction log."""
    from modelyard.bundle import load_bundle
    from modelyard.monitoring.report import build_report, render_html
    from modelyard.registry.db import create_engine_for
    from modelyard.spec import FeatureType

    window = _duration(since)
    settings = _settings()
    name, version, stage = _parse_model_ref(model)
    registry = _registry(settings)
    record = registry.get_version(name, version, stage=stage or ("production" if version is None else None))
    metadata = load_bundle(_cached_bundle(settings, record)).metadata
    numeric = [f.name for f in metadata.features if f.type is FeatureType.NUMERIC]
    engine = create_engine_for(settings.database_url)
    try:
        report = build_report(
            engine,
            name,
            since=window,
            version=str(record.version),
            reference_stats=metadata.reference_stats,
            numeric_columns=numeric,
        )
    finally:
        engine.dispose()
    if as_json:
        _print_json(report.to_dict())
        return
    output.write_text(render_html(report), encoding="utf-8")
    err.print(f"{report.rows} logged rows of {record.ref}; report written to {output}", highlight=False)


@app.command("retrain-webhook")
@reports_errors
def retrain_webhook(
    specs: Annotated[Path, typer.Option("--specs", help="Folder of ModelSpec YAML files, found by name.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of POST /alerts and GET /healthz.")] = 8090,
    auto_deploy: Annotated[
        bool,
        typer.Option("--auto-deploy", help="Put a retrained version that passes the gate in production."),
    ] = False,
) -> None:
    """Alertmanager webhook (payload v4): a firing drift or accuracy alert retrains its model."""
    from datetime import timedelta

    from modelyard.monitoring.webhook import RetrainWebhook, serve_webhook
    from modelyard.registry.db import create_engine_for
    from modelyard.retraining import PipelineLauncher, find_specs

    settings = _settings()
    known = find_specs(specs)
    engine = create_engine_for(settings.database_url)
    webhook = RetrainWebhook(
        engine,
        PipelineLauncher(settings, specs, auto_deploy=auto_deploy),
        cooldown=timedelta(hours=settings.monitoring.retrain_cooldown_h),
    )
    server = serve_webhook(webhook, host, port)
    where = f"KFP at {settings.pipeline.host}" if settings.pipeline.host else "kfp.local"
    err.print(
        f"retrain webhook on http://{host}:{server.server_address[1]}/alerts; models {sorted(known)}; "
        f"training on {where}",
        highlight=False,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.dispose()
