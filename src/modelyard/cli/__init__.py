"""The `modelyard` command line: one module per command group (db, data, train, score, pipeline, models,
serve, up, install, deploy, monitor, retrain-webhook, operator, request-run, console).

The CLI only picks files and overrides; everything else comes from Settings (MODELYARD_* variables).
Results go to stdout (tables, or JSON with --json); progress, log lines and errors go to stderr.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from modelyard import __version__
from modelyard.cli import data, db, models, monitor, pipeline
from modelyard.cli.common import err, out, reports_errors, settings
from modelyard.cli.console import console_command
from modelyard.cli.k8s import deploy_command, install_command
from modelyard.cli.operator import operator_command, request_run_command
from modelyard.cli.score import score_command
from modelyard.cli.serve import PASS_THROUGH, serve_command
from modelyard.cli.train import train_command
from modelyard.cli.up import up_command

app = typer.Typer(
    name="modelyard",
    help="Classification models from a declared spec to a served, monitored endpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.add_typer(db.app, name="db")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(monitor.app, name="monitor")
app.command("train")(train_command)
app.command("score")(score_command)
app.command("serve", context_settings=PASS_THROUGH, add_help_option=False)(serve_command)
app.command("up", context_settings=PASS_THROUGH, add_help_option=False)(up_command)
app.command("install")(install_command)
app.command("deploy")(deploy_command)
app.command("retrain-webhook")(monitor.retrain_webhook_command)
app.command("operator")(operator_command)
app.command("request-run")(request_run_command)
app.command("console")(console_command)


def configure_logging(level: str) -> None:
    """modelyard's log lines at ``level`` (MODELYARD_LOG_LEVEL), on stderr beside the progress displays."""
    from rich.logging import RichHandler

    ours = logging.getLogger("modelyard")
    if not any(isinstance(handler, RichHandler) for handler in ours.handlers):
        ours.addHandler(RichHandler(console=err, show_time=False, show_path=False, markup=False))
        ours.propagate = False
    ours.setLevel(level)


@app.callback(invoke_without_command=True)
@reports_errors
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit(0)
    configure_logging(settings().log_level)


__all__ = ["app"]
