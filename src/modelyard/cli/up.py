"""`modelyard up`, the demo (`make run`): train the iris example if no version exists, promote it, print
the requests to try and the console's URL, then serve it with the console beside it, or answer one V1 and
one V2 request and stop (``--smoke``).

Each step is a function of its own, tested directly: ``production_version``, ``example_requests``,
``curl_commands`` and ``smoke_test``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from modelyard.cli.common import err, open_registry, out, reports_errors, settings, step_progress
from modelyard.cli.serve import (
    LOCAL_HOST,
    add_serving_flags,
    cached_bundle,
    serving_parser,
    serving_version,
    start_server,
    with_serving_flags,
)
from modelyard.errors import ModelyardError
from modelyard.processes import post_json, wait_until_ready
from modelyard.settings import Settings, to_environment

EXAMPLE_SPEC = Path(__file__).resolve().parents[3] / "examples" / "iris.yaml"


def production_version(current: Settings, spec_file: Path, overrides: Sequence[str]) -> Any:
    """The production version of the spec's model: trained (in-process) if none exists, then promoted."""
    from modelyard.spec import load_spec

    spec = load_spec(spec_file, list(overrides))
    with open_registry(current) as registry:
        versions = registry.list_versions(spec.name)
        if not versions:
            from modelyard.workflow import run_training

            err.print(f"no version of [bold]{spec.name}[/] yet: training {spec_file}", highlight=False)
            with step_progress() as progress:
                outcome = run_training(current, spec, progress=progress)
            if outcome.published is None:
                raise ModelyardError(f"the gate rejected the trained model: {outcome.verdict.reason}")
            versions = [outcome.published]
        production = registry.production(spec.name)
        if production is None:
            production = registry.promote(spec.name, versions[0].version)
            err.print(f"promoted [bold]{production.ref}[/] to production", highlight=False)
        return production


def example_instance(metadata: Any) -> list[Any]:
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


def example_requests(metadata: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A V1 and a V2 request body, with one example row."""
    row = example_instance(metadata)
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


def curl_commands(base_url: str, name: str, v1: dict[str, Any], v2: dict[str, Any]) -> list[str]:
    return [
        f"curl -s {base_url}/v2/health/ready",
        f"curl -s {base_url}/v2/models/{name}",
        f"curl -s -X POST {base_url}/v1/models/{name}:predict -d {shlex.quote(json.dumps(v1))}",
        f"curl -s -X POST {base_url}/v2/models/{name}/infer -d {shlex.quote(json.dumps(v2))}",
    ]


def client_url(current: Settings) -> str:
    """Where a client on this machine reaches the server (a wildcard address is reached on 127.0.0.1)."""
    host = current.serving.host
    return f"http://{LOCAL_HOST if host in ('0.0.0.0', '::') else host}:{current.serving.http_port}"


@dataclass(frozen=True)
class SmokeAnswer:
    protocol: str  # V1 or V2
    status: int
    body: Any


def smoke_test(
    current: Settings, v1: dict[str, Any], v2: dict[str, Any], *, ready_timeout_s: float = 120
) -> list[SmokeAnswer]:
    """Start ``python -m modelyard.serving`` with ``current``'s settings, send one V1 and one V2 request,
    stop it, and return the answers. ModelyardError, with the end of the server's log, when it never
    became ready or exited early."""
    name = current.serving.model_name
    command = [sys.executable, "-m", "modelyard.serving"]
    environment = {**_inherited_environment(), **to_environment(current)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
    url = client_url(current)
    answers: list[SmokeAnswer] = []
    failure: ModelyardError | None = None
    try:
        wait_until_ready(f"{url}/v2/health/ready", process, ready_timeout_s, f"the server at {url}")
        for protocol, path, document in (
            ("V1", f"/v1/models/{name}:predict", v1),
            ("V2", f"/v2/models/{name}/infer", v2),
        ):
            status, body = post_json(url + path, document, timeout_s=30)
            answers.append(SmokeAnswer(protocol, status, body))
    except ModelyardError as exc:
        failure = exc
    finally:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    if failure is not None:
        log = stderr.decode(errors="replace")[-4000:]
        raise ModelyardError(f"{failure.message}; the server's log ends with:\n{log}")
    if any(answer.status != 200 for answer in answers):
        err.print(stderr.decode(errors="replace")[-4000:], highlight=False, markup=False)
    return answers


def _inherited_environment() -> dict[str, str]:
    """This process's environment but its MODELYARD_* variables: to_environment() says them all."""
    import os

    return {key: value for key, value in os.environ.items() if not key.upper().startswith("MODELYARD_")}


def parse_up_arguments(argv: Sequence[str]) -> Any:
    parser = serving_parser(
        "modelyard up",
        "The demo (`make run`): train the iris example if no version exists, promote it, serve it.",
    )
    parser.add_argument("--spec", "-s", type=Path, default=EXAMPLE_SPEC, help="ModelSpec to train if needed")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field (dotted keys); repeat for several",
    )
    parser.add_argument(
        "--no-serve", action="store_true", help="train and promote if needed, print the commands, and stop"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="start the server, send one V1 and one V2 request, print them, stop",
    )
    add_serving_flags(parser)
    return parser.parse_args(list(argv))


@reports_errors
def up_command(ctx: typer.Context) -> None:
    """The demo (`make run`): train the iris example if no version exists, promote it, serve it."""
    from modelyard.bundle import load_bundle

    flags = parse_up_arguments(ctx.args)
    current = with_serving_flags(settings(), flags)
    record = production_version(current, flags.spec, flags.overrides)
    bundle = cached_bundle(current, record)
    current = serving_version(current, record, bundle)
    v1, v2 = example_requests(load_bundle(bundle).metadata)
    out.print(f"\n[bold]{record.ref}[/] ({record.stage.value}) is ready to serve. Try:\n", highlight=False)
    for command in curl_commands(client_url(current), record.name, v1, v2):
        out.print(command, highlight=False, markup=False, soft_wrap=True)
    serving = current.serving
    if serving.grpc_port:
        out.print(f"\ngRPC (Open Inference Protocol) on {serving.host}:{serving.grpc_port}", highlight=False)
    console_url = f"http://{current.console.host}:{current.console.port}/"
    if flags.no_serve:
        out.print(f"\nthe console: {console_url} (start it with `modelyard console`)", highlight=False)
        return
    if flags.smoke:
        answers = smoke_test(current, v1, v2)
        for answer in answers:
            out.print(
                f"{answer.protocol} {answer.status}: {json.dumps(answer.body)}",
                highlight=False,
                soft_wrap=True,
            )
        if any(answer.status != 200 for answer in answers):
            raise ModelyardError("the smoke test failed: the server did not answer both requests with 200")
        return
    console = start_console(current)
    out.print(
        f"\nthe console (models, versions, compare, predict, batch, monitoring): {console_url}\n",
        highlight=False,
    )
    try:
        start_server(current)
    finally:
        console.terminate()
        console.wait(10)


def start_console(current: Settings) -> subprocess.Popen[bytes]:
    """`modelyard console` beside the demo's server, its Predict page posting to that server."""
    environment = {**_inherited_environment(), **to_environment(current)}
    environment["MODELYARD_CONSOLE__PREDICTOR_URL"] = client_url(current)
    return subprocess.Popen([sys.executable, "-m", "modelyard", "console"], env=environment)
