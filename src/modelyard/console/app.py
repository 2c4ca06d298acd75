"""The console's Starlette application: HTML pages and the JSON API they use, over one Registry.

Every action a page offers is a JSON endpoint under ``/api`` (listed in the README beside the page); the
page's script calls it and shows its answer or its error in place. A ModelyardError becomes its own status
and message, as JSON under ``/api`` and as a page elsewhere; anything else is a 500 that names only the
error's type (the details go to the log), never a stack trace.

``security.ConsoleGuard`` refuses the state-changing requests another site could have sent and adds the
security headers; request bodies are read up to a limit and no further.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from modelyard.console import pages, security, service
from modelyard.console.batch import ScoringJobs
from modelyard.console.operator_view import OperatorView
from modelyard.console.training import TrainingRuns
from modelyard.errors import Busy, Conflict, InvalidInput, ModelyardError, NotFound, NotReady, TooLarge
from modelyard.registry import Registry
from modelyard.settings import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
KUBE_TIMEOUT_S = 5.0  # a page waits this long for the API server, then says the operator is not connected
MAX_DOCUMENT_BYTES = 1024 * 1024  # a prediction's JSON or a model spec
# Predictions wait on a predictor (up to service.PREDICT_TIMEOUT_S) in threads of their own, so a hung
# predictor holds these few and never the pool the pages share; uploads hold their bodies in memory.
PREDICT_CONCURRENCY = 4
UPLOAD_CONCURRENCY = 2


class Slots:
    """At most ``size`` requests of one kind at once; one more is refused with Busy, never queued (a
    queue behind a hung predictor only grows). Used from the event loop alone, so it needs no lock."""

    def __init__(self, what: str, size: int) -> None:
        self._what, self._size, self._taken = what, size, 0

    @contextmanager
    def take(self) -> Iterator[None]:
        if self._taken >= self._size:
            raise Busy(
                f"the console is busy: {self._size} {self._what} are running already; try again shortly"
            )
        self._taken += 1
        try:
            yield
        finally:
            self._taken -= 1


async def read_body(request: Request, limit: int, what: str, setting: str = "") -> bytes:
    """The request's body, refused with TooLarge as soon as it passes ``limit`` bytes (a declared length
    is checked first; a chunked body is counted as it arrives, never read whole first)."""
    where = f" ({setting})" if setting else ""
    message = f"{what} is larger than {limit / 1024 / 1024:g} MB{where}"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(message)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(message)
        chunks.append(chunk)
    return b"".join(chunks)


def _version(request: Request) -> int:
    text = str(request.path_params["version"])
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # "²".isdigit() is True
        raise InvalidInput(f"a version is a positive integer, got {text!r}")
    return int(text)


def create_app(settings: Settings, *, ensure_schema: bool = False) -> Starlette:
    """The console over the registry at ``settings.database_url`` (migrated first when ``ensure_schema``,
    as the CLI does on a laptop; a cluster migrates with `modelyard db upgrade`)."""
    registry_holder: dict[str, Registry] = {}
    training_runs = TrainingRuns(settings)
    scoring_jobs = ScoringJobs(settings)
    operator = OperatorView(settings.console)
    predict_slots = Slots("predictions", PREDICT_CONCURRENCY)
    predict_threads = ThreadPoolExecutor(PREDICT_CONCURRENCY, thread_name_prefix="console-predict")
    upload_slots = Slots("uploads", UPLOAD_CONCURRENCY)

    def registry() -> Registry:
        return registry_holder["registry"]

    async def run(function: Callable[..., Any], *args: Any) -> Any:
        # Registry, store and predictor calls block: keep them off the event loop.
        return await asyncio.to_thread(function, *args)

    # ---------------------------------------------------------------- pages

    async def ask_operator(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(asyncio.to_thread(function, *args), KUBE_TIMEOUT_S)
        except TimeoutError:
            return operator.not_connected(f"the API server did not answer within {KUBE_TIMEOUT_S:g} s")

    def models_with_health(current: Registry) -> list[dict[str, Any]]:
        return service.list_models(current, settings, health_hours=settings.monitoring.accuracy_window_h)

    async def models_page(request: Request) -> Response:
        models, resources = await asyncio.gather(
            run(models_with_health, registry()), ask_operator(operator.models)
        )
        return HTMLResponse(pages.models_page(models, resources))

    async def model_page(request: Request) -> Response:
        name = request.path_params["name"]
        model = next((m for m in await run(service.list_models, registry()) if m["name"] == name), None)
        if model is None:
            raise NotFound(f"model {name!r} is not in the registry")
        return HTMLResponse(pages.model_page(name, model))

    async def version_page(request: Request) -> Response:
        detail = await run(
            service.version_detail, settings, registry(), request.path_params["name"], _version(request)
        )
        return HTMLResponse(pages.version_page(detail))

    async def report_page(request: Request) -> Response:
        html = await run(
            service.report_html, settings, registry(), request.path_params["name"], _version(request)
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": security.REPORT_POLICY})

    async def compare_page(request: Request) -> Response:
        comparison = await _comparison(request)
        return HTMLResponse(pages.compare_page(comparison))

    async def predict_page(request: Request) -> Response:
        detail = await run(
            service.version_detail, settings, registry(), request.path_params["name"], _version(request)
        )
        return HTMLResponse(pages.predict_page(detail, service.infer_url(settings, detail["name"])))

    async def batch_page(request: Request) -> Response:
        detail = await run(
            service.version_detail, settings, registry(), request.path_params["name"], _version(request)
        )
        return HTMLResponse(pages.batch_page(detail, settings.console.max_upload_mb))

    async def _monitoring(request: Request) -> tuple[str, float, dict[str, Any], dict[str, Any]]:
        name, hours = request.path_params["name"], _hours(request)
        report, resource = await asyncio.gather(
            run(service.monitoring, settings, registry(), name, hours), ask_operator(operator.model, name)
        )
        return name, hours, report, resource

    async def monitoring_page(request: Request) -> Response:
        name, hours, report, resource = await _monitoring(request)
        return HTMLResponse(pages.monitoring_page(name, report, hours, resource))

    # ---------------------------------------------------------------- the JSON API

    async def _comparison(request: Request) -> dict[str, Any]:
        name = request.path_params["name"]
        versions = service.parse_versions(name, request.query_params.getlist("v"))
        result: dict[str, Any] = await run(service.compare, settings, registry(), name, versions)
        return result

    def _hours(request: Request) -> float:
        text = request.query_params.get("hours", "24")
        try:
            return float(text)
        except ValueError:
            raise InvalidInput(f"hours must be a number, got {text!r}") from None

    async def api_models(request: Request) -> Response:
        models, resources = await asyncio.gather(
            run(models_with_health, registry()), ask_operator(operator.models)
        )
        return JSONResponse(service.finite({"models": models, "operator": resources}))

    async def api_version(request: Request) -> Response:
        detail = await run(
            service.version_detail, settings, registry(), request.path_params["name"], _version(request)
        )
        return JSONResponse(service.finite(detail))

    async def api_compare(request: Request) -> Response:
        return JSONResponse(service.finite(await _comparison(request)))

    async def api_predict(request: Request) -> Response:
        body = await read_body(request, MAX_DOCUMENT_BYTES, "the request body")
        try:
            document = json.loads(body)
        except ValueError:
            raise InvalidInput(
                'the request body must be a JSON object: {"features": {NAME: VALUE, ...}}'
            ) from None
        features = document.get("features") if isinstance(document, dict) else None
        if not isinstance(features, dict):
            raise InvalidInput('the request body must be a JSON object: {"features": {NAME: VALUE, ...}}')
        name = request.path_params["name"]
        version = _version(request)
        with predict_slots.take():
            prediction = await asyncio.get_running_loop().run_in_executor(
                predict_threads, service.predict, settings, registry(), name, version, features
            )
        return JSONResponse({**prediction, "html": pages.prediction_html(prediction)})

    async def api_score(request: Request) -> Response:
        name, version = request.path_params["name"], _version(request)
        await run(registry().get_version, name, version)  # an unknown version is a 404 before the upload
        with upload_slots.take():
            content = await read_body(
                request,
                int(settings.console.max_upload_mb * 1024 * 1024),
                "the file",
                "MODELYARD_CONSOLE__MAX_UPLOAD_MB",
            )
            job = scoring_jobs.start(name, version, content)
        return JSONResponse(job.to_dict(), status_code=202)

    async def api_scoring_job(request: Request) -> Response:
        return JSONResponse(scoring_jobs.get(request.path_params["job"]).to_dict())

    async def api_scoring_result(request: Request) -> Response:
        job, path = scoring_jobs.result(request.path_params["job"])
        return FileResponse(
            path,
            media_type="text/csv",
            filename=job.filename,
            headers={"X-Modelyard-Rows": str(job.rows_total)},
        )

    async def api_monitoring(request: Request) -> Response:
        _, _, report, resource = await _monitoring(request)
        return JSONResponse(service.finite({**report, "operator": resource}))

    async def api_promote(request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse(await run(service.promote, registry(), name, _version(request)))

    async def api_rollback(request: Request) -> Response:
        return JSONResponse(await run(service.rollback, registry(), request.path_params["name"]))

    async def train_page(request: Request) -> Response:
        if settings.console.kubernetes:
            return HTMLResponse(pages.retrain_page(await ask_operator(operator.models)))
        return HTMLResponse(pages.train_page())

    async def api_retrain(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            answer = await asyncio.wait_for(asyncio.to_thread(operator.request_retrain, name), KUBE_TIMEOUT_S)
        except TimeoutError:
            # the thread may still set the annotation: say so, so nobody asks twice without looking
            raise NotReady(
                f"cannot ask the operator to retrain {name}: the API server did not answer within "
                f"{KUBE_TIMEOUT_S:g} s; the request may still reach it, so look at the Model's latest run "
                "on the Monitoring page before asking again"
            ) from None
        return JSONResponse(answer, status_code=202)

    async def api_train(request: Request) -> Response:
        if settings.console.kubernetes:
            raise Conflict(
                "this console runs beside the operator (MODELYARD_CONSOLE__KUBERNETES=true): a run trains "
                "as the operator's Job, not in the console's pod; retrain a Model from this page (POST "
                "/api/models/NAME/retrain), or change its spec with kubectl"
            )
        text = (await read_body(request, MAX_DOCUMENT_BYTES, "the spec")).decode("utf-8", "replace")
        spec = security.training_spec(text, settings.console)
        return JSONResponse(training_runs.start(spec).to_dict(), status_code=202)

    async def api_training_run(request: Request) -> Response:
        return JSONResponse(training_runs.get(request.path_params["run"]).to_dict())

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    def database_answers() -> None:
        with registry().engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    async def healthz(request: Request) -> Response:
        """The probes' endpoint: the console runs and its registry database answers (nothing heavier)."""
        await run(database_answers)
        return JSONResponse({"status": "ok"})

    async def livez(request: Request) -> Response:
        """The liveness probe's endpoint: answered on the event loop, so it fails when the loop is stuck."""
        return JSONResponse({"status": "alive"})

    # ---------------------------------------------------------------- errors

    def _is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    async def modelyard_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ModelyardError)
        if _is_api(request):
            return JSONResponse({"error": exc.message}, status_code=exc.status_code)
        return HTMLResponse(pages.error_page(exc.message, exc.status_code), status_code=exc.status_code)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        if _is_api(request):
            return JSONResponse({"error": message}, status_code=exc.status_code)
        return HTMLResponse(pages.error_page(message, exc.status_code), status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        identity = security.request_id(request)
        log.exception("console request %s %s failed (request id %s)", request.method, request.url, identity)
        # The exception's text may hold SQL, paths or addresses: the page names its type, the log the rest.
        message = (
            f"the console failed on this request ({type(exc).__name__}); the details are in its log "
            f"under request id {identity}"
        )
        # Starlette answers a 500 outside every middleware: the guard's headers are added here.
        headers = {**security.SECURITY_HEADERS, "x-request-id": identity}
        if _is_api(request):
            return JSONResponse({"error": message}, status_code=500, headers=headers)
        return HTMLResponse(pages.error_page(message, 500), status_code=500, headers=headers)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry_holder["registry"] = Registry(settings.database_url, ensure_schema=ensure_schema)
        operator.connect_in_background()
        try:
            yield
        finally:
            registry_holder.pop("registry").close()
            scoring_jobs.close()
            predict_threads.shutdown(wait=False, cancel_futures=True)

    handler = Callable[[Request], Awaitable[Response]]
    routes: list[tuple[str, handler, list[str]]] = [
        ("/", models_page, ["GET"]),
        ("/models/{name}", model_page, ["GET"]),
        ("/models/{name}/compare", compare_page, ["GET"]),
        ("/models/{name}/monitoring", monitoring_page, ["GET"]),
        ("/models/{name}/versions/{version}", version_page, ["GET"]),
        ("/models/{name}/versions/{version}/report.html", report_page, ["GET"]),
        ("/models/{name}/versions/{version}/predict", predict_page, ["GET"]),
        ("/models/{name}/versions/{version}/batch", batch_page, ["GET"]),
        ("/train", train_page, ["GET"]),
        ("/api/models", api_models, ["GET"]),
        ("/api/train", api_train, ["POST"]),
        ("/api/train/{run}", api_training_run, ["GET"]),
        ("/api/models/{name}/compare", api_compare, ["GET"]),
        ("/api/models/{name}/monitoring", api_monitoring, ["GET"]),
        ("/api/models/{name}/rollback", api_rollback, ["POST"]),
        ("/api/models/{name}/retrain", api_retrain, ["POST"]),
        ("/api/models/{name}/versions/{version}", api_version, ["GET"]),
        ("/api/models/{name}/versions/{version}/predict", api_predict, ["POST"]),
        ("/api/models/{name}/versions/{version}/score", api_score, ["POST"]),
        ("/api/score/{job}", api_scoring_job, ["GET"]),
        ("/api/score/{job}/result", api_scoring_result, ["GET"]),
        ("/api/models/{name}/versions/{version}/promote", api_promote, ["POST"]),
        ("/favicon.ico", favicon, ["GET"]),
        ("/healthz", healthz, ["GET"]),
        ("/livez", livez, ["GET"]),
    ]
    return Starlette(
        routes=[
            *(Route(path, endpoint, methods=methods) for path, endpoint, methods in routes),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        exception_handlers={
            ModelyardError: modelyard_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        middleware=security.middleware(settings.console),
        lifespan=lifespan,
    )
