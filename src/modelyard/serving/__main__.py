"""``python -m modelyard.serving``: the predictor's entry point (KServe's ServingRuntime contract).

    python -m modelyard.serving --model-dir /mnt/models --model-name iris --http-port 8080 --grpc-port 8081

The flags are the fields of ``ServingSettings``, each with its description as help. Every flag can also
be set through the environment: ``MODELYARD_SERVING__<FLAG>`` (``--max-batch-size`` is
``MODELYARD_SERVING__MAX_BATCH_SIZE``), and flags override the environment. KServe's underscore
spellings (``--model_dir``, ``--model_name``, ``--http_port``, ``--grpc_port``) are accepted too. The
prediction log writes to ``MODELYARD_DATABASE_URL`` (default: SQLite under ``MODELYARD_HOME``).
"""

from __future__ import annotations

import argparse
import importlib.abc
import sys
from collections.abc import Sequence
from typing import Any

from modelyard.errors import ModelyardError
from modelyard.settings import ServingSettings, Settings, add_group_flags, load_settings, with_group_flags


class _SkipPyarrow(importlib.abc.MetaPathFinder):
    """Refuse to import pyarrow in the server process.

    pandas imports pyarrow whenever it is installed (35 MB resident), though the server never needs it:
    its frames are built from numpy, and the predictor's budget is 250 MB. A refused import makes pandas
    and scikit-learn behave as they do without pyarrow. ``MODELYARD_SERVING__ALLOW_PYARROW=1`` lifts it,
    for a bundle whose pickle needs pyarrow.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(
                "pyarrow is not loaded by the model server (MODELYARD_SERVING__ALLOW_PYARROW=1)"
            )
        return None


def skip_pyarrow(allowed: bool) -> None:
    """Install the finder, unless pandas has already been imported (then it is too late to matter)."""
    if "pandas" in sys.modules or allowed:
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
    add_group_flags(parser, ServingSettings)
    return parser


def settings_from(argv: Sequence[str]) -> Settings:
    """Settings from the environment (MODELYARD_*), the serving group overridden by ``argv``'s flags."""
    arguments = build_parser().parse_args(list(argv))
    return with_group_flags(load_settings(), "serving", arguments)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from(sys.argv[1:] if argv is None else argv)
    except ModelyardError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    skip_pyarrow(settings.serving.allow_pyarrow)
    from modelyard.serving.server import serve

    try:
        serve(settings)
    except OSError as exc:  # a port in use, an address we cannot bind
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModelyardError as exc:  # a rollout candidate that cannot be served beside the stable version
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
