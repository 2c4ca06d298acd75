"""The floor: a bare FastAPI + uvicorn endpoint doing the V2 decode and predict_proba, nothing else.

    python bench/serving/floor.py --model-path model.joblib --model-name rf --port 8080

No validation, no batching, no metrics, no logging: ``orjson`` parses the body, the first input becomes a
float64 array of its shape, ``predict_proba`` runs inline on the event loop, and the probabilities go
back as one V2 output (or as V1 ``predictions``). Health and readiness answer as the Open Inference
Protocol names them, so the benchmark can probe it like the other servers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response


def build_app(estimator: Any, model_name: str) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def json_response(content: Any) -> Response:
        return Response(orjson.dumps(content), media_type="application/json")

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        tensor = orjson.loads(await request.body())["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        probabilities = estimator.predict_proba(rows)
        output = {
            "name": "predict_proba",
            "datatype": "FP64",
            "shape": list(probabilities.shape),
            "data": probabilities.ravel().tolist(),
        }
        return json_response({"model_name": model_name, "outputs": [output]})

    @app.post("/v1/models/{name}:predict")
    async def predict_v1(name: str, request: Request) -> Response:
        rows = np.asarray(orjson.loads(await request.body())["instances"], dtype=np.float64)
        return json_response({"predictions": estimator.predict_proba(rows).tolist()})

    @app.get("/v2/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return json_response({"ready": True})

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        return json_response({"name": model_name, "ready": True})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build_app(joblib.load(args.model_path), args.model_name)
    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
