"""A uvicorn protocol that takes the hot paths past FastAPI: health probes and inference requests.

uvicorn starts every request as an asyncio task running FastAPI, whose middleware stack and router cost
about a fifth of the event loop's time per inference request here, although our endpoints answer their
own errors and use none of it. Under full load the loop's ready queue also holds the steps of dozens of
inference requests, and a health probe's task waits behind all of them: several milliseconds at
concurrency 64, when a kubelet probe should not wait at all.

So this protocol, a subclass of uvicorn's httptools protocol, changes where a request starts:

- ``GET /v2/health/live`` and ``GET /v2/health/ready`` run to completion inside the parser callback.
  Their endpoints never await, and the request cycle's ``send`` cannot need to wait for the client
  while the connection's write buffer is empty, which is checked first. A probe pipelined behind a
  request still in flight starts when that response ends, in a task, and calls its endpoint directly;
- the inference routes (``RestRoutes.inference_routes``, matched with Starlette's own path patterns)
  call their endpoint directly, in a task as before;
- everything else, and the concurrency limit's 503, go to FastAPI unchanged.

A kubelet probes over a new connection each time, and on loopback or a pod network its request is
usually in the socket by the time the loop accepts the connection. The transport would read it only in
the loop's next iteration, after the callbacks of every other ready connection (up to the concurrency
of the load); so a new plain-HTTP connection's waiting bytes are read when it is made.

Under full load the loop gets to the listening socket itself only once per iteration, which runs the
callbacks of every ready connection first. So, given the listening socket, the protocol also looks at it
each time a request arrives: a waiting connection whose first bytes are a complete health probe is
answered there and closed; any other is handed to the loop as the server would have accepted it.

The direct calls keep what uvicorn adds around the app: ``X-Forwarded-For``/``-Proto`` handling when
``proxy_headers`` is on, the request cycle that writes the status line, the default headers, keep-alive
and the access log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.routing import compile_path

from modelyard.serving.rest import Endpoint, RestRoutes

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]

_FIRST_READ_BYTES = 65536


def waiting_bytes(transport: asyncio.BaseTransport) -> bytes:
    """What the client has already sent on a connection the transport has not read from yet (b"" for
    nothing yet), read from a duplicate of its socket's descriptor."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return b""
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
            return duplicate.recv(_FIRST_READ_BYTES, socket.MSG_DONTWAIT)
    except OSError:  # nothing yet (BlockingIOError); any other error is the transport's to report
        return b""


async def _call_endpoint(endpoint: Endpoint, scope: Scope, receive: Any, send: Any) -> None:
    response = await endpoint(Request(scope, receive))
    await response(scope, receive, send)


def _route_matcher(routes: list[tuple[str, Any]]) -> Callable[[str], tuple[Any, dict[str, str]] | None]:
    """For (path template, app) pairs: a path's app and its path parameters, by Starlette's patterns."""
    compiled = [(compile_path(path)[0], app) for path, app in routes]

    def match(path: str) -> tuple[Any, dict[str, str]] | None:
        for pattern, app in compiled:
            found = pattern.match(path)
            if found is not None:
                return app, found.groupdict()
        return None

    return match


def _probe_path(head: bytes, probe_paths: Any) -> str | None:
    """The probe's path when ``head`` is exactly one complete bodiless ``GET`` of a probe, else None."""
    end = head.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(head):
        return None
    request_line, _, headers = head[:end].partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    lowered = headers.lower()
    if b"content-length:" in lowered or b"transfer-encoding:" in lowered or b"upgrade:" in lowered:
        return None
    path = parts[1].decode("latin-1")
    return path if path in probe_paths else None


def _answered_at_once(endpoint: Endpoint, path: str) -> Any:
    """The endpoint's response when it completes without awaiting (probes do), else None."""
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    call = endpoint(Request(scope))
    try:
        call.send(None)  # type: ignore[attr-defined]
    except StopIteration as done:
        return done.value
    call.close()  # type: ignore[attr-defined]
    return None


def fast_path_protocol(
    routes: RestRoutes, config: Any, listener: socket.socket | None = None
) -> type[Any] | None:
    """The protocol class for ``config.http`` (a ``uvicorn.Config``); None when this uvicorn lacks what
    it builds on (httptools, or the hook that starts a request), and the stock protocol should be used.

    ``listener``: the server's listening socket (plain HTTP), for probes waiting on it to be answered
    between requests."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn uses h11
        return None
    if not callable(getattr(HttpToolsProtocol, "_start_asgi_task", None)):
        log.warning("uvicorn has no HttpToolsProtocol._start_asgi_task: requests take FastAPI's path")
        return None

    def app_for(endpoint: Endpoint) -> Any:
        app: Any = functools.partial(_call_endpoint, endpoint)
        if config.proxy_headers:  # as uvicorn wraps the app it loads: X-Forwarded-For/-Proto apply
            from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

            app = ProxyHeadersMiddleware(app, trusted_hosts=config.forwarded_allow_ips)
        return app

    probe_endpoints = routes.probes()
    probes = {path: app_for(endpoint) for path, endpoint in probe_endpoints.items()}
    match_inference = _route_matcher([(path, app_for(e)) for path, e in routes.inference_routes()])
    adopting: set[asyncio.Task[Any]] = set()
    if listener is not None:
        listener.setblocking(False)  # the loop sets it too; accept() here must never wait

    class FastPathProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.scheme == "http":  # TLS bytes are the transport's to decrypt
                early = waiting_bytes(transport)
                if early:
                    self.data_received(early)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if listener is not None:
                self._answer_waiting_probes(listener)

        def _answer_waiting_probes(self, listening: socket.socket) -> None:
            for _ in range(4):  # a few per request: probes are rare, the loop accepts the rest
                try:
                    connection, address = listening.accept()
                except OSError:  # nothing waiting (BlockingIOError), or out of descriptors: the loop's
                    return
                try:
                    answered = self._answer_probe(connection, address)
                except Exception:  # never into the data_received of the request that looked
                    log.exception("answering a health probe off the listening socket failed")
                    answered = False
                if not answered:  # nothing consumed: the loop serves it, errors included
                    self._adopt(connection)

        def _answer_probe(self, connection: socket.socket, address: Any) -> bool:
            """Answer and close the connection when it holds one complete probe; False otherwise."""
            connection.setblocking(False)
            try:
                head = connection.recv(_FIRST_READ_BYTES, socket.MSG_PEEK)
            except OSError:
                return False
            path = _probe_path(head, probe_endpoints)
            response = _answered_at_once(probe_endpoints[path], path) if path else None
            if response is None:
                return False
            answer = self._probe_answer(response)
            with connection:
                try:
                    connection.recv(len(head))
                    connection.send(answer)
                    # A FIN, and anything sent meanwhile read, so that closing does not reset the answer
                    connection.shutdown(socket.SHUT_WR)
                    connection.recv(_FIRST_READ_BYTES)
                except OSError:
                    pass
            self.server_state.total_requests += 1
            if self.access_log:  # the line uvicorn's request cycle writes
                client = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else ""
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    client,
                    "GET",
                    path,
                    head.split(b"\r\n", 1)[0][-3:].decode(),
                    response.status_code,
                )
            return True

        def _probe_answer(self, response: Any) -> bytes:
            status = response.status_code
            head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
            for name, value in [*self.server_state.default_headers, *response.raw_headers]:
                head.append(name + b": " + value + b"\r\n")
            return b"".join([*head, b"connection: close\r\n\r\n", response.body])

        def _adopt(self, connection: socket.socket) -> None:
            """Serve a connection taken off the listening socket as the server would have."""

            def protocol() -> FastPathProtocol:
                return FastPathProtocol(self.config, self.server_state, self.app_state, self.loop)

            task = self.loop.create_task(self.loop.connect_accepted_socket(protocol, connection))
            adopting.add(task)
            task.add_done_callback(adopting.discard)

        def on_message_begin(self) -> None:
            # A probe answered inside data_received arms the keep-alive timer after data_received
            # disarmed it; a request following it in the same read must disarm it again.
            self._unset_keepalive_if_required()
            super().on_message_begin()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if app is self.app:  # not the concurrency limit's 503
                scope = cycle.scope
                method, path = scope["method"], scope["path"]
                if method == "GET" and path in probes:
                    # In place only from the parser callback: a pipelined probe started by the end of
                    # the response before it (inside that request's task) would nest one call deeper
                    # per probe. With nothing in the write buffer, the probe's few hundred bytes stay
                    # under the high-water mark, so the cycle's send() does not wait to drain.
                    if (
                        asyncio.current_task() is None
                        and self.transport.get_write_buffer_size() == 0
                        and not self.flow.write_paused  # the same on plain TCP; both, for any transport
                    ):
                        self._run_at_once(cycle, probes[path])
                        return
                    app = probes[path]
                elif method == "POST":
                    found = match_inference(path)
                    if found is not None:
                        app, scope["path_params"] = found
            super()._start_asgi_task(cycle, app)

        def _run_at_once(self, cycle: Any, app: Any) -> None:
            run = cycle.run_asgi(app)
            try:
                run.send(None)
            except StopIteration:
                return
            # Only reachable if an endpoint awaited after all. Closing the coroutine makes uvicorn's
            # cycle answer 500 (or cut the connection if the response had started); close it either way.
            run.close()
            log.error("a health probe did not complete at once; closing its connection")
            self.transport.close()

    return FastPathProtocol
