"""`modelyard serve`: a registered version, fetched and verified, served by the model server.

Its serving flags are ServingSettings' fields, as ``python -m modelyard.serving``'s are (each field's
description is its help); the bundle's folder, name and version come from ``--model``. Without ``--host``
or ``MODELYARD_SERVING__HOST`` the server listens on 127.0.0.1 only: this is a laptop's command.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from modelyard.cli.common import MODEL_REF_HELP, err, open_registry, reports_errors, settings
from modelyard.errors import InvalidInput
from modelyard.registry.refs import ModelRef, parse_model_ref
from modelyard.settings import ServingSettings, Settings, add_group_flags, with_group_flags

LOCAL_HOST = "127.0.0.1"
FROM_THE_VERSION = ("model_dir", "model_name", "model_version")  # set by the registry, not by flags
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
"""typer hands every argument to the command, which parses them with argparse (``--help`` included)."""


def serving_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser holding the serving flags; the command adds its own before them."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Each serving flag can also be set as MODELYARD_SERVING__<FLAG> (upper case, '-' as '_'); "
        "a flag wins. Without --host or MODELYARD_SERVING__HOST the server listens on 127.0.0.1 only.",
        allow_abbrev=False,
    )


def add_serving_flags(parser: argparse.ArgumentParser) -> None:
    add_group_flags(parser, ServingSettings, exclude=FROM_THE_VERSION)


def model_ref_argument(text: str) -> ModelRef:
    """An argparse ``type``: a bad reference is a usage error naming the problem."""
    try:
        return parse_model_ref(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def cached_bundle(current: Settings, record: Any) -> Path:
    """The verified local copy of a version: HOME/cache/NAME/VERSION (a file:// bundle is used in place)."""
    from modelyard.bundle import fetch_bundle

    destination = current.home / "cache" / record.name / str(record.version)
    return fetch_bundle(record.storage_uri, destination, s3=current.s3)


def with_serving_flags(current: Settings, flags: argparse.Namespace) -> Settings:
    """``current`` with the serving flags given (validated), and 127.0.0.1 as the default host."""
    host_configured = "host" in current.serving.model_fields_set or flags.host is not None
    updated = with_group_flags(current, "serving", flags)
    if host_configured:
        return updated
    return updated.model_copy(update={"serving": updated.serving.model_copy(update={"host": LOCAL_HOST})})


def serving_version(current: Settings, record: Any, bundle: Path) -> Settings:
    """``current`` serving ``bundle``, the bundle of ``record`` (a registry version: name and number)."""
    from_version = {"model_dir": bundle, "model_name": record.name, "model_version": str(record.version)}
    return current.model_copy(update={"serving": current.serving.model_copy(update=from_version)})


def start_server(current: Settings) -> None:
    """Run the model server in this process until it is stopped."""
    from modelyard.serving.server import serve

    serve(current)


def parse_serve_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = serving_parser(
        "modelyard serve",
        "Serve a registered model version over KServe V1/V2 (REST and gRPC) until interrupted.",
    )
    parser.add_argument(
        "--model", "-m", required=True, type=model_ref_argument, metavar="REF", help=MODEL_REF_HELP
    )
    add_serving_flags(parser)
    return parser.parse_args(list(argv))


@reports_errors
def serve_command(ctx: typer.Context) -> None:
    """Serve a registered model version over KServe V1/V2 (REST and gRPC) until interrupted."""
    flags = parse_serve_arguments(ctx.args)
    current = with_serving_flags(settings(), flags)  # a bad flag fails before anything is contacted
    with open_registry(current) as registry:
        record = registry.resolve(flags.model)
    current = serving_version(current, record, cached_bundle(current, record))
    serving = current.serving
    err.print(
        f"serving [bold]{record.name}@{record.version}[/] ({record.stage.value}) from {serving.model_dir} "
        f"on http://{serving.host}:{serving.http_port}"
        + (f" and grpc {serving.host}:{serving.grpc_port}" if serving.grpc_port else ""),
        highlight=False,
    )
    start_server(current)
