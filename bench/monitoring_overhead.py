"""What drift detection costs the model server's data plane: throughput with drift on and off, side by side.

    .venv/bin/python bench/monitoring_overhead.py [--seconds 3] [--repeats 5]

In one process, the data plane (micro-batcher, metrics, and drift when on) serves a LogisticRegression
bundle with a drift reference (20 numeric features, the training preprocessing, fitted on
``make_classification(n_samples=10000, n_features=20, random_state=0)``). Eight concurrent callers send
V1 requests of one row, then of 256 rows, for ``--seconds`` each; drift-on and drift-off runs alternate
``--repeats`` times and each figure is the median. Without HTTP in the way the relative cost shown here
is an upper bound of what a client sees; ``bench/serving.py`` measures the whole server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from modelyard.bundle import BundleMetadata, write_bundle
from modelyard.monitoring.reference import drift_reference
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.metrics import ServingMetrics
from modelyard.serving.model import ServedModel
from modelyard.spec import FeatureSpec, FeatureType
from modelyard.training.preprocessing import build_preprocessor

CONCURRENCY = 8


def write_model(dest: Path) -> tuple[pd.DataFrame, str]:
    x, y = make_classification(n_samples=10000, n_features=20, random_state=0)
    features = [FeatureSpec(name=f"x{i}", type=FeatureType.NUMERIC) for i in range(20)]
    frame = pd.DataFrame(x, columns=[f.name for f in features])
    labels = np.where(y == 1, "yes", "no")
    model = Pipeline([("preprocess", build_preprocessor(features)), ("model", LogisticRegression())])
    model.fit(frame.iloc[:8000], labels[:8000])
    reference = drift_reference(
        frame.iloc[:8000],
        features,
        holdout_probabilities=model.predict_proba(frame.iloc[8000:]),
        holdout_labels=list(labels[8000:]),
        classes=["no", "yes"],
    )
    metadata = BundleMetadata(
        name="bench",
        algorithm="logistic_regression",
        target="y",
        features=features,
        classes=["no", "yes"],
        dataset_fingerprint="0" * 64,
        reference_stats={"drift": reference},
    )
    write_bundle(dest, model=model, metadata=metadata, model_card="#\n", report_html="<p/>")
    return frame, "bench"


async def throughput(bundle: Path, rows: list[list[float]], batch: int, seconds: float, drift: bool) -> float:
    """Rows per second through the data plane with ``CONCURRENCY`` callers."""
    metrics = ServingMetrics(drift=drift)
    model = ServedModel("bench", bundle, version="1", prefer_onnx=False, max_batch_wait_s=0.002)
    model.load()
    dataplane = DataPlane(max_request_rows=10000, metrics=metrics)
    dataplane.add_model(model)
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        nonlocal done
        position = offset
        while time.perf_counter() < deadline:
            instances = rows[position : position + batch]
            position = (position + batch) % (len(rows) - batch)
            await dataplane.predict_v1("bench", instances, request_id=f"r{position}")
            done += batch

    started = time.perf_counter()
    await asyncio.gather(*(caller(i * 97) for i in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    model.close()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        frame, _ = write_model(Path(scratch) / "bundle")
        rows = frame.to_numpy().tolist()
        for batch in (1, 256):
            figures: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for drift in (False, True):
                    figures[drift].append(
                        asyncio.run(throughput(Path(scratch) / "bundle", rows, batch, args.seconds, drift))
                    )
            off, on = statistics.median(figures[False]), statistics.median(figures[True])
            print(
                f"{batch:>3} row(s) per request, c={CONCURRENCY}: drift off {off:,.0f} rows/s, "
                f"drift on {on:,.0f} rows/s: {100 * (off - on) / off:+.1f}% cost "
                f"(off {[round(f) for f in figures[False]]}, on {[round(f) for f in figures[True]]})"
            )


if __name__ == "__main__":
    main()
