"""`modelyard data`: datasets in the registry database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelyard.cli.common import (
    JsonFlag,
    byte_progress,
    err,
    open_registry,
    out,
    print_json,
    reports_errors,
    settings,
)

app = typer.Typer(help="Datasets in the registry database.", no_args_is_help=True)


@app.command("load")
@reports_errors
def data_load(
    file: Annotated[Path, typer.Argument(help="CSV file to copy into the registry database.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    as_json: JsonFlag = False,
) -> None:
    """Copy a CSV into the registry database as a versioned dataset (same content, same version)."""
    from modelyard.data.ingest import load_csv_dataset

    registry = open_registry(settings())
    with byte_progress(f"loading {file.name}") as progress:
        record, created = load_csv_dataset(registry, file, name, progress=progress)
    if as_json:
        print_json({**record.to_dict(), "created": created})
        return
    verb = "loaded" if created else "unchanged, reusing"
    err.print(
        f"{verb} dataset [bold]{record.name}@{record.version}[/]: {record.row_count:,} rows, "
        f"fingerprint {record.fingerprint[:12]}"
    )


@app.command("list")
@reports_errors
def data_list(
    name: Annotated[str | None, typer.Option("--name", "-n", help="Only this dataset.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List dataset versions."""
    records = open_registry(settings()).list_datasets(name)
    if as_json:
        print_json([record.to_dict() for record in records])
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
