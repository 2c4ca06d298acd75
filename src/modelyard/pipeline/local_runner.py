"""The process that runs one local pipeline run with kfp.local: ``python -m modelyard.pipeline.local_runner
FOLDER``, started by `modelyard.pipeline.local`.

It reads ``request.json`` in FOLDER (the pipeline as "module:function", its arguments, the pipeline root),
runs the pipeline with kfp.local's SubprocessRunner and cache, and writes the pipeline's output to
``output.json``. What it prints is KFP's log; a failed task makes it exit non-zero (kfp.local raises).
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path

from modelyard.storage import atomic_write


def run(folder: Path) -> None:
    from kfp import local

    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    module, _, function = request["pipeline"].partition(":")
    pipeline_func = getattr(importlib.import_module(module), function)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=request["pipeline_root"],
        enable_caching=True,
        raise_on_error=True,
    )
    with warnings.catch_warnings():
        # The component image has modelyard installed, as this Python does: KFP's warning does not apply.
        warnings.filterwarnings(
            "ignore", message="You may be attemping to run a task", category=RuntimeWarning
        )
        task = pipeline_func(**request["arguments"])
    with atomic_write(folder / "output.json") as partial:
        partial.write_text(json.dumps(task.output), encoding="utf-8")


if __name__ == "__main__":
    run(Path(sys.argv[1]))
