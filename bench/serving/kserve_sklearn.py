"""KServe's scikit-learn predictor, built as ``kserve/python/sklearnserver`` does (not on PyPI).

    python bench/serving/kserve_sklearn.py --model_name rf --model_dir DIR --http_port 8080 --grpc_port 8081

Like sklearnserver: ``load`` joblib-loads the one model file in ``model_dir``; ``predict`` is synchronous
(kserve runs it on the event loop), turns the V1 ``instances`` or the first V2 input into numpy with
kserve's own ``get_predict_input`` and answers with ``get_predict_response``. It always calls
``predict_proba`` (sklearnserver does when ``PREDICT_PROBA=true``), so every server in the benchmark
computes the same thing. Per-request log lines (kserve's latency trace, uvicorn's access log) are off:
the peer runs in its cheapest configuration.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import joblib
import kserve
from kserve.errors import ModelMissingError
from kserve.utils.utils import get_predict_input, get_predict_response

MODEL_FILE_NAMES = ("model.joblib", "model.pkl", "model.pickle")


class SklearnPredictor(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.estimator: Any = None
        self.ready = False

    def load(self) -> bool:
        found = [self.model_dir / name for name in MODEL_FILE_NAMES if (self.model_dir / name).exists()]
        if len(found) != 1:
            raise ModelMissingError(str(self.model_dir))
        self.estimator = joblib.load(found[0])
        self.ready = True
        return self.ready

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        instances = get_predict_input(payload)
        probabilities = self.estimator.predict_proba(instances)
        return get_predict_response(payload, probabilities, self.name)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", type=Path, required=True)
    args, _ = parser.parse_known_args()
    predictor = SklearnPredictor(args.model_name, args.model_dir)
    predictor.load()
    server = kserve.ModelServer(enable_latency_logging=False)
    logging.getLogger("uvicorn.access").disabled = True  # after the ctor: it configures logging
    server.start([predictor])


if __name__ == "__main__":
    main()
