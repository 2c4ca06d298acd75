"""Run the batch scoring pipeline on this machine with `kfp.local`, as `modelyard score` does."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from modelyard.pipeline.local import TaskEvent, run_pipeline_locally
from modelyard.pipeline.scoring_steps import DEFAULT_CHUNK_ROWS, absolute_locations, check_request
from modelyard.settings import Settings

SCORING_PIPELINE = "modelyard.pipeline.scoring:batch_scoring_pipeline"


def run_scoring_locally(
    settings: Settings,
    model_ref: str,
    input_uri: str,
    output_uri: str,
    on_event: Callable[[TaskEvent], None] | None = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict[str, Any]:
    """Score ``input_uri`` with a registered version and write the predictions to ``output_uri``.

    Returns the run's summary: ``model`` (NAME@VERSION used), ``stage``, ``storage_uri``, ``input``,
    ``output`` (where the predictions are), ``rows``, ``class_counts`` (predicted label -> rows) and
    ``columns`` (of the output). A malformed argument fails here, before any task starts (InvalidInput);
    a failing task raises PipelineFailed with the step's own message.
    """
    check_request(model_ref, input_uri, output_uri, chunk_rows)
    input_uri, output_uri = absolute_locations(input_uri, output_uri)
    run = run_pipeline_locally(
        SCORING_PIPELINE,
        {"model": model_ref, "input_uri": input_uri, "output_uri": output_uri, "chunk_rows": chunk_rows},
        settings,
        run_name=f"score-{model_ref.partition('@')[0]}",
        on_event=on_event,
    )
    summary: dict[str, Any] = json.loads(run.output)
    summary["log_file"] = str(run.log_file)
    return summary
