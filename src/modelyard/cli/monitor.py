"""`modelyard monitor report` and `modelyard retrain-webhook`: drift and live accuracy from the prediction
log, and the Alertmanager receiver that retrains a model (the logic lives in modelyard.monitoring)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli.common import (
    MODEL_REF_HELP,
    err,
    model_ref,
    open_registry,
    print_json,
    reports_errors,
    settings,
)
from modelyard.cli.serve import cached_bundle
from modelyard.errors import InvalidInput
from modelyard.registry.refs import ModelRef

app = typer.Typer(help="Drift and live accuracy from the prediction log.", no_args_is_help=True)

DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400}


def duration(text: str | timedelta) -> timedelta:
    """A typer ``parser`` for 30m, 24h, 7d: anything else is a usage error naming the value."""
    if isinstance(text, timedelta):  # typer passes the default through the parser too
        return text
    if len(text) < 2 or text[-1] not in DURATION_UNITS or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise typer.BadParameter(f"{text!r}: expected a positive duration such as 30m, 24h or 7d")
    return timedelta(seconds=int(text[:-1]) * DURATION_UNITS[text[-1]])


@app.command("report")
@reports_errors
def report_command(
    model: Annotated[
        ModelRef, typer.Option("--model", "-m", parser=model_ref, metavar="REF", help=MODEL_REF_HELP)
    ],
    since: Annotated[
        timedelta,
        typer.Option("--since", parser=duration, metavar="DURATION", help="How far back: 30m, 24h, 7d."),
    ] = timedelta(hours=24),
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

    current = settings()
    with open_registry(current) as registry:
        record = registry.resolve(model)
    metadata = load_bundle(cached_bundle(current, record)).metadata
    numeric = [feature.name for feature in metadata.features if feature.type is FeatureType.NUMERIC]
    engine = create_engine_for(current.database_url)
    try:
        report = build_report(
            engine,
            record.name,
            since=since,
            version=str(record.version),
            reference_stats=metadata.reference_stats,
            numeric_columns=numeric,
        )
    finally:
        engine.dispose()
    if as_json:
        print_json(report.to_dict())
        return
    output.write_text(render_html(report), encoding="utf-8")
    err.print(f"{report.rows} logged rows of {record.ref}; report written to {output}", highlight=False)


@reports_errors
def retrain_webhook_command(
    specs: Annotated[
        Path | None, typer.Option("--specs", help="Folder of ModelSpec YAML files, found by name.")
    ] = None,
    models_namespace: Annotated[
        str | None,
        typer.Option(
            "--models-namespace", help="Ask the operator's Model resources in this namespace instead."
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of POST /alerts and GET /healthz.")] = 8090,
    auto_deploy: Annotated[
        bool,
        typer.Option("--auto-deploy", help="Put a retrained version that passes the gate in production."),
    ] = False,
) -> None:
    """Alertmanager webhook (payload v4): a firing drift or accuracy alert retrains its model."""
    from modelyard.monitoring.webhook import RetrainWebhook, TrainingLauncher, serve_webhook
    from modelyard.registry.db import create_engine_for

    if (specs is None) == (models_namespace is None):
        raise InvalidInput("give --specs DIR (train here or on KFP) or --models-namespace NS (the operator)")
    current = settings()
    launcher: TrainingLauncher
    if specs is not None:
        from modelyard.retraining import PipelineLauncher, find_specs

        launcher = PipelineLauncher(current, specs, auto_deploy=auto_deploy)
        where = f"KFP at {current.pipeline.host}" if current.pipeline.host else "kfp.local"
        target = f"models {sorted(find_specs(specs))}; training on {where}"
    else:
        from modelyard.operator.launcher import ModelResourceLauncher

        launcher = ModelResourceLauncher(models_namespace or "")
        target = f"the Model resources of namespace {models_namespace} (the operator trains them)"
    engine = create_engine_for(current.database_url)
    webhook = RetrainWebhook(
        engine,
        launcher,
        cooldown=timedelta(hours=current.monitoring.retrain_cooldown_h),
    )
    server = serve_webhook(webhook, host, port)
    err.print(
        f"retrain webhook on http://{host}:{server.server_address[1]}/alerts; {target}", highlight=False
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.dispose()
