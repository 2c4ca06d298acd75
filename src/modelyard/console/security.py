"""What keeps the console's actions to the people who open its pages, and its training runs to the data the
platform holds. The console has no login: on a cluster an authenticating proxy in front of its Ingress
decides who reaches it (the chart's README shows one).

:class:`ConsoleGuard`, one ASGI middleware, gives every request an id (in the ``X-Request-Id`` answer
header and in the log lines of a failure), adds the security headers to every answer, and refuses a
state-changing request (POST, PUT, PATCH, DELETE) that a page of another site could have sent: one whose
``Sec-Fetch-Site`` is another site's, whose ``Origin`` is not the ``Host`` it was sent to, or that carries
neither the ``X-Modelyard-Console: 1`` header the console's script sends nor ``Content-Type:
application/json`` (a cross-site form can send neither without the browser asking the console first). With
``MODELYARD_CONSOLE__ACTIONS_ENABLED=false`` it also refuses promote, roll back and train. Starlette's
``TrustedHostMiddleware`` answers only the names in ``MODELYARD_CONSOLE__ALLOWED_HOSTS``, so a page that
rebinds its own DNS name to the console's address cannot reach it either.

:func:`training_spec` parses a spec pasted on the Train page and refuses a data source that reaches outside
what the platform holds: SQL (``data.query``, ``data.table``, ``data.database_url``, which would run with
the registry's credentials) and any ``data.path`` outside ``MODELYARD_CONSOLE__DATA_ROOT``.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.console.training import parse_spec_text
from modelyard.errors import SpecError
from modelyard.settings import ConsoleSettings
from modelyard.spec import ModelSpec

CONSOLE_HEADER = "X-Modelyard-Console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = {
    # only the console's own script runs; styles are inline, plots inline SVG; no page may frame it
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}
# report.html comes from a bundle: shown in a sandbox (an origin of its own, no script), styles only
REPORT_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
# The requests that change the registry (MODELYARD_CONSOLE__ACTIONS_ENABLED turns them off).
ACTIONS = re.compile(r"^/api/(train|models/[^/]+/(rollback|retrain)|models/[^/]+/versions/[^/]+/promote)/?$")


def allowed_hosts(console: ConsoleSettings) -> list[str]:
    return [host.strip() for host in console.allowed_hosts.split(",") if host.strip()]


def cross_site_refusal(method: str, headers: Headers) -> str | None:
    """Why a state-changing request must be refused as one another site could have sent, or None."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"refused: this {method} came from another site (Sec-Fetch-Site: {site}); use the console"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != headers.get("host", ""):
        return f"refused: this {method} came from another site (Origin: {origin}); use the console"
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if headers.get(CONSOLE_HEADER) != "1" and media_type != "application/json":
        return (
            f"refused: a {method} to the console needs the header {CONSOLE_HEADER}: 1 (its pages send it) "
            "or Content-Type: application/json"
        )
    return None


def action_refusal(path: str, console: ConsoleSettings) -> str | None:
    if console.actions_enabled or not ACTIONS.match(path):
        return None
    return (
        "refused: promote, roll back and train are turned off in this console "
        "(MODELYARD_CONSOLE__ACTIONS_ENABLED=false); use the modelyard CLI"
    )


def request_id(request: Request) -> str:
    """The id ConsoleGuard gave this request ("-" for a request that did not pass through it)."""
    return str(getattr(request.state, "request_id", "-"))


class ConsoleGuard:
    """ASGI middleware: a request id, the security headers, and the refusals of the module's docstring."""

    def __init__(self, app: ASGIApp, console: ConsoleSettings) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        identity = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = identity  # what Request.state reads
        send = self._secured(send, identity)
        method = scope["method"]
        if method not in SAFE_METHODS:
            refusal = cross_site_refusal(method, Headers(scope=scope)) or action_refusal(
                scope["path"], self.console
            )
            if refusal is not None:
                await JSONResponse({"error": refusal}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _secured(send: Send, identity: str) -> Send:
        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers["x-request-id"] = identity
            await send(message)

        return secured


def middleware(console: ConsoleSettings) -> list[Middleware]:
    """The console's middleware, outermost first: the guard, then the Host check."""
    return [
        Middleware(ConsoleGuard, console=console),
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(console)),
    ]


def training_spec(text: str, console: ConsoleSettings) -> ModelSpec:
    """A spec pasted on the Train page, its relative data path resolved against the data root; refused
    (SpecError naming the field) when its data source is SQL or a path outside the data root."""
    root = console.data_root
    local_root = None if root.startswith("s3://") or not root else Path(root).expanduser().resolve()
    spec = parse_spec_text(text, local_root or Path.cwd())
    data = spec.data
    for field in ("query", "table", "database_url"):
        if getattr(data, field):
            raise SpecError(
                f"data.{field}: the console does not run SQL from a pasted spec (it would run with the "
                "registry's credentials); copy the rows in with `modelyard data load` and name them as "
                "data.dataset"
            )
    if data.path:
        _check_data_path(data.path, root, local_root)
    return spec


def _check_data_path(path: str, root: str, local_root: Path | None) -> None:
    outside = (
        f"data.path {path!r} is outside the console's data root {root!r} (MODELYARD_CONSOLE__DATA_ROOT): "
        "use a file under it, or a data set loaded with `modelyard data load` as data.dataset"
    )
    if not root:
        raise SpecError(
            f"data.path {path!r}: this console reads no files (MODELYARD_CONSOLE__DATA_ROOT is empty): "
            "use a data set loaded with `modelyard data load` as data.dataset"
        )
    if root.startswith("s3://"):
        prefix = root.rstrip("/") + "/"
        if not path.startswith(prefix) or ".." in path.removeprefix(prefix).split("/"):
            raise SpecError(outside)
        return
    if path.startswith("s3://"):
        raise SpecError(outside)
    local = unquote(urlsplit(path).path) if path.startswith("file://") else path
    assert local_root is not None
    # resolve() follows links and "..", so a link under the root that points elsewhere is outside too
    if not Path(local).expanduser().resolve().is_relative_to(local_root):
        raise SpecError(outside)
