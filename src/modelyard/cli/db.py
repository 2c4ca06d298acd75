"""`modelyard db`: the registry database's schema."""

from __future__ import annotations

import typer

from modelyard.cli.common import err, reports_errors, settings

app = typer.Typer(help="The registry database schema.", no_args_is_help=True)


@app.command("upgrade")
@reports_errors
def db_upgrade() -> None:
    """Apply the registry's migrations (other commands do too when they open it; the server never does)."""
    from modelyard.registry.db import redact, upgrade

    current = settings()
    revision = upgrade(current.database_url)
    err.print(f"registry schema at revision [bold]{revision}[/] ({redact(current.database_url)})")
