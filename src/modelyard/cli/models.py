"""`modelyard models`: model versions in the registry, their stages, promotion and rollback."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from modelyard.cli.common import (
    MODEL_REF_HELP,
    JsonFlag,
    cell,
    err,
    model_ref,
    open_registry,
    out,
    print_json,
    reports_errors,
    settings,
)
from modelyard.errors import InvalidInput
from modelyard.registry.refs import ModelRef

app = typer.Typer(help="Model versions in the registry.", no_args_is_help=True)

SUMMARY_METRICS = ("f1_macro", "accuracy", "roc_auc")


def _metrics_cell(metrics: dict[str, float | None], keys: tuple[str, ...] = SUMMARY_METRICS) -> str:
    return "  ".join(f"{key}={value:.3f}" for key in keys if (value := metrics.get(key)) is not None)


@app.command("list")
@reports_errors
def models_list(
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this model.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List model versions, newest first."""
    records = open_registry(settings()).list_versions(name)
    if as_json:
        print_json([record.to_dict() for record in records])
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


@app.command("show")
@reports_errors
def models_show(
    ref: Annotated[ModelRef, typer.Argument(parser=model_ref, metavar="REF", help=MODEL_REF_HELP)],
    as_json: JsonFlag = False,
) -> None:
    """Show one model version in full."""
    with open_registry(settings()) as registry:
        payload = registry.resolve(ref).to_dict()
    if as_json:
        print_json(payload)
        return
    table = Table(show_header=False, box=None)
    for key, value in payload.items():
        table.add_row(f"[bold]{key}[/]", cell(value))
    out.print(table)


@app.command("promote")
@reports_errors
def models_promote(
    ref: Annotated[
        ModelRef,
        typer.Argument(
            parser=model_ref, metavar="REF", help="The version to promote: NAME@VERSION or NAME@staging."
        ),
    ],
) -> None:
    """Put a version in production; the current production version is archived."""
    if ref.version is None and ref.stage is None:
        raise InvalidInput(f"promote needs a version: {ref.name}@VERSION or {ref.name}@staging, not {ref}")
    with open_registry(settings()) as registry:
        record = registry.promote(ref.name, registry.resolve(ref).version)
    err.print(f"[bold]{record.name}@{record.version}[/] is now in production")


@app.command("rollback")
@reports_errors
def models_rollback(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Archive the production version and restore the one that was in production before it."""
    with open_registry(settings()) as registry:
        record = registry.rollback(name)
    err.print(f"rolled back: [bold]{record.name}@{record.version}[/] is in production again")
