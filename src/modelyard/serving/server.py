"""Assemble and run the model server: one process, one event loop, REST and gRPC on kserve's ModelServer.

REST (uvicorn) and gRPC (grpc.aio) share one asyncio loop, so one micro-batcher per model coalesces
V1, V2 REST and gRPC requests together. Our REST routes are added to kserve's FastAPI app before kserve
adds its own (the first match wins), and our gRPC servicer replaces kserve's; see ``rest.py`` and
``grpc.py`` for why. A model whose bundle fails verification or loading is registered anyway: the
server is live, not ready, and says why.

Importing kserve pulls in the Kubernetes client, which a predictor never uses; it is stubbed out before
the first kserve import to save about 40 MB and 0.4 s of start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import os
import socket
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.bundle import METADATA_FILE, manifest_digest
from modelyard.errors import ModelyardError
from modelyard.settings import Settings

if TYPE_CHECKING:  # imported when assembling, after the cheap checks of the entry point
    from modelyard.serving.dataplane import DataPlane
    from modelyard.serving.metrics import ServingMetrics
    from modelyard.serving.model import ServedModel
    from modelyard.serving.prediction_log import PredictionLog

log = logging.getLogger("modelyard.serving")

DEFAULT_HOST = "0.0.0.0"  # the ServingRuntime contract: reachable on the pod's address


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server needs; built from Settings (MODELYARD_SERVING__*) and CLI flags."""

    model_dir: Path
    model_name: str = ""
    model_version: str = ""
    host: str = DEFAULT_HOST
    http_port: int = 8080
    grpc_port: int = 8081
    max_batch_size: int = 1024
    max_batch_wait_ms: float = 2.0
    max_request_rows: int = 10_000
    prefer_onnx: bool = True
    onnx_threads: int = 0
    prediction_log: bool = True
    database_url: str = ""
    spool_dir: Path | None = None
    log_queue_size: int = 100_000
    log_batch_size: int = 500
    log_flush_interval_s: float = 1.0
    spool_max_bytes: int = 256 * 1024 * 1024
    access_log: bool = False
    event_loop: str = "auto"
    grace_period_s: int = 5

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ServerOptions:
        serving = settings.serving
        values: dict[str, Any] = {
            "model_dir": serving.model_dir,
            "model_name": serving.model_name,
            "model_version": serving.model_version,
            "host": serving.host,
            "http_port": serving.http_port,
            "grpc_port": serving.grpc_port,
            "max_batch_size": serving.max_batch_size,
            "max_batch_wait_ms": serving.max_batch_wait_ms,
            "max_request_rows": serving.max_request_rows,
            "prefer_onnx": serving.prefer_onnx,
            "onnx_threads": serving.onnx_threads,
            "prediction_log": serving.prediction_log,
            "database_url": settings.database_url,
            "spool_dir": serving.spool_dir or settings.home / "spool",
            "log_queue_size": serving.log_queue_size,
            "log_batch_size": serving.log_batch_size,
            "log_flush_interval_s": serving.log_flush_interval_s,
            "spool_max_bytes": serving.spool_max_bytes,
            "access_log": serving.access_log,
            "event_loop": serving.event_loop,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def bundle_version(model_dir: Path) -> str:
    """A version for a bundle served without ``--model-version``.

    The folder's name when it is a number (``.../iris/3``, as the store and the CLI cache lay bundles
    out); otherwise the first 12 hex digits of metadata.json's sha256, which pins every file of the
    bundle; "unknown" when even that cannot be read (the bundle will not be ready anyway).
    """
    if model_dir.name.isdigit():
        return model_dir.name
    try:
        return manifest_digest(model_dir)[:12]
    except (ModelyardError, OSError):
        return "unknown"


def bundle_name(model_dir: Path) -> str:
    """The model name recorded in the bundle's metadata.json, read without trusting anything else."""
    try:
        name = json.loads((model_dir / METADATA_FILE).read_bytes()).get("name")
    except (OSError, ValueError, AttributeError):
        return "model"
    return name if isinstance(name, str) and name else "model"


# ---------------------------------------------------------------- kserve, imported lean


def _stub_kubernetes_client() -> None:
    if "kserve.api.kserve_client" not in sys.modules:
        stub = types.ModuleType("kserve.api.kserve_client")
        stub.KServeClient = None  # type: ignore[attr-defined]
        sys.modules["kserve.api.kserve_client"] = stub


@contextlib.contextmanager
def _argv_hidden_from_kserve() -> Iterator[None]:
    """kserve parses sys.argv when imported; our flags are ours, so it sees none of them."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def import_kserve() -> Any:
    _stub_kubernetes_client()
    with _argv_hidden_from_kserve():
        import kserve
        import kserve.model_server
    return kserve


# ---------------------------------------------------------------- assembling


@dataclass
class Assembly:
    """The parts of one server, before it runs."""

    options: ServerOptions
    dataplane: DataPlane
    model: ServedModel
    metrics: ServingMetrics
    prediction_log: PredictionLog | None


def assemble(options: ServerOptions) -> Assembly:
    """Load the model (never raising: a bad bundle makes it not ready) and build the data plane."""
    from modelyard.serving.dataplane import DataPlane
    from modelyard.serving.metrics import ServingMetrics
    from modelyard.serving.model import ServedModel

    metrics = ServingMetrics()
    name = options.model_name or bundle_name(options.model_dir)
    model = ServedModel(
        name,
        options.model_dir,
        version=options.model_version or bundle_version(options.model_dir),
        prefer_onnx=options.prefer_onnx,
        onnx_threads=options.onnx_threads,
        max_batch_size=options.max_batch_size,
        max_batch_wait_s=options.max_batch_wait_ms / 1000.0,
        batch_observer=lambda rows, _seconds: metrics.observe_batch(rows),
    )
    model.load()
    prediction_log = None
    feedback_store = None
    if options.prediction_log and options.database_url:
        from modelyard.serving.feedback import record_feedback
        from modelyard.serving.prediction_log import PredictionLog

        spool_dir = options.spool_dir or Path(".modelyard") / "spool"
        prediction_log = PredictionLog(
            options.database_url,
            spool_dir=spool_dir,
            queue_size=options.log_queue_size,
            batch_size=options.log_batch_size,
            flush_interval_s=options.log_flush_interval_s,
            spool_max_bytes=options.spool_max_bytes,
            metrics=metrics,
        )
        engine = prediction_log.engine
        if model.metadata is not None:
            from modelyard.monitoring.accuracy import start_accuracy_collector

            start_accuracy_collector(metrics.registry, engine, model.name, model.version, model.metadata)

        def feedback_store(**kwargs: Any) -> Any:
            return record_feedback(engine, **kwargs)

    dataplane = DataPlane(
        max_request_rows=options.max_request_rows,
        metrics=metrics,
        prediction_log=prediction_log,
        feedback_store=feedback_store,
    )
    dataplane.add_model(model)
    return Assembly(options, dataplane, model, metrics, prediction_log)


def _kserve_model(kserve: Any, model: ServedModel) -> Any:
    """Register our model in kserve's repository too, so kserve's remaining routes agree with ours."""

    class BundleModel(kserve.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(model.name)
            self.ready = model.ready

        def load(self) -> bool:
            return bool(model.ready)

        def start(self) -> None:
            """kserve's start() marks every model ready; readiness here is the bundle's."""

        def get_input_types(self) -> list[dict[str, Any]]:
            return [tensor.to_dict() for tensor in model.input_metadata()]

        def get_output_types(self) -> list[dict[str, Any]]:
            return [tensor.to_dict() for tensor in model.output_metadata()]

    return BundleModel()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is when a record is logged, not as it was when the server started:
    `modelyard serve` may run inside a caller (a test runner, a notebook) that swaps and closes it."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _configure_logging(access_log: bool) -> None:
    level = os.environ.get("MODELYARD_LOG_LEVEL", "INFO").upper()
    ours = logging.getLogger("modelyard")
    if not ours.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
        ours.propagate = False
    ours.setLevel(level)
    # Per-request lines cost more than a small model's prediction: off unless asked for.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else logging.WARNING)


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (unless asked for asyncio): it parses HTTP and runs callbacks faster."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def build_server(assembly: Assembly) -> Any:
    """kserve's ModelServer with our routes, our gRPC servicer and our lifecycle; not started yet."""
    kserve = import_kserve()
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, ModelServer, app
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.rest.server import RESTServer

    from modelyard.serving.fastpath import fast_path_protocol
    from modelyard.serving.grpc import InferenceServicer
    from modelyard.serving.rest import install_routes

    options = assembly.options
    routes = install_routes(app, assembly.dataplane)
    _install_lifespan(app, assembly)
    grpc_options = [
        ("grpc.max_send_message_length", kserve.model_server.args.grpc_max_send_message_length),
        ("grpc.max_receive_message_length", kserve.model_server.args.grpc_max_receive_message_length),
        # grpc sets SO_REUSEPORT by default: a second server would silently share a port in use
        ("grpc.so_reuseport", 0),
    ]

    class ModelyardGRPCServer(GRPCServer):  # type: ignore[misc]
        """kserve's GRPCServer with our servicer, on our host, without per-call logging."""

        async def start(self, max_workers: int) -> None:
            from grpc import aio

            self._server = aio.server(options=grpc_options)
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(assembly.dataplane), self._server
            )
            address = f"{_grpc_host(options.host)}:{options.grpc_port}"
            try:
                bound = self._server.add_insecure_port(address)
            except RuntimeError as exc:
                bound, reason = 0, f": {exc}"
            else:
                reason = ""
            if not bound:
                raise OSError(f"cannot listen for gRPC on {address} (in use?){reason}")
            await self._server.start()
            log.info("gRPC listening on %s", address)
            await self._server.wait_for_termination()

    class LeanRESTServer(RESTServer):  # type: ignore[misc]
        """kserve's REST server without its TimingMiddleware: it only writes kserve.trace lines, which
        are off, yet wraps every request (health probes included)."""

        listener: socket.socket | None = None

        def _add_middlewares(self, app: Any) -> None:
            pass

        async def start(self) -> None:
            """As kserve's, on a socket bound here: the fast path also looks at it for waiting probes."""
            self.create_application()
            await self._server.serve(sockets=[self.listener] if self.listener is not None else None)

    class ModelyardServer(ModelServer):  # type: ignore[misc]
        """One worker: REST and gRPC on one loop; binds ``options.host``."""

        def start(self, models: list[Any]) -> None:
            self._rest_server = LeanRESTServer(
                FASTAPI_APP_IMPORT_STRING,
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                workers=1,
                grace_period=self.grace_period,
                timeout_keep_alive=self.timeout_keep_alive,
            )
            config = self._rest_server.config
            config.host = options.host
            self._rest_server.listener = _probe_listener(config)
            protocol = fast_path_protocol(routes, config, self._rest_server.listener)
            if protocol is not None:
                config.http = protocol
            self.servers.append(self._rest_server.start())
            if self.enable_grpc:
                self._grpc_server = ModelyardGRPCServer(
                    self.grpc_port,
                    self.dataplane,
                    self.model_repository_extension,
                    kwargs={},
                    grace_period=self.grace_period,
                )
                self.servers.append(self._grpc_server.start(1))
            self.register_signal_handler()
            with asyncio.Runner(loop_factory=_loop_factory(options.event_loop)) as runner:
                runner.run(self._serve_on_this_loop())

        async def _serve_on_this_loop(self) -> None:
            # kserve's setup_event_loop() configures get_event_loop(), which is not the loop that runs.
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(self.default_exception_handler)
            loop.set_default_executor(ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelyard-io"))
            await asyncio.gather(*self.servers)

    server = ModelyardServer(
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        workers=1,
        enable_grpc=options.grpc_port > 0,
        enable_latency_logging=False,
        grace_period=options.grace_period_s,
    )
    _configure_logging(options.access_log)  # again: kserve's ModelServer() reconfigures logging
    server.register_model(_kserve_model(kserve, assembly.model))
    return server


def _grpc_host(host: str) -> str:
    return "[::]" if host in ("", "0.0.0.0", "::") else host


def _install_lifespan(app: Any, assembly: Assembly) -> None:
    """Start the prediction log on the serving loop; on shutdown flush it and stop the model threads."""
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        if assembly.prediction_log is not None:
            await assembly.prediction_log.start()
        # What start-up made (modules, the model) lives as long as the process: out of the collector's
        # sight, full collections under load stop rescanning ~170k objects (85 ms pauses of the loop).
        gc.collect()
        gc.freeze()
        options = assembly.options
        log.info(
            "serving %s on http://%s:%d%s (ready: %s)",
            assembly.model.name,
            options.host,
            options.http_port,
            f" and grpc {options.host}:{options.grpc_port}" if options.grpc_port else "",
            assembly.model.ready,
        )
        try:
            async with previous(application) as state:
                yield state
        finally:
            if assembly.prediction_log is not None:
                await assembly.prediction_log.stop()
            assembly.model.close()

    app.router.lifespan_context = lifespan


def _probe_listener(config: Any) -> socket.socket | None:
    """The REST listening socket, bound here so that the fast path can look at it between requests;
    None (uvicorn binds its own) for TLS and for hosts other than an IPv4 address, whose binding
    (both families for a name, IPv6-only for "::") only uvicorn's own path gets right."""
    try:
        literal_ipv4 = ipaddress.ip_address(config.host).version == 4
    except ValueError:
        literal_ipv4 = False
    if config.is_ssl or not literal_ipv4:
        return None
    bound = config.bind_socket()
    # bind_socket() leaves proto 0, and asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP
    return socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())


def serve(options: ServerOptions) -> None:
    """Run the server until SIGTERM/SIGINT."""
    _configure_logging(options.access_log)
    assembly = assemble(options)
    server = build_server(assembly)
    server.start([])


__all__ = ["DEFAULT_HOST", "Assembly", "ServerOptions", "assemble", "build_server", "bundle_name", "serve"]
