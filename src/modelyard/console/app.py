"""The console's Starlette application: HTML pages and the JSON API they use, over one Registry.

Every action a page offers is a JSON endpoint under ``/api`` (listed in the README beside the page); the
page's script calls it and shows its answer or its error in place. A ModelyardError becomes its own status
and message, as JSON under ``/api`` and as a page elsewhere; anything else is a 500 that says so, never a
stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from modelyard.console import pages, service
from modelyard.console.training import TrainingRuns, parse_spec_text
from modelyard.errors import InvalidInput, ModelyardError, NotFound
from modelyard.registry import Registry
from modelyard.settings import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


def _version(request: Request) -> int:
    text = str(request.path_params["version"])
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"a version is a positive integer, got {text!r}")
    return int(text)


def create_app(settings: Settings, *, ensure_schema: bool = False) -> Starlette:
    """The console over the registry at ``settings.database_url`` (migrated first when ``ensure_schema``,
    as the CLI does on a laptop; a cluster migrates with `modelyard db upgrade`)."""
    registry_holder: dict[str, Registry] = {}
    training_runs = TrainingRuns(settings)

    def registry() -> Registry:
        return registry_holder["registry"]

    async def run(function: Callable[..., Any], *args: Any) -> Any:
        # Registry, store and predictor calls block: keep them off the event loop.
        return await asyncio.to_thread(function, *args)

    # ---------------------------------------------------------------- pages

    def models_with_live(current: Registry) -> list[dict[str, Any]]:
        return service.list_models(current, live_hours=settings.monitoring.accuracy_window_h)

    async def models_page(request: Request) -> Response:
        return HTMLResponse(pages.models_page(await run(models_with_live, registry())))

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
        return HTMLResponse(html)

    async def compare_page(request: Request) -> Response:
        comparison = await _comparison(request)
        return HTMLResponse(pages.compare_page(comparison))

    async def predict_page(request: Request) -> Response:
        detail = await run(
            service.version_detail, settings, registry(), request.path_params["name"], _version(request)
        )
        return HTMLResponse(pages.predict_page(detail, settings.console.predictor_url))

    async def batch_page(request: Request) -> Response:
        detail = await run(
            service.version_detail, settings, registry(), request.path_params["name"], _version(request)
        )
        return HTMLResponse(pages.batch_page(detail, settings.console.max_upload_mb))

    async def monitoring_page(request: Request) -> Response:
        hours = _hours(request)
        report = await run(service.monitoring, settings, registry(), request.path_params["name"], hours)
        return HTMLResponse(pages.monitoring_page(request.path_params["name"], report, hours))

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
        return JSONResponse({"models": await run(models_with_live, registry())})

    async def api_version(request: Request) -> Response:
        detail = await run(
            service.version_detail, settings, registry(), request.path_params["name"], _version(request)
        )
        return JSONResponse(detail)

    async def api_compare(request: Request) -> Response:
        return JSONResponse(await _comparison(request))

    async def api_predict(request: Request) -> Response:
        try:
            document = await request.json()
        except ValueError:
            raise InvalidInput(
                'the request body must be a JSON object: {"features": {NAME: VALUE, ...}}'
            ) from None
        features = document.get("features") if isinstance(document, dict) else None
        if not isinstance(features, dict):
            raise InvalidInput('the request body must be a JSON object: {"features": {NAME: VALUE, ...}}')
        name = request.path_params["name"]
        prediction = await run(service.predict, settings, registry(), name, _version(request), features)
        return JSONResponse({**prediction, "html": pages.prediction_html(prediction)})

    async def api_score(request: Request) -> Response:
        name, version = request.path_params["name"], _version(request)
        limit = int(settings.console.max_upload_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InvalidInput(
                f"the file is larger than {settings.console.max_upload_mb:g} MB "
                "(MODELYARD_CONSOLE__MAX_UPLOAD_MB)"
            )
        content = await request.body()
        if len(content) > limit:
            raise InvalidInput(
                f"the file is larger than {settings.console.max_upload_mb:g} MB "
                "(MODELYARD_CONSOLE__MAX_UPLOAD_MB)"
            )
        with service.scratch_dir() as scratch:
            path, summary = await run(
                service.score_csv, settings, f"{name}@{version}", content, Path(scratch)
            )
            data = path.read_bytes()
        filename = f"{name}-v{version}-scored.csv"
        return Response(
            data,
            media_type="text/csv",
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "X-Modelyard-Rows": str(summary["rows"]),
            },
        )

    async def api_monitoring(request: Request) -> Response:
        report = await run(
            service.monitoring, settings, registry(), request.path_params["name"], _hours(request)
        )
        return JSONResponse(report)

    async def api_promote(request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse(await run(service.promote, registry(), name, _version(request)))

    async def api_rollback(request: Request) -> Response:
        return JSONResponse(await run(service.rollback, registry(), request.path_params["name"]))

    async def train_page(request: Request) -> Response:
        return HTMLResponse(pages.train_page())

    async def api_train(request: Request) -> Response:
        text = (await request.body()).decode("utf-8", "replace")
        spec = parse_spec_text(text, Path.cwd())
        return JSONResponse(training_runs.start(spec).to_dict(), status_code=202)

    async def api_training_run(request: Request) -> Response:
        return JSONResponse(training_runs.get(request.path_params["run"]).to_dict())

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

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
        log.exception("console request %s failed", request.url.path)
        message = f"the console failed: {type(exc).__name__}: {exc} (details in its log)"
        if _is_api(request):
            return JSONResponse({"error": message}, status_code=500)
        return HTMLResponse(pages.error_page(message, 500), status_code=500)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry_holder["registry"] = Registry(settings.database_url, ensure_schema=ensure_schema)
        try:
            yield
        finally:
            registry_holder.pop("registry").close()

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
        ("/api/models/{name}/versions/{version}", api_version, ["GET"]),
        ("/api/models/{name}/versions/{version}/predict", api_predict, ["POST"]),
        ("/api/models/{name}/versions/{version}/score", api_score, ["POST"]),
        ("/api/models/{name}/versions/{version}/promote", api_promote, ["POST"]),
        ("/favicon.ico", favicon, ["GET"]),
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
        lifespan=lifespan,
    )
