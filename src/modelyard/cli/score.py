"""`modelyard score`: the batch scoring pipeline on this machine (kfp.local)."""

from __future__ import annotations

from typing import Annotated

import typer

from modelyard.cli.common import (
    MODEL_REF_HELP,
    JsonFlag,
    err,
    model_ref,
    out,
    print_json,
    reports_errors,
    settings,
    task_progress,
)
from modelyard.registry.refs import ModelRef


@reports_errors
def score_command(
    model: Annotated[
        ModelRef, typer.Option("--model", "-m", parser=model_ref, metavar="REF", help=MODEL_REF_HELP)
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

    with task_progress() as on_event:
        summary = run_scoring_locally(
            settings(), str(model), input_uri, output_uri, on_event=on_event, chunk_rows=chunk_rows
        )
    if as_json:
        print_json(summary)
        return
    counts = ", ".join(f"{label}: {n:,}" for label, n in summary["class_counts"].items())
    out.print(
        f"scored {summary['rows']:,} rows with [bold]{summary['model']}[/] -> {summary['output']}",
        highlight=False,
    )
    if counts:
        out.print(f"predicted classes: {counts}", highlight=False)
    err.print(f"pipeline log: {summary['log_file']}", highlight=False)
