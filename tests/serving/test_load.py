"""Under load: V1, V2 REST and gRPC requests share model calls, and health probes answer while a slow,
CPU-bound model keeps the prediction thread busy."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from modelyard.bundle import BundleMetadata, write_bundle
from modelyard.spec import FeatureSpec, FeatureType

from .conftest import ServerProcess, post_json, send, server_env, start_server

SLOW_MODEL = '''
"""A classifier that burns CPU (holding the GIL) for a fixed time per call, whatever the batch size."""
import time

import numpy as np


class SlowClassifier:
    def __init__(self, seconds):
        self.seconds = seconds
        self.classes_ = np.array(["neg", "pos"], dtype=object)

    def predict_proba(self, frame):
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        positive = (frame["x"].to_numpy() > 0).astype(float)
        return np.stack([1 - positive, positive], axis=1)

    def predict(self, frame):
        return self.classes_[self.predict_proba(frame).argmax(axis=1)]
'''
CALL_SECONDS = 0.2


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("slow")
    (root / "code").mkdir()
    (root / "code" / "slowmodel.py").write_text(textwrap.dedent(SLOW_MODEL))
    sys.path.insert(0, str(root / "code"))
    try:
        import slowmodel

        metadata = BundleMetadata(
            name="slow",
            algorithm="slow",
            target="sign",
            features=[FeatureSpec(name="x", type=FeatureType.NUMERIC)],
            classes=["neg", "pos"],
            dataset_fingerprint="sha256:slow",
        )
        write_bundle(
            root / "bundle",
            model=slowmodel.SlowClassifier(CALL_SECONDS),
            metadata=metadata,
            model_card="",
            report_html="",
        )
    finally:
        sys.path.remove(str(root / "code"))
        sys.modules.pop("slowmodel", None)
    env = server_env(root / "home", PYTHONPATH=str(root / "code"), MODELYARD_SERVING__PREDICTION_LOG="false")
    server = start_server(root / "bundle", root / "home", "--max-batch-wait-ms", "0", env=env)
    yield server
    server.stop()


def model_calls(server: ServerProcess) -> tuple[float, float]:
    """(model calls, rows) so far, from the batch-size histogram on /metrics."""
    text = send("GET", f"{server.url}/metrics").body.decode()
    count = float(re.search(r"^modelyard_batch_rows_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"^modelyard_batch_rows_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return count, total


@pytest.mark.slow
def test_v1_v2_and_grpc_requests_are_coalesced_into_shared_model_calls(slow_server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient

    grpc_client = grpcclient.InferenceServerClient(slow_server.grpc_address)
    calls_before, rows_before = model_calls(slow_server)
    start = threading.Barrier(12)

    def v1(value: float) -> str:
        start.wait()
        answer = post_json(f"{slow_server.url}/v1/models/slow:predict", {"instances": [[value]]})
        return str(answer.json()["predictions"][0])

    def v2(value: float) -> str:
        start.wait()
        document = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [value]}]}
        return str(
            post_json(f"{slow_server.url}/v2/models/slow/infer", document).json()["outputs"][0]["data"][0]
        )

    def over_grpc(value: float) -> str:
        tensor = grpcclient.InferInput("x", [1], "FP64")
        tensor.set_data_from_numpy(np.array([value]))
        start.wait()
        return str(grpc_client.infer("slow", [tensor]).as_numpy("label")[0].decode())

    values = [(-1.0) ** i * (i + 1) for i in range(12)]  # alternating signs: neg, pos, ...
    senders = [v1, v2, over_grpc] * 4
    with ThreadPoolExecutor(12) as pool:
        labels = list(pool.map(lambda pair: pair[0](pair[1]), zip(senders, values, strict=True)))
    grpc_client.close()
    assert labels == ["pos" if v > 0 else "neg" for v in values]  # each caller got its own row back
    calls_after, rows_after = model_calls(slow_server)
    assert rows_after - rows_before == 12
    assert calls_after - calls_before < 12  # requests of all three protocols shared model calls


@pytest.mark.slow
def test_health_probes_answer_while_the_model_is_saturated(slow_server: ServerProcess) -> None:
    stop = threading.Event()
    answered = 0

    def load() -> None:
        nonlocal answered
        while not stop.is_set():
            document = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, -1.0]}]}
            if post_json(f"{slow_server.url}/v2/models/slow/infer", document, timeout=60).status == 200:
                answered += 1

    clients = [threading.Thread(target=load) for _ in range(8)]
    for client in clients:
        client.start()
    try:
        time.sleep(3 * CALL_SECONDS)  # the prediction thread is busy from here on
        probes = []
        for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/slow/ready"] * 4:
            began = time.perf_counter()
            answer = send("GET", slow_server.url + path, timeout=10)
            probes.append((path, answer.status, time.perf_counter() - began))
        for path in ["/v2/health/live", "/v2/health/ready", "/metrics"] * 4:  # the probe port
            began = time.perf_counter()
            answer = send("GET", slow_server.probe_url + path, timeout=10)
            probes.append((f"probe port {path}", answer.status, time.perf_counter() - began))
    finally:
        stop.set()
        for client in clients:
            client.join(60)
    assert all(status == 200 for _, status, _ in probes), probes
    assert answered > 0
    # Not a timing assertion (the machine is shared); printed for the record.
    print(json.dumps({"probe_seconds_max": max(s for _, _, s in probes), "inferences": answered}))
