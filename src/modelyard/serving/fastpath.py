"""A uvicorn protocol that takes the hot paths past FastAPI: health probes and inference requests.

uvicorn starts every request as an asyncio task running FastAPI, whose middleware stack and router cost
about a fifth of the event loop's time per inference request here, although our endpoints answer their
own errors and use none of it. Under full load the loop's ready queue also holds the steps of dozens of
inference requests, and a health probe's task waits behind all of them: several milliseconds at
concurrency 64, when a kubelet probe should not wait at all.

So this protocol, a subclass of uvicorn's httptools protocol, changes where a request starts:

- ``GET /v2/health/live`` and ``GET /v2/health/ready`` run to completion inside the parser callback.
  Their endpoints never await, and the request cycle's ``send`` only awaits when the connection's writes
  are paused, which is checked first;
- the inference routes (``RestRoutes.inference_routes``, matched with Starlette's own path patterns)
  call their endpoint directly, in a task as before;
- everything else, a request pipelined behind one still in flight, and the concurrency limit's 503 go
  to FastAPI unchanged.

Either way the response goes through uvicorn's request cycle, which writes the status line, the default
headers, keep-alive and the access log as for any other request.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.routing import compile_path

from modelyard.serving.rest import Endpoint, RestRoutes

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]


async def _call_endpoint(endpoint: Endpoint, scope: Scope, receive: Any, send: Any) -> None:
    response = await endpoint(Request(scope, receive))
    await response(scope, receive, send)


def _route_matcher(routes: list[tuple[str, Endpoint]]) -> Callable[[str], Any]:
    compiled: list[tuple[re.Pattern[str], Endpoint]] = [(compile_path(path)[0], e) for path, e in routes]

    def match(path: str) -> tuple[Endpoint, dict[str, str]] | None:
        for pattern, endpoint in compiled:
            found = pattern.match(path)
            if found is not None:
                return endpoint, found.groupdict()
        return None

    return match


def fast_path_protocol(routes: RestRoutes) -> type[Any] | None:
    """The protocol class for uvicorn's ``Config.http``; None when this uvicorn lacks what it builds on
    (httptools, or the hook that starts a request), and the stock protocol should be used."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn uses h11
        return None
    if not callable(getattr(HttpToolsProtocol, "_start_asgi_task", None)):
        log.warning("uvicorn has no HttpToolsProtocol._start_asgi_task: requests take FastAPI's path")
        return None
    probes = {path: functools.partial(_call_endpoint, endpoint) for path, endpoint in routes.probes().items()}
    match_inference = _route_matcher(routes.inference_routes())

    class FastPathProtocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if app is self.app:  # not the concurrency limit's 503
                scope = cycle.scope
                method = scope["method"]
                if method == "GET" and scope["path"] in probes and not self.flow.write_paused:
                    self._run_at_once(cycle, probes[scope["path"]])
                    return
                if method == "POST":
                    found = match_inference(scope["path"])
                    if found is not None:
                        endpoint, scope["path_params"] = found
                        app = functools.partial(_call_endpoint, endpoint)
            super()._start_asgi_task(cycle, app)

        def _run_at_once(self, cycle: Any, app: Any) -> None:
            run = cycle.run_asgi(app)
            try:
                run.send(None)
            except StopIteration:
                return
            # Only reachable if an endpoint or send() awaited after all. Closing the coroutine makes
            # uvicorn's cycle answer 500; the connection is closed so nothing half-done follows it.
            run.close()
            log.error("a health probe did not complete at once; closing its connection")
            self.transport.close()

    return FastPathProtocol
