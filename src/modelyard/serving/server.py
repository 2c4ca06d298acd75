"""Assemble and run the model server: REST and gRPC on one event loop, probes on a port of their own.

The server owns each of its parts through its public API, as MLServer does: a ``uvicorn.Config`` and
``uvicorn.Server`` run the REST app (``rest/app.py``); a ``grpc.aio`` server runs the Open Inference
Protocol servicer (``grpc/servicer.py``) on the same loop, so one micro-batcher per model coalesces V1,
V2 REST and gRPC requests together; a threading HTTP server answers the probes and ``/metrics`` on the
metrics port (``probes.py``). ``serve(settings)`` is the one entry point, for ``python -m
modelyard.serving`` and ``modelyard serve`` alike.

A model whose bundle fails verification or loading is registered anyway: the server is live, not ready,
and says why. On SIGTERM (or SIGINT) uvicorn stops accepting, lets in-flight requests finish for
``grace_period_s``, then runs the app's lifespan shutdown, which stops gRPC with the same grace, writes
what the prediction log still holds and stops the probe server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from modelyard.bundle import MANIFEST_NAME, manifest_digest
from modelyard.errors import ModelyardError
from modelyard.settings import Settings

if TYPE_CHECKING:  # imported when assembling, after the cheap checks of the entry point
    import grpc
    import uvicorn

    from modelyard.monitoring.accuracy import AccuracyCollector
    from modelyard.serving.dataplane import DataPlane
    from modelyard.serving.model import ServedModel
    from modelyard.serving.prediction_log.process import PredictionLogProcess
    from modelyard.serving.probes import ProbeServer

log = logging.getLogger("modelyard.serving")

GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest gRPC answer: a max_request_rows batch of many classes fits. What the server takes is
bounded by ``max_request_bytes``."""


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
        name = json.loads((model_dir / MANIFEST_NAME).read_bytes()).get("name")
    except (OSError, ValueError, AttributeError):
        return "model"
    return name if isinstance(name, str) and name else "model"


def candidate_dir(settings: Settings) -> Path:
    """The local folder of ``serving.candidate_uri``: a folder as it is (loading verifies it, as it does
    the stable one), a ``file://`` bundle verified where it is, an ``s3://`` one fetched and verified into
    HOME/candidates/BUCKET/KEY. ModelyardError naming the URI when it cannot be had."""
    from modelyard.bundle import fetch_bundle

    uri = settings.serving.candidate_uri
    if "://" not in uri:
        return Path(uri)
    try:
        parsed = urlparse(uri)
        destination = settings.home / "candidates" / parsed.netloc / parsed.path.strip("/")
        return fetch_bundle(uri, destination, s3=settings.s3)
    except ModelyardError as exc:
        raise ModelyardError(f"cannot serve the candidate {uri}: {exc.message}") from None


# ---------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is when a record is logged, not as it was when the server started:
    `modelyard serve` may run inside a caller (a test runner, a notebook) that swaps and closes it."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(settings: Settings) -> None:
    ours = logging.getLogger("modelyard")
    if not ours.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
        ours.propagate = False
    ours.setLevel(settings.log_level)
    # Per-request lines cost more than a small model's prediction: off unless asked for.
    logging.getLogger("uvicorn.access").setLevel(
        logging.INFO if settings.serving.access_log else logging.WARNING
    )


# ---------------------------------------------------------------- the server


class ModelServer:
    """One served bundle: its data plane, and the servers that expose it. Build, then :meth:`run`."""

    def __init__(self, settings: Settings) -> None:
        from modelyard.serving.dataplane import DataPlane
        from modelyard.serving.metrics import ServingMetrics
        from modelyard.serving.model import ServedModel

        self.settings = settings
        serving = settings.serving
        self.metrics = ServingMetrics(drift=settings.monitoring.drift)
        metrics = self.metrics
        name = serving.model_name or bundle_name(serving.model_dir)

        def served(model_dir: Path, version: str) -> ServedModel:
            return ServedModel(
                name,
                model_dir,
                version=version or bundle_version(model_dir),
                prefer_onnx=serving.prefer_onnx,
                onnx_threads=serving.onnx_threads,
                max_batch_size=serving.max_batch_size,
                max_batch_wait_s=serving.max_batch_wait_ms / 1000.0,
                batch_observer=lambda rows, _seconds: metrics.observe_batch(rows),
            )

        self._served = served
        self.model = served(serving.model_dir, serving.model_version)
        self.model.load()
        # Fetched and loaded by load_candidate(), once the probes answer (live, not ready yet).
        self.candidate: ServedModel | None = None
        self.prediction_log: PredictionLogProcess | None = None
        self.accuracy: list[AccuracyCollector] = []
        feedback_store = None
        if serving.prediction_log and settings.database_url:
            from modelyard.serving.feedback import record_feedback
            from modelyard.serving.prediction_log.process import PredictionLogProcess

            self.prediction_log = PredictionLogProcess(
                settings.database_url,
                spool_dir=serving.spool_dir or settings.home / "spool",
                queue_size=serving.log_queue_size,
                batch_size=serving.log_batch_size,
                flush_interval_s=serving.log_flush_interval_s,
                spool_max_bytes=serving.spool_max_bytes,
                metrics=metrics,
                log_level=settings.log_level,
            )
            engine = self.prediction_log.engine
            from modelyard.monitoring.accuracy import start_accuracy_collector
            from modelyard.serving.metrics import Together

            if self.model.metadata is not None:
                self.accuracy.append(
                    start_accuracy_collector(
                        None,
                        engine,
                        self.model.name,
                        self.model.version,
                        self.model.metadata,
                        settings.monitoring,
                    )
                )
            self._accuracy_family = Together(self.accuracy)
            metrics.registry.register(self._accuracy_family)

            def feedback_store(**kwargs: Any) -> Any:
                return record_feedback(engine, **kwargs)

        self.dataplane: DataPlane = DataPlane(
            max_request_rows=serving.max_request_rows,
            max_text_length=serving.max_text_length,
            metrics=metrics,
            prediction_log=self.prediction_log,
            feedback_store=feedback_store,
        )
        self.dataplane.add_model(self.model)
        self.probes: ProbeServer | None = None
        self.grpc_server: grpc.aio.Server | None = None

    # ------------------------------------------------------------ parts

    def load_candidate(self) -> None:
        """Fetch, load and roll out ``serving.candidate_uri`` beside the stable model, if set. A candidate
        that cannot be served stops the start (ModelyardError naming why): the pods serving now keep
        serving."""
        serving = self.settings.serving
        if not serving.candidate_uri or self.candidate is not None:
            return
        from modelyard.serving.rollout import Rollout

        candidate = self._served(candidate_dir(self.settings), serving.candidate_version)
        self.candidate = candidate
        candidate.load()
        self.dataplane.add_candidate(Rollout(candidate, serving.rollout_mode, serving.canary_percent))
        if self.prediction_log is not None and candidate.metadata is not None:
            from modelyard.monitoring.accuracy import start_accuracy_collector

            collector = start_accuracy_collector(
                None,
                self.prediction_log.engine,
                candidate.name,
                candidate.version,
                candidate.metadata,
                self.settings.monitoring,
            )
            self.accuracy.append(collector)
            self._accuracy_family.collectors.append(collector)

    def uvicorn_config(self) -> uvicorn.Config:
        import uvicorn

        from modelyard.serving.rest.app import build_app

        serving = self.settings.serving
        return uvicorn.Config(
            build_app(
                self.dataplane,
                lifespan=self._lifespan,
                max_request_bytes=serving.max_request_bytes,
                body_timeout_s=serving.body_timeout_s,
            ),
            host=serving.host,
            port=serving.http_port,
            loop=serving.event_loop,  # uvicorn's own choice: auto takes uvloop when installed
            http="auto",
            lifespan="on",
            log_config=None,  # our logging, configured once
            access_log=serving.access_log,
            timeout_graceful_shutdown=int(serving.grace_period_s),
            server_header=False,
            # Bounds a hostile client meets here; header read time and size are a proxy's to bound
            # (uvicorn has no public setting for them with httptools): see the README.
            limit_concurrency=serving.max_connections,
            timeout_keep_alive=serving.keep_alive_s,
        )

    async def start_grpc(self) -> grpc.aio.Server | None:
        """The gRPC server, listening; None when gRPC is off. OSError when the port cannot be had."""
        serving = self.settings.serving
        if serving.grpc_port == 0:
            return None
        from grpc import aio

        from modelyard.serving.grpc.servicer import add_servicer

        server = aio.server(
            maximum_concurrent_rpcs=serving.max_connections,
            options=[
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", serving.max_request_bytes),
                # grpc sets SO_REUSEPORT by default: a second server would silently share a port in use
                ("grpc.so_reuseport", 0),
            ],
        )
        add_servicer(server, self.dataplane)
        address = f"{_grpc_host(serving.host)}:{serving.grpc_port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            bound, reason = 0, f": {exc}"
        else:
            reason = ""
        if not bound:
            raise OSError(f"cannot listen for gRPC on {address} (in use?){reason}")
        await server.start()
        log.info("gRPC listening on %s", address)
        return server

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        """Start-up and shutdown of everything the REST app's loop runs besides REST."""
        if self.prediction_log is not None:
            await self.prediction_log.start()
        # What start-up made (modules, the model) lives as long as the process: out of the collector's
        # sight, full collections under load stop rescanning it (long pauses of the loop).
        gc.collect()
        gc.freeze()
        serving = self.settings.serving
        log.info(
            "serving %s on http://%s:%d%s (ready: %s)",
            self.model.name,
            serving.host,
            serving.http_port,
            f" and grpc {serving.host}:{serving.grpc_port}" if self.grpc_server is not None else "",
            self.model.ready,
        )
        try:
            yield
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop gRPC and let a shadow candidate score what it was handed, both within one grace period
        (a shadow request left then is cancelled), write the log, stop the models and probes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.serving.grace_period_s
        if self.grpc_server is not None:
            await self.grpc_server.stop(self.settings.serving.grace_period_s)
            self.grpc_server = None
        await self.dataplane.finish_shadows(deadline - loop.time())
        for collector in self.accuracy:
            collector.stop()
        self.dataplane.record_pending()
        if self.prediction_log is not None:
            await self.prediction_log.stop()
        self.model.close()
        if self.candidate is not None:
            self.candidate.close()
        if self.probes is not None:
            self.probes.stop()
            self.probes = None

    # ------------------------------------------------------------ running

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT. OSError when a port cannot be had, before anything is served."""
        import uvicorn

        serving = self.settings.serving
        config = self.uvicorn_config()
        listener = _listen(serving.host, serving.http_port)
        server = uvicorn.Server(config)
        try:
            if serving.metrics_port:
                from modelyard.serving.probes import ProbeServer

                # ready once REST listens (gRPC listens before it), not once a signal asks uvicorn to stop
                self.probes = ProbeServer(
                    self.dataplane,
                    serving.host,
                    serving.metrics_port,
                    serving=lambda: server.started and not server.should_exit,
                )
                self.probes.start()
            # after the probes: a candidate's download and load may outlast the liveness probe's patience
            self.load_candidate()
            with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
                runner.run(self._serve(server, listener))
        finally:
            listener.close()
            if self.probes is not None:
                self.probes.stop()
                self.probes = None

    async def _serve(self, server: uvicorn.Server, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelyard-io"))
        self.grpc_server = await self.start_grpc()
        try:
            await server.serve(sockets=[listener])
        finally:
            if self.grpc_server is not None:  # the lifespan did not run (start-up failed)
                await self.grpc_server.stop(0)
                self.grpc_server = None


def _grpc_host(host: str) -> str:
    return "[::]" if host in ("", "0.0.0.0", "::") else host


def _listen(host: str, port: int) -> socket.socket:
    """The REST listening socket, bound here so that a port in use is a clear error before start-up.

    Made with IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP,
    and without it a response written in two parts waits for the client's delayed ACK (about 40 ms).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise OSError(f"cannot listen for REST on {host}:{port} (in use?): {exc.strerror}") from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def serve(settings: Settings) -> None:
    """Run the server that ``settings`` describe until SIGTERM/SIGINT.

    SIGTERM ends the process with status 0: before the servers start (while the model loads) at once,
    and once they run after uvicorn's graceful shutdown, which hands the signal back to this handler.
    """
    configure_logging(settings)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ModelServer(settings).run()


__all__ = ["ModelServer", "bundle_name", "bundle_version", "configure_logging", "serve"]
