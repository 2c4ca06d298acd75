"""``python -m modelyard.serving``: the predictor's entry point (KServe's ServingRuntime contract).

    python -m modelyard.serving --model-dir /mnt/models --model-name iris --http-port 8080 --grpc-port 8081

Every flag can also be set through the environment: ``MODELYARD_SERVING__<FLAG>`` (``--max-batch-size``
is ``MODELYARD_SERVING__MAX_BATCH_SIZE``), and flags override the environment. KServe's underscore
spellings (``--model_dir``, ``--model_name``, ``--http_port``, ``--grpc_port``) are accepted too. The
prediction log writes to ``MODELYARD_DATABASE_URL`` (default: SQLite under ``MODELYARD_HOME``).
"""

from __future__ import annotations

import argparse
import importlib.abc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelyard.errors import ModelyardError
from modelyard.settings import ServingSettings, load_settings


class _SkipPyarrow(importlib.abc.MetaPathFinder):
    """Refuse to import pyarrow in the server process.

    pandas imports pyarrow whenever it is installed (35 MB resident), though the server never needs it:
    its frames are built from numpy, and the predictor's budget is 250 MB. A refused import makes pandas
    and scikit-learn behave as they do without pyarrow (a ``sys.modules["pyarrow"] = None`` would not:
    scikit-learn looks for that key). ``MODELYARD_SERVING__ALLOW_PYARROW=1`` lifts it, for a bundle
    whose pickle needs pyarrow.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(
                "pyarrow is not loaded by the model server (MODELYARD_SERVING__ALLOW_PYARROW=1)"
            )
        return None


def skip_pyarrow(environ: Mapping[str, str]) -> None:
    """Install the finder, unless pandas has already been imported (then it is too late to matter)."""
    if "pandas" in sys.modules or environ.get("MODELYARD_SERVING__ALLOW_PYARROW") == "1":
        return
    if not any(isinstance(finder, _SkipPyarrow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SkipPyarrow())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard.serving",
        description="Serve a modelyard bundle over KServe V1 and V2 (REST and gRPC).",
        epilog="Each flag can be set as MODELYARD_SERVING__<FLAG> (upper case, '-' as '_').",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--model-dir", "--model_dir", type=Path, help="bundle folder (default /mnt/models)")
    add("--model-name", "--model_name", help="name served under /v2/models/NAME (default: the bundle's)")
    add("--model-version", help="version reported in metadata and metrics (e.g. the registry version)")
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--http-port", "--http_port", type=int, help="REST port, V1 and V2 (default 8080)")
    add("--grpc-port", "--grpc_port", type=int, help="V2 gRPC port, 0 turns gRPC off (default 8081)")
    add("--max-batch-size", type=int, help="rows coalesced into one model call (default 1024)")
    add("--max-batch-wait-ms", type=float, help="longest a request waits for batch-mates (default 2)")
    add("--max-request-rows", type=int, help="rows one request may carry (default 10000)")
    add(
        "--prefer-onnx", action=argparse.BooleanOptionalAction, default=None, help="use a verified ONNX model"
    )
    add("--onnx-threads", type=int, help="ONNX Runtime threads per call (default 0: automatic)")
    add(
        "--prediction-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write every prediction to the registry database",
    )
    add("--access-log", action=argparse.BooleanOptionalAction, default=None, help="log every request")
    add(
        "--event-loop",
        choices=["auto", "asyncio", "uvloop"],
        help="asyncio loop (default: uvloop if installed)",
    )
    return parser


def options_from(argv: Sequence[str]) -> Any:
    """ServerOptions from the environment (MODELYARD_SERVING__*), overridden by ``argv``'s flags."""
    from modelyard.serving.server import ServerOptions

    arguments = vars(build_parser().parse_args(list(argv)))
    settings = load_settings()
    flags = {key: value for key, value in arguments.items() if value is not None}
    try:
        serving = ServingSettings.model_validate({**settings.serving.model_dump(), **flags})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}"
            for err in exc.errors()
        )
        raise ModelyardError(f"invalid configuration: {problems}") from None
    settings = settings.model_copy(update={"serving": serving})
    return ServerOptions.from_settings(settings)


def main(argv: Sequence[str] | None = None) -> int:
    skip_pyarrow(os.environ)
    try:
        options = options_from(sys.argv[1:] if argv is None else argv)
    except ModelyardError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    from modelyard.serving.server import serve

    try:
        serve(options)
    except OSError as exc:  # a port in use, an address we cannot bind
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
