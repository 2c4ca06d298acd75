"""The batch scoring pipeline: fetch a registered version's bundle, score an input with it in chunks, write
the predictions to a file, the object store or a table. `modelyard score` runs it with `kfp.local`; the
compiled package is `pipelines/batch-scoring.yaml`.

The syntax of ``model``, ``input_uri`` and ``output_uri`` and the columns written are described in
`modelyard.pipeline.scoring_steps`, whose functions the components wrap. Nothing here is cached: "the
production version" and an input read in place may both have changed since an earlier run.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from modelyard.pipeline.components import IMAGE
from modelyard.pipeline.scoring_steps import DEFAULT_CHUNK_ROWS
from modelyard.pipeline.training import with_credentials

PIPELINE_NAME = "modelyard-batch-scoring"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fetch_model(
    model_ref: str, input_uri: str, output_uri: str, chunk_rows: int, bundle: Output[Model]
) -> NamedTuple("FetchOutputs", [("name", str), ("version", int), ("model_json", str)]):
    """Check the request, resolve the registered version and put its verified bundle in the artifact."""
    from collections import namedtuple

    from modelyard.pipeline import scoring_steps

    record = scoring_steps.fetch_step(model_ref, input_uri, output_uri, chunk_rows, bundle.path)
    bundle.metadata.update(
        {
            "model": record.ref,
            "stage": record.stage.value,
            "storage_uri": record.storage_uri,
            "sha256": record.sha256,
            "algorithm": record.algorithm,
        }
    )
    return namedtuple("FetchOutputs", ["name", "version", "model_json"])(
        record.name, record.version, scoring_steps.record_json(record)
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def score_input(
    bundle: Input[Model],
    model_name: str,
    model_version: int,
    input_uri: str,
    chunk_rows: int,
    predictions: Output[Dataset],
) -> str:
    """Read the input, check its columns, predict in chunks; every input column plus the predictions."""
    from modelyard.pipeline import scoring_steps

    outcome = scoring_steps.score_step(
        bundle.path, input_uri, model_name, model_version, chunk_rows, predictions.path
    )
    predictions.metadata.update(
        {
            "rows": outcome.rows,
            "model": outcome.model,
            "version": outcome.version,
            "class_counts": outcome.class_counts,
            "input": input_uri,
        }
    )
    return outcome.to_json()


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def write_predictions(
    predictions: Input[Dataset],
    output_uri: str,
    model_json: str,
    score_json: str,
    input_uri: str,
    chunk_rows: int,
) -> str:
    """Write the predictions to the output (file, s3:// object or table); return the run's summary."""
    from modelyard.pipeline import scoring_steps

    return scoring_steps.write_step(
        predictions.path, output_uri, model_json, score_json, input_uri, chunk_rows
    )


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Score a CSV, Parquet file or table with a registered model version; write predictions "
    "with class probabilities to a file, the object store or a table.",
)
def batch_scoring_pipeline(
    model: str,
    input_uri: str,
    output_uri: str,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> str:
    """Score an input with a registered model version.

    Args:
        model: NAME (production, else the latest version), NAME@VERSION, NAME@STAGE or NAME@latest.
        input_uri: a CSV/Parquet path or s3:// URI, table:[SCHEMA.]NAME, query:SELECT ... or
            dataset:NAME[@VERSION]; tables and queries read the registry database.
        output_uri: a .csv/.parquet path or s3:// URI, or table:[SCHEMA.]NAME in the registry database
            (created or replaced in one transaction).
        chunk_rows: rows predicted at a time.

    Returns:
        The run's summary as JSON: model, stage, storage_uri, input, output, rows, class_counts, columns.
    """
    fetch = with_credentials(
        fetch_model(model_ref=model, input_uri=input_uri, output_uri=output_uri, chunk_rows=chunk_rows)
    )
    fetch.set_caching_options(False)
    scored = with_credentials(
        score_input(
            bundle=fetch.outputs["bundle"],
            model_name=fetch.outputs["name"],
            model_version=fetch.outputs["version"],
            input_uri=input_uri,
            chunk_rows=chunk_rows,
        )
    )
    scored.set_caching_options(False)
    write = with_credentials(
        write_predictions(
            predictions=scored.outputs["predictions"],
            output_uri=output_uri,
            model_json=fetch.outputs["model_json"],
            score_json=scored.outputs["Output"],
            input_uri=input_uri,
            chunk_rows=chunk_rows,
        )
    )
    write.set_caching_options(False)
    return write.output
