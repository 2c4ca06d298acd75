"""The uvicorn protocol that answers health probes in place and sends inference straight to its endpoint.

A real uvicorn server runs the protocol on loopback in a thread, over a real data plane and bundle. Its
FastAPI stand-in records every request that reaches it, so each test can tell which path a request took.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.fastpath import fast_path_protocol
from modelyard.serving.model import ServedModel
from modelyard.serving.rest import RestRoutes

from .conftest import free_ports

SLOW_S = 0.3
ROW = [0.0, 0.0, 0.0, 0.0]  # the tiny model's setosa centre (conftest.numeric_frame)
V2_BODY = json.dumps(
    {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": ROW}]}
).encode()


class RecordingApp:
    """Stands in for FastAPI: answers 299 and notes the path, so a test sees what reached it.
    ``/slow`` answers after SLOW_S."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        if scope["path"] == "/slow":
            await asyncio.sleep(SLOW_S)
        await send({"type": "http.response.start", "status": 299, "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"app"})


def read_response(stream: Any) -> tuple[int, dict[str, str], bytes]:
    status = int(stream.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return status, headers, stream.read(int(headers["content-length"]))


def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(raw)
        return read_response(connection.makefile("rb"))


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


class Running:
    def __init__(self, port: int, app: RecordingApp) -> None:
        self.port, self.app = port, app


@pytest.fixture
def serve(bundles: dict[str, Path]) -> Iterator[Any]:
    started: list[tuple[uvicorn.Server, threading.Thread, ServedModel | None]] = []

    def start(*, with_model: bool = True, **options: Any) -> Running:
        dataplane = DataPlane(max_request_rows=100)
        model = None
        if with_model:
            model = ServedModel("iris", bundles["numeric"], version="7")
            model.load()
            dataplane.add_model(model)
        app = RecordingApp()
        (port,) = free_ports(1)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", **options
        )
        protocol = fast_path_protocol(RestRoutes(dataplane), config)
        assert protocol is not None, "the installed uvicorn should support the fast path"
        config.http = protocol
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        started.append((server, thread, model))
        return Running(port, app)

    yield start
    for server, thread, model in started:
        server.should_exit = True
        thread.join(timeout=10)
        if model is not None:
            model.close()


def test_health_probes_and_inference_never_reach_the_app_and_the_rest_does(serve: Any) -> None:
    running = serve()
    status, headers, body = request(running.port, get("/v2/health/live"))
    assert (status, json.loads(body)) == (200, {"live": True})
    assert headers["content-type"] == "application/json" and "date" in headers  # uvicorn's own headers
    status, _, body = request(running.port, get("/v2/health/ready?verbose=1"))
    assert (status, json.loads(body)) == (200, {"ready": True})

    for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/7/infer"):
        status, headers, body = request(running.port, post(path, V2_BODY))
        assert status == 200, body
        outputs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
        assert outputs["label"] == ["setosa"] and len(outputs["probabilities"]) == 3
        assert headers["x-request-id"]
    status, _, body = request(
        running.port, post("/v1/models/iris:predict", json.dumps({"instances": [ROW]}).encode())
    )
    assert status == 200 and json.loads(body)["predictions"] == ["setosa"]
    status, _, body = request(running.port, post("/v2/models/nope/infer", V2_BODY))
    assert status == 404 and "nope" in json.loads(body)["error"]  # the endpoint's own errors
    assert running.app.paths == []

    # everything else goes to the app: other paths, other methods on the same paths
    for raw, path in [
        (get("/v2"), "/v2"),
        (get("/v2/models/iris/infer"), "/v2/models/iris/infer"),
        (post("/v2/health/live", b""), "/v2/health/live"),
        (post("/v2/models/iris/infer/extra", V2_BODY), "/v2/models/iris/infer/extra"),
    ]:
        status, _, body = request(running.port, raw)
        assert (status, body) == (299, b"app")
        assert running.app.paths[-1] == path


def test_a_server_without_a_ready_model_answers_not_ready(serve: Any) -> None:
    running = serve(with_model=False)
    status, _, body = request(running.port, get("/v2/health/ready"))
    assert (status, json.loads(body)) == (503, {"ready": False})
    status, _, body = request(running.port, get("/v2/health/live"))
    assert (status, json.loads(body)) == (200, {"live": True})


def test_pipelined_requests_are_answered_in_order_on_one_connection(serve: Any) -> None:
    running = serve()
    raw = (
        post("/v2/models/iris/infer", V2_BODY) + get("/v2/health/live") + get("/v2") + get("/v2/health/ready")
    )
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as connection:
        connection.sendall(raw)
        stream = connection.makefile("rb")
        answers = [read_response(stream) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 299, 200]
    assert "outputs" in json.loads(answers[0][2])
    assert json.loads(answers[1][2]) == {"live": True}
    assert answers[2][2] == b"app"
    assert json.loads(answers[3][2]) == {"ready": True}


def test_keep_alive_is_kept_and_connection_close_is_honoured(serve: Any) -> None:
    running = serve()
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as connection:
        stream = connection.makefile("rb")
        for _ in range(3):  # one connection, several probes, as a kubelet with keep-alive would
            connection.sendall(get("/v2/health/live"))
            assert read_response(stream)[0] == 200
        connection.sendall(post("/v2/models/iris/infer", V2_BODY))
        assert read_response(stream)[0] == 200
        connection.sendall(get("/v2/health/live", "Connection: close\r\n"))
        status, headers, _ = read_response(stream)
        assert status == 200 and headers["connection"] == "close"
        assert stream.read() == b""  # the server closed the connection


def test_an_uvicorn_without_the_hook_falls_back_to_the_stock_protocol(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(HttpToolsProtocol, "_start_asgi_task")
    with caplog.at_level(logging.WARNING, logger="modelyard.serving.fastpath"):
        assert fast_path_protocol(RestRoutes(DataPlane(max_request_rows=10)), uvicorn.Config(None)) is None
    assert "requests take FastAPI's path" in caplog.text


def test_a_probe_that_would_wait_is_never_left_half_answered(
    serve: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def waiting_live(self: RestRoutes, request: Any) -> Any:
        await asyncio.sleep(0)  # the fast path steps a probe once: this one would need a second step
        raise AssertionError("never resumed")

    monkeypatch.setattr(RestRoutes, "server_live", waiting_live)
    running = serve()
    with (
        caplog.at_level(logging.ERROR, logger="modelyard.serving.fastpath"),
        socket.create_connection(("127.0.0.1", running.port), timeout=10) as connection,
    ):
        connection.sendall(get("/v2/health/live"))
        stream = connection.makefile("rb")
        status, _, _ = read_response(stream)  # uvicorn's 500, from the coroutine being closed
        assert status == 500 and stream.read() == b""  # and the connection closed after it
    assert "did not complete at once" in caplog.text
    assert request(running.port, get("/v2/health/ready"))[0] == 200  # the server carries on


def test_many_probes_pipelined_behind_a_slow_request_are_all_answered_in_order(serve: Any) -> None:
    running = serve()
    probes = 300  # each used to start inside the previous one's response, one call deeper each time
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as connection:
        connection.sendall(get("/slow") + get("/v2/health/live") * probes + get("/v2/health/ready"))
        stream = connection.makefile("rb")
        answers = [read_response(stream) for _ in range(probes + 2)]
    assert answers[0][2] == b"app"
    assert all(json.loads(body) == {"live": True} for _, _, body in answers[1:-1])
    assert json.loads(answers[-1][2]) == {"ready": True}


def test_a_request_in_the_same_read_as_a_probe_is_not_cut_by_the_keep_alive_timeout(serve: Any) -> None:
    running = serve(timeout_keep_alive=0.1)  # shorter than the slow request behind the probe
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as connection:
        connection.sendall(get("/v2/health/live") + get("/slow"))
        stream = connection.makefile("rb")
        assert read_response(stream)[0] == 200
        assert read_response(stream)[2] == b"app"


def test_forwarded_headers_apply_to_the_fast_paths_as_to_the_app(serve: Any) -> None:
    running = serve(access_log=True)  # proxy headers are on by default, trusting 127.0.0.1
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    access = logging.getLogger("uvicorn.access")  # uvicorn's own handler; it does not propagate
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    forwarded = "X-Forwarded-For: 203.0.113.7\r\n"
    try:
        assert request(running.port, get("/v2/health/live", forwarded))[0] == 200
        raw = post("/v2/models/iris/infer", V2_BODY).replace(b"\r\n\r\n", f"\r\n{forwarded}\r\n".encode(), 1)
        assert request(running.port, raw)[0] == 200
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:  # the log line follows the response
            time.sleep(0.01)
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert len(lines) == 2 and all(line.startswith("203.0.113.7:") for line in lines), lines


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_request_waiting_when_the_connection_is_made_is_answered_then(
    bundles: dict[str, Path], loop_kind: str
) -> None:
    # A kubelet's probe is usually in the socket when the loop accepts its connection: it is answered
    # before connection_made returns, not an iteration later behind the other ready connections.
    import uvloop
    from uvicorn.server import ServerState

    dataplane = DataPlane(max_request_rows=100)
    model = ServedModel("iris", bundles["numeric"], version="7")
    model.load()
    dataplane.add_model(model)
    config = uvicorn.Config(RecordingApp(), lifespan="off", log_level="warning")
    protocol_class = fast_path_protocol(RestRoutes(dataplane), config)
    assert protocol_class is not None
    answered_on_connection: list[bytes] = []
    client, accepted = socket.socketpair()

    class Observed(protocol_class):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            try:
                answered_on_connection.append(client.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                answered_on_connection.append(b"")

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        client.sendall(get("/v2/health/live", "Connection: close\r\n"))
        await loop.connect_accepted_socket(lambda: Observed(config, ServerState(), {}, loop), accepted)
        client.setblocking(True)
        client.settimeout(10)
        rest = b""
        while chunk := await loop.run_in_executor(None, client.recv, 65536):
            rest += chunk
        return rest

    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    try:
        rest = loop.run_until_complete(main())
    finally:
        loop.close()
        client.close()
        model.close()
    assert answered_on_connection[0].startswith(b"HTTP/1.1 200 OK")
    assert b'{"live":true}' in answered_on_connection[0]
    assert rest == b""  # and the connection was closed, as the probe asked


def test_connections_that_close_without_a_word_leave_the_server_serving(serve: Any) -> None:
    running = serve()
    for _ in range(20):
        socket.create_connection(("127.0.0.1", running.port), timeout=10).close()
    assert request(running.port, get("/v2/health/ready"))[0] == 200
    assert request(running.port, post("/v2/models/iris/infer", V2_BODY))[0] == 200


def _serve_from_listener(
    bundles: dict[str, Path], loop_kind: str, *, ready_fails: bool = False
) -> tuple[bytes, tuple[int, dict[str, str], bytes], tuple[int, dict[str, str], bytes], int]:
    """Nothing but the protocol accepts from a listener here: what is served, it served when a request
    arrived on another connection. Returns the probe's raw answer, the inference answer on a second
    waiting connection, the answer to the request that triggered the look, and the requests counted."""
    import uvloop
    from uvicorn.server import ServerState

    dataplane = DataPlane(max_request_rows=100)
    model = ServedModel("iris", bundles["numeric"], version="7")
    model.load()
    dataplane.add_model(model)
    if ready_fails:

        def broken() -> bool:
            raise RuntimeError("readiness check broke")

        dataplane.ready = broken  # type: ignore[method-assign]
    # log_config=None: uvicorn leaves logging alone, so its access lines reach caplog
    config = uvicorn.Config(RecordingApp(), lifespan="off", log_config=None)
    listener = socket.create_server(("127.0.0.1", 0))
    protocol_class = fast_path_protocol(RestRoutes(dataplane), config, listener)
    assert protocol_class is not None
    port = listener.getsockname()[1]
    probe = socket.create_connection(("127.0.0.1", port), timeout=10)
    probe.sendall(get("/v2/health/ready"))  # HTTP/1.1, keep-alive: only the direct answer closes it
    inference = socket.create_connection(("127.0.0.1", port), timeout=10)
    inference.sendall(post("/v2/models/iris/infer", V2_BODY))
    busy_client, busy = socket.socketpair()
    state = ServerState()

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: protocol_class(config, state, {}, loop), busy)
        busy_client.sendall(post("/v2/models/iris/infer", V2_BODY))  # a request: the listener is looked at
        if ready_fails:
            probe_answer = await loop.run_in_executor(None, probe.recv, 65536)
        else:
            probe_answer = await loop.run_in_executor(None, _read_to_end, probe)
        inferred = await loop.run_in_executor(None, read_response, inference.makefile("rb"))
        triggering = await loop.run_in_executor(None, read_response, busy_client.makefile("rb"))
        return probe_answer, inferred, triggering

    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    try:
        probe_answer, inferred, triggering = loop.run_until_complete(main())
    finally:
        loop.close()
        for sock in (probe, inference, busy_client, listener):
            sock.close()
        model.close()
    return probe_answer, inferred, triggering, state.total_requests


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_connections_waiting_on_the_listener_are_served_between_requests(
    bundles: dict[str, Path], loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A probe is answered there and closed; anything else is handed to the loop.
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    probe_answer, inferred, triggering, requests = _serve_from_listener(bundles, loop_kind)
    head, _, probe_body = probe_answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in head and b"content-type: application/json" in head
    assert json.loads(probe_body) == {"ready": True}
    for status, _headers, body in (inferred, triggering):
        assert status == 200 and json.loads(body)["outputs"][0]["data"] == ["setosa"]
    assert requests == 3
    assert any('"GET /v2/health/ready HTTP/1.1" 200' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_probe_that_fails_off_the_listener_is_left_to_the_loop_and_the_looking_request_is_served(
    bundles: dict[str, Path], loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    probe_answer, inferred, triggering, _requests = _serve_from_listener(bundles, loop_kind, ready_fails=True)
    assert probe_answer.startswith(b"HTTP/1.1 500 ")  # uvicorn's answer to an endpoint that raised
    assert inferred[0] == 200 and triggering[0] == 200
    assert "answering a health probe off the listening socket failed" in caplog.text


def _read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("head", "taken"),
    [
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET /v2/health/ready HTTP/1.0\r\n\r\n", True),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", False),  # incomplete
        (b"GET /v2/health/live HTTP/1.1\r\n\r\nGET /v2/health/live HTTP/1.1\r\n\r\n", False),  # pipelined
        (b"GET /v2/health/live?x=1 HTTP/1.1\r\n\r\n", False),
        (b"POST /v2/health/live HTTP/1.1\r\nContent-Length: 0\r\n\r\n", False),
        (b"GET /v2/health/live HTTP/1.1\r\nContent-Length: 2\r\n\r\n", False),
        (b"GET /v2/models/iris HTTP/1.1\r\n\r\n", False),
        (b"GET /v2/health/live HTTP/2.0\r\n\r\n", False),
        (b"", False),
    ],
)
def test_only_a_complete_bodiless_probe_is_answered_off_the_listener(head: bytes, taken: bool) -> None:
    from modelyard.serving.fastpath import _probe_path

    assert (_probe_path(head, {"/v2/health/live", "/v2/health/ready"}) is not None) is taken


@pytest.mark.parametrize(
    ("options", "bound"),
    [
        ({"host": "127.0.0.1"}, True),
        ({"host": "::1"}, False),
        ({"host": "localhost"}, False),
        ({"host": "127.0.0.1", "ssl_certfile": "cert.pem"}, False),
    ],
)
def test_the_server_binds_its_own_listener_only_for_an_ipv4_address_without_tls(
    options: dict[str, Any], bound: bool
) -> None:
    from modelyard.serving.server import _probe_listener

    (port,) = free_ports(1)
    listener = _probe_listener(uvicorn.Config(RecordingApp(), port=port, **options))
    assert (listener is not None) is bound
    if listener is not None:
        listener.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_connections_accepted_from_the_servers_own_listener_have_tcp_nodelay(loop_kind: str) -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it each keep-alive
    # request waits ~40 ms for the client's delayed ACK
    import uvloop

    from modelyard.serving.server import _probe_listener

    (port,) = free_ports(1)
    listener = _probe_listener(uvicorn.Config(RecordingApp(), host="127.0.0.1", port=port))
    assert listener is not None
    nodelay: list[int] = []

    class Noting(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Noting, sock=listener)
        client = await loop.run_in_executor(None, socket.create_connection, ("127.0.0.1", port))
        for _ in range(100):
            if nodelay:
                break
            await asyncio.sleep(0.01)
        client.close()
        server.close()

    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert nodelay == [1]
