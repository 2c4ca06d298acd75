"""`modelyard console`: the web console (models, versions, compare, predict, batch, monitoring, actions)."""

from __future__ import annotations

from typing import Annotated

import typer

from modelyard.cli.common import err, reports_errors, settings


@reports_errors
def console_command(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (MODELYARD_CONSOLE__HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="HTTP port (MODELYARD_CONSOLE__PORT).")] = None,
    predictor_url: Annotated[
        str | None,
        typer.Option(
            "--predictor-url",
            help="Base URL of the V2 predictor the Predict page posts to (MODELYARD_CONSOLE__PREDICTOR_URL).",
        ),
    ] = None,
    ensure_schema: Annotated[
        bool,
        typer.Option(
            "--ensure-schema/--no-ensure-schema",
            help="Migrate the registry's database at start (a laptop); a cluster migrates with "
            "`modelyard db upgrade` (the chart's job) and passes --no-ensure-schema.",
        ),
    ] = True,
) -> None:
    """Serve the web console over the registry (MODELYARD_DATABASE_URL) until interrupted."""
    import uvicorn

    from modelyard.console.app import create_app

    current = settings()
    overrides = {
        key: value
        for key, value in (("host", host), ("port", port), ("predictor_url", predictor_url))
        if value is not None
    }
    console = current.console.model_validate({**current.console.model_dump(), **overrides})
    current = current.model_copy(update={"console": console})
    err.print(f"console: http://{console.host}:{console.port}/ (predictor {console.predictor_url})")
    config = uvicorn.Config(
        create_app(current, ensure_schema=ensure_schema),
        host=console.host,
        port=console.port,
        log_level="warning",
        lifespan="on",
    )
    uvicorn.Server(config).run()
