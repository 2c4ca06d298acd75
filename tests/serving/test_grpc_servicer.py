"""The gRPC adapter in process: the servicer on a real grpc.aio server, over a real data plane and bundle,
called through a real client's generated stubs (tritonclient's, whose messages are the specification's
``inference.*``), and our own messages checked field by field against them."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.grpc import open_inference_pb2
from modelyard.serving.grpc.servicer import SERVICE_NAME, add_servicer
from modelyard.serving.metrics import ServingMetrics
from modelyard.serving.model import ServedModel

from .conftest import NUMERIC_CLASSES

ROW = [5.1, 3.5, 1.4, 0.2]

Scenario = Callable[[Any, ServedModel], Awaitable[Any]]


def run(bundle: Path, scenario: Scenario) -> Any:
    """``scenario(stub, model)`` against a servicer on a loopback port; the server stops afterwards."""

    async def main() -> Any:
        model = ServedModel("iris", bundle, version="3")
        model.load()
        dataplane = DataPlane(max_request_rows=10)
        dataplane.add_model(model)
        server = grpc.aio.server()
        add_servicer(server, dataplane)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await scenario(pb_grpc.GRPCInferenceServiceStub(channel), model)
        finally:
            await server.stop(0)
            model.close()

    return asyncio.run(main())


def infer_request(rows: list[list[float]], raw: bool = False) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64", shape=[len(rows), 4])
    if raw:
        return pb.ModelInferRequest(
            model_name="iris", inputs=[tensor], raw_input_contents=[np.asarray(rows, dtype="<f8").tobytes()]
        )
    tensor.contents.fp64_contents.extend(np.asarray(rows).reshape(-1).tolist())
    return pb.ModelInferRequest(model_name="iris", inputs=[tensor])


def test_inference_over_typed_and_raw_contents(bundles: dict[str, Path]) -> None:
    async def scenario(stub: Any, model: ServedModel) -> tuple[Any, Any]:
        return await stub.ModelInfer(infer_request([ROW])), await stub.ModelInfer(
            infer_request([ROW], raw=True)
        )

    typed, raw = run(bundles["numeric"], scenario)
    for reply in (typed, raw):
        assert [output.name for output in reply.outputs] == ["label", "probabilities"]
        assert reply.model_version == "3" and len(reply.id) == 32
        probabilities = np.frombuffer(reply.raw_output_contents[1], dtype="<f8")
        assert abs(probabilities.sum() - 1) < 1e-9
        label_length = int.from_bytes(reply.raw_output_contents[0][:4], "little")
        assert reply.raw_output_contents[0][4 : 4 + label_length].decode() in NUMERIC_CLASSES


def test_health_and_metadata(bundles: dict[str, Path]) -> None:
    async def scenario(stub: Any, model: ServedModel) -> list[Any]:
        return [
            await stub.ServerLive(pb.ServerLiveRequest()),
            await stub.ServerReady(pb.ServerReadyRequest()),
            await stub.ModelReady(pb.ModelReadyRequest(name="iris", version="3")),
            await stub.ModelMetadata(pb.ModelMetadataRequest(name="iris")),
            await stub.ServerMetadata(pb.ServerMetadataRequest()),
        ]

    live, ready, model_ready, metadata, server = run(bundles["numeric"], scenario)
    assert live.live and ready.ready and model_ready.ready
    assert metadata.versions == ["3"] and metadata.inputs[0].name == "sepal_length"
    assert server.name == "modelyard" and "binary_tensor_data" in server.extensions


@pytest.mark.parametrize(
    ("request_", "code", "details"),
    [
        (
            pb.ModelInferRequest(model_name="nope"),
            grpc.StatusCode.NOT_FOUND,
            "model 'nope' is not served here",
        ),
        (
            pb.ModelInferRequest(model_name="iris"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the request has no inputs",
        ),
        (
            pb.ModelInferRequest(model_name="iris", model_version="9"),
            grpc.StatusCode.NOT_FOUND,
            "has no version '9'",
        ),
    ],
)
def test_client_mistakes_answer_their_code_and_message(
    bundles: dict[str, Path], request_: Any, code: grpc.StatusCode, details: str
) -> None:
    async def scenario(stub: Any, model: ServedModel) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request_)
        return caught.value

    error = run(bundles["numeric"], scenario)
    assert error.code() == code and details in (error.details() or "")


class BrokenRuntime:
    kind = "sklearn"

    def predict_proba(self, frame: Any) -> Any:
        raise RuntimeError("secret internal state 0xdeadbeef")


def test_a_fault_inside_the_model_is_internal_with_the_request_id(
    bundles: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(stub: Any, model: ServedModel) -> grpc.aio.AioRpcError:
        model._runtime = BrokenRuntime()  # type: ignore[assignment]  # our own class
        model._predict_numeric = None
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(infer_request([ROW]), metadata=(("x-request-id", "g-7"),))
        return caught.value

    with caplog.at_level(logging.ERROR, logger="modelyard.serving"):
        error = run(bundles["numeric"], scenario)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (g-7)" and "0xdeadbeef" not in (error.details() or "")
    assert any("g-7" in record.getMessage() and record.exc_info for record in caplog.records)


def fields(descriptor: Any) -> dict[str, Any]:
    """A message's fields (number, type, label and the shape of nested messages), recursively."""
    return {
        field.name: (
            field.number,
            field.type,
            field.is_repeated,
            fields(field.message_type) if field.message_type is not None else None,
        )
        for field in descriptor.fields
    }


@pytest.mark.parametrize(
    "message",
    [
        "ServerLiveRequest",
        "ServerLiveResponse",
        "ServerReadyRequest",
        "ServerReadyResponse",
        "ModelReadyRequest",
        "ModelReadyResponse",
        "ServerMetadataRequest",
        "ServerMetadataResponse",
        "ModelMetadataRequest",
        "ModelMetadataResponse",
        "ModelInferRequest",
        "ModelInferResponse",
        "InferTensorContents",
    ],
)
def test_our_messages_have_the_specifications_fields(message: str) -> None:
    ours = fields(getattr(open_inference_pb2, message).DESCRIPTOR)
    # tritonclient's messages add fields of Triton's own (InferParameter's uint64_param); ours are a subset
    theirs = fields(getattr(pb, message).DESCRIPTOR)
    assert differences(ours, theirs) == []


def test_the_field_comparison_finds_a_renumbered_field() -> None:
    theirs = fields(pb.ModelInferRequest.DESCRIPTOR)
    renumbered = {**theirs, "raw_input_contents": (8, *theirs["raw_input_contents"][1:])}
    assert differences(renumbered, theirs) == ["raw_input_contents: (8, 12, True) != (7, 12, True)"]


def differences(ours: dict[str, Any], theirs: dict[str, Any], where: str = "") -> list[str]:
    found = []
    for name, (number, kind, label, nested) in ours.items():
        if name not in theirs:
            found.append(f"{where}{name} is not in the specification")
            continue
        *their_shape, their_nested = theirs[name]
        if [number, kind, label] != their_shape:
            found.append(f"{where}{name}: {(number, kind, label)} != {tuple(their_shape)}")
        if nested is not None and their_nested is not None:
            found += differences(nested, their_nested, f"{where}{name}.")
    return found


def test_the_service_answers_under_the_specifications_name() -> None:
    assert pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == SERVICE_NAME


def test_the_generated_module_is_what_make_protos_produces(tmp_path: Path) -> None:
    source = Path(open_inference_pb2.__file__).parent / "open_inference.proto"
    src_root = source.parents[3]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{src_root}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(source),
        ],
        check=True,
    )
    generated = tmp_path / "modelyard" / "serving" / "grpc"
    for name in ("open_inference_pb2.py", "open_inference_pb2.pyi"):
        assert (generated / name).read_text() == (source.parent / name).read_text(), (
            f"{name} is stale: run `make protos`"
        )


class HeldRuntime:
    """Answers only once released: the client's deadline passes first, whatever the machine's speed."""

    kind = "sklearn"

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict_proba(self, frame: Any) -> Any:
        self.release.wait(60)
        return np.full((len(frame), 3), 1 / 3)


def test_a_call_the_client_gives_up_on_is_counted_cancelled_and_logged_at_info(
    bundles: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> Any:
        metrics = ServingMetrics()
        model = ServedModel("iris", bundles["numeric"], version="3")
        model.load()
        runtime = HeldRuntime()
        model._runtime = runtime  # type: ignore[assignment]  # our own class
        model._predict_numeric = None
        dataplane = DataPlane(max_request_rows=10, metrics=metrics)
        dataplane.add_model(model)
        server = grpc.aio.server()
        add_servicer(server, dataplane)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(infer_request([ROW]), timeout=0.3)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                runtime.release.set()
                cancelled = 'status="CANCELLED"'
                for _ in range(600):  # the server sees the cancellation on its own schedule
                    if cancelled in metrics.render(None)[0].decode():
                        break
                    await asyncio.sleep(0.05)
            return metrics.render(None)[0].decode()
        finally:
            await server.stop(0)
            model.close()

    with caplog.at_level(logging.INFO, logger="modelyard.serving"):
        text = asyncio.run(main())
    assert (
        'modelyard_requests_total{model="iris",protocol="v2-grpc",status="CANCELLED",version="3"} 1.0' in text
    )
    lines = [r for r in caplog.records if "the client cancelled the call" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
