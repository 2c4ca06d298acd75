"""Batch scoring as plain functions: what the scoring pipeline's components call, testable without KFP.

A run resolves a registered model version, fetches and verifies its bundle, reads the input, checks it
holds every feature the model needs, predicts in chunks of ``chunk_rows`` rows (so the model's own
intermediate arrays stay bounded whatever the input's size), and writes the predictions.

**Model** (``--model``): a model reference (``modelyard.registry.refs``): NAME (the production version,
else the latest), NAME@VERSION, NAME@STAGE or NAME@latest.

**Input** (``--input``)::

    PATH, file://PATH, s3://BUCKET/KEY   a CSV (.csv, .tsv, optionally .gz/.bz2/...) or Parquet file
    table:NAME, table:SCHEMA.NAME        every row of a table in the registry database
    query:SELECT ...                     the rows of a read-only query against the registry database
    dataset:NAME[@VERSION]               a data set loaded with `modelyard data load`

The registry database is MODELYARD_DATABASE_URL: the only database whose credentials the pipeline has.

**Output** (``--output``)::

    PATH, file://PATH, s3://BUCKET/KEY   .csv, or .parquet/.pq, by suffix; written whole, then put in
                                         place (a rename, or one S3 PUT): readers never see half a file
    table:NAME, table:SCHEMA.NAME        a table in the registry database, created or replaced in one
                                         transaction (rows go to a staging table that is then renamed)

**Columns written**: every input column, unchanged and in order (so ids and other keys come along), then

    label           the predicted class: the one with the highest probability, as the model server answers
    proba_<class>   one per class, in the bundle's class order; each row sums to 1
    model           the model's name
    model_version   its version

Row *i* of the output is row *i* of the input. An input already holding one of these columns is refused
(rename it, e.g. with ``query:SELECT label AS given_label, ...``).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from modelyard.bundle import BundleMetadata, fetch_bundle, load_bundle, manifest_digest, verify_bundle
from modelyard.data.loading import load_frame
from modelyard.errors import (
    BundleIntegrityError,
    Conflict,
    DataValidationError,
    InvalidInput,
    StorageError,
    database_reason,
    first_line,
)
from modelyard.pipeline.events import task_events
from modelyard.registry import ModelVersionRecord, Registry, parse_model_ref
from modelyard.registry.db import WRITE_OPTION, create_engine_for, redact
from modelyard.registry.tables import Base
from modelyard.serving.runtime import SklearnRuntime
from modelyard.settings import Settings, load_settings
from modelyard.spec import DataSource, FeatureType
from modelyard.storage import atomic_write, open_store_from_uri

DEFAULT_CHUNK_ROWS = 10_000
LABEL_COLUMN = "label"
PROBA_PREFIX = "proba_"
MODEL_COLUMN = "model"
VERSION_COLUMN = "model_version"
_INPUT_HELP = (
    "use a CSV/Parquet PATH, file://PATH, s3://BUCKET/KEY, table:[SCHEMA.]NAME, query:SELECT ... "
    "or dataset:NAME[@VERSION]"
)
_OUTPUT_HELP = "use a .csv or .parquet PATH, file://PATH, s3://BUCKET/KEY, or table:[SCHEMA.]NAME"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Lowercase, unquoted-safe SQL names: they mean the same table quoted or not, on Postgres and SQLite.
_SQL_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


# ---------------------------------------------------------------- parsing what the user asked for


def parse_input(text: str) -> DataSource:
    """The DataSource an ``--input`` names (see the module docstring); InvalidInput when it names none."""
    kind, separator, rest = text.partition(":")
    if separator and kind in ("table", "query", "dataset"):
        if not rest.strip():
            raise InvalidInput(f"--input {text!r}: nothing after '{kind}:'; {_INPUT_HELP}")
        return DataSource.model_validate({kind: rest.strip()})
    if not text.strip():
        raise InvalidInput(f"--input is empty: {_INPUT_HELP}")
    scheme = _SCHEME.match(text)
    if scheme and scheme[1].lower() not in ("file", "s3"):
        raise InvalidInput(f"--input {text!r}: unsupported scheme {scheme[1]}://; {_INPUT_HELP}")
    return DataSource(path=text)


@dataclass(frozen=True)
class OutputTarget:
    """Where predictions go: a local file, an S3 object, or a table in the registry database."""

    kind: Literal["file", "s3", "table"]
    location: str  # an absolute or relative path, an s3:// URI, or the table's name
    file_format: Literal["csv", "parquet"] | None = None
    schema: str | None = None  # of a table

    def describe(self) -> str:
        if self.kind == "table":
            return "table:" + (f"{self.schema}.{self.location}" if self.schema else self.location)
        return self.location


def parse_output(text: str) -> OutputTarget:
    """The OutputTarget an ``--output`` names (see the module docstring); InvalidInput otherwise."""
    kind, separator, rest = text.partition(":")
    if separator and kind == "table":
        parts = rest.strip().split(".")
        if len(parts) > 2 or not all(_SQL_NAME.match(part) for part in parts):
            raise InvalidInput(
                f"--output {text!r}: a table is table:NAME or table:SCHEMA.NAME, each part 1 to 63 "
                "lowercase letters, digits and '_', not starting with a digit"
            )
        schema, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        return OutputTarget("table", name, schema=schema)
    if separator and kind in ("query", "dataset"):
        raise InvalidInput(f"--output {text!r}: predictions cannot be written to a {kind}; {_OUTPUT_HELP}")
    if not text.strip():
        raise InvalidInput(f"--output is empty: {_OUTPUT_HELP}")
    scheme = _SCHEME.match(text)
    if scheme and scheme[1].lower() == "s3":
        parsed = urlparse(text)
        if not parsed.netloc or not parsed.path.strip("/") or text.endswith("/"):
            raise InvalidInput(f"--output {text!r}: an s3:// output needs a bucket and an object key")
        return OutputTarget("s3", text, _output_format(text))
    if scheme and scheme[1].lower() == "file":
        path = unquote(urlparse(text).path)
        return OutputTarget("file", path, _output_format(path))
    if scheme:
        raise InvalidInput(f"--output {text!r}: unsupported scheme {scheme[1]}://; {_OUTPUT_HELP}")
    return OutputTarget("file", text, _output_format(text))


def _output_format(location: str) -> Literal["csv", "parquet"]:
    found = _OUTPUT_FORMATS.get(Path(urlparse(location).path or location).suffix.lower())
    if found is None:
        raise InvalidInput(f"--output {location!r}: cannot tell the format from its suffix; {_OUTPUT_HELP}")
    return "csv" if found == "csv" else "parquet"


def check_request(model_ref: str, input_uri: str, output_uri: str, chunk_rows: int) -> None:
    """Refuse a malformed request before any work: every argument's syntax, nothing fetched."""
    parse_model_ref(model_ref)
    parse_input(input_uri)
    parse_output(output_uri)
    if chunk_rows < 1:
        raise InvalidInput(f"chunk_rows must be at least 1, got {chunk_rows}")


def absolute_locations(input_uri: str, output_uri: str) -> tuple[str, str]:
    """Relative local paths made absolute: pipeline tasks may run elsewhere than the caller's folder."""
    source = parse_input(input_uri)
    if source.path and not _SCHEME.match(source.path):
        input_uri = str(Path(source.path).expanduser().resolve())
    target = parse_output(output_uri)
    if target.kind == "file" and not _SCHEME.match(output_uri):
        output_uri = str(Path(target.location).expanduser().resolve())
    return input_uri, output_uri


# ---------------------------------------------------------------- fetching the model


def fetch_model(settings: Settings, model_ref: str, dest_dir: Path) -> ModelVersionRecord:
    """Resolve ``model_ref`` in the registry and put its verified bundle in ``dest_dir`` (absent or empty).

    Besides each file's checksum, the bundle's manifest must be the very one the registry recorded: a
    bundle replaced in the store after publishing is refused.
    """
    ref = parse_model_ref(model_ref)
    with Registry(settings.database_url) as registry:
        record = registry.resolve(ref)
    if dest_dir.exists() and any(dest_dir.iterdir()):
        raise Conflict(f"cannot fetch {record.ref} into {dest_dir}: it is not empty")
    with tempfile.TemporaryDirectory(prefix="modelyard-fetch-") as scratch:
        local = fetch_bundle(record.storage_uri, Path(scratch) / "bundle", s3=settings.s3)
        shutil.copytree(local, dest_dir, dirs_exist_ok=True)  # a file:// bundle is verified in place
    metadata = verify_bundle(dest_dir)
    digest = manifest_digest(dest_dir)
    if digest != record.sha256:
        raise BundleIntegrityError(
            f"bundle {record.storage_uri} is not the one the registry recorded for {record.ref}: its "
            f"metadata.json has sha256 {digest}, the registry {record.sha256}",
            file="metadata.json",
        )
    if metadata.name != record.name:
        raise BundleIntegrityError(
            f"bundle {record.storage_uri} is of model {metadata.name!r}, not {record.name!r}",
            file="metadata.json",
        )
    return record


# ---------------------------------------------------------------- scoring


def prediction_columns(classes: list[str | int]) -> list[str]:
    """The columns scoring adds after the input's own."""
    probas = [f"{PROBA_PREFIX}{label}" for label in classes]
    if len(set(probas)) != len(probas):
        raise InvalidInput(f"class labels {classes} give duplicate column names: {probas}")
    return [LABEL_COLUMN, *probas, MODEL_COLUMN, VERSION_COLUMN]


def check_input(frame: pd.DataFrame, metadata: BundleMetadata, model: str, source: str) -> None:
    """Every problem that would stop the model scoring ``frame``, in one DataValidationError."""
    problems = []
    columns = [str(column) for column in frame.columns]
    missing = [name for name in metadata.feature_names if name not in columns]
    if missing:
        problems.append(f"missing column(s) the model {model} needs: {', '.join(missing)}")
    for feature in metadata.features:
        if feature.type is not FeatureType.NUMERIC or feature.name not in columns:
            continue
        values = frame[feature.name]
        if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
            continue
        bad = values[values.notna() & pd.to_numeric(values, errors="coerce").isna()]
        if not bad.empty:
            examples = ", ".join(repr(value) for value in bad.unique()[:3])
            problems.append(
                f"column {feature.name!r} is numeric for the model but holds {len(bad)} non-numeric "
                f"value(s), e.g. {examples}"
            )
    clashes = [name for name in prediction_columns(list(metadata.classes)) if name in columns]
    if clashes:
        problems.append(
            f"column(s) {', '.join(clashes)} clash with the columns scoring adds; rename them in the "
            "input (e.g. query:SELECT label AS given_label, ...)"
        )
    if problems:
        raise DataValidationError(problems, source=source)


def _label_type(classes: list[str | int]) -> pa.DataType:
    return pa.int64() if all(isinstance(label, int) for label in classes) else pa.string()


def _output_schema(frame: pd.DataFrame, classes: list[str | int]) -> pa.Schema:
    """The whole output's Arrow schema, inferred from every input row (an all-empty chunk cannot say)."""
    try:
        inferred = pa.Schema.from_pandas(frame, preserve_index=False).remove_metadata()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInput(f"the input cannot be written as a table of typed columns: {exc}") from exc
    added = [
        pa.field(LABEL_COLUMN, _label_type(classes)),
        *(pa.field(f"{PROBA_PREFIX}{label}", pa.float64()) for label in classes),
        pa.field(MODEL_COLUMN, pa.string()),
        pa.field(VERSION_COLUMN, pa.int64()),
    ]
    return pa.schema([*inferred, *added])


@dataclass(frozen=True)
class ScoreOutcome:
    model: str  # name@version
    name: str
    version: int
    rows: int
    class_counts: dict[str, int]
    columns: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ScoreOutcome:
        return cls(**json.loads(text))


def score_to_parquet(
    settings: Settings,
    bundle_dir: Path,
    input_uri: str,
    predictions_path: Path,
    *,
    model_name: str,
    model_version: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreOutcome:
    """Score the input with the bundle in ``bundle_dir``; write every input column plus the predictions
    to ``predictions_path`` (Parquet), ``chunk_rows`` rows at a time. ``progress(done, total)`` is called
    once the input is checked and after each chunk."""
    if chunk_rows < 1:
        raise InvalidInput(f"chunk_rows must be at least 1, got {chunk_rows}")
    source = parse_input(input_uri)
    bundle = load_bundle(bundle_dir)  # verified again: the bundle may have travelled between pods
    if bundle.metadata.name != model_name:
        raise BundleIntegrityError(
            f"bundle {bundle_dir} is of model {bundle.metadata.name!r}, not {model_name!r}",
            file="metadata.json",
        )
    model = f"{model_name}@{model_version}"
    runtime = SklearnRuntime(bundle.model, bundle.metadata, label=model)
    classes = list(bundle.metadata.classes)
    frame = load_frame(source, settings)  # column names plain str, database sources included
    check_input(frame, bundle.metadata, model, source.describe())
    schema = _output_schema(frame, classes)
    names = bundle.metadata.feature_names
    class_array = np.array(classes, dtype=object if _label_type(classes) == pa.string() else np.int64)
    counts: Counter[str] = Counter()
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(0, len(frame))
    with pq.ParquetWriter(predictions_path, schema) as writer:
        for start in range(0, len(frame), chunk_rows):
            rows = frame.iloc[start : start + chunk_rows].reset_index(drop=True)
            try:
                proba = runtime.predict_proba(rows[names])
            except (ValueError, TypeError) as exc:
                raise InvalidInput(
                    f"{source.describe()}: rows {start + 1} to {start + len(rows)} could not be scored by "
                    f"{model}: {first_line(exc)}"
                ) from exc
            labels = class_array[np.argmax(proba, axis=1)]
            if class_array.dtype == object:
                labels = labels.astype(str).astype(object)
            counts.update(str(label) for label in labels)
            added = pd.DataFrame(
                {
                    LABEL_COLUMN: labels,
                    **{f"{PROBA_PREFIX}{label}": proba[:, i] for i, label in enumerate(classes)},
                    MODEL_COLUMN: model_name,
                    VERSION_COLUMN: model_version,
                }
            )
            chunk = pd.concat([rows, added], axis=1)
            try:
                writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InvalidInput(
                    f"{source.describe()}: rows {start + 1} to {start + len(rows)} cannot be written with "
                    f"the column types the input has: {first_line(exc)}"
                ) from exc
            if progress is not None:
                progress(start + len(rows), len(frame))
    return ScoreOutcome(
        model, model_name, model_version, len(frame), dict(sorted(counts.items())), schema.names
    )


# ---------------------------------------------------------------- writing the predictions


def write_predictions(
    settings: Settings, predictions_path: Path, output_uri: str, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> str:
    """Copy the predictions (Parquet) to ``output_uri``, ``chunk_rows`` rows at a time; return where."""
    target = parse_output(output_uri)
    if target.kind == "table":
        return _write_table(settings, pq.ParquetFile(predictions_path), target, chunk_rows)
    assert target.file_format is not None
    if target.kind == "file":
        path = Path(target.location).expanduser().absolute()
        try:
            with atomic_write(path) as partial:
                _write_file(predictions_path, partial, target.file_format, chunk_rows)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return str(path)
    store, key = open_store_from_uri(target.location, settings.s3)
    with tempfile.TemporaryDirectory(prefix="modelyard-predictions-") as scratch:
        local = Path(scratch) / key
        _write_file(predictions_path, local, target.file_format, chunk_rows)
        # One PUT: the object appears whole or not at all.
        return store.put_bytes(key, local.read_bytes())


def _write_file(predictions_path: Path, path: Path, file_format: str, chunk_rows: int) -> None:
    if file_format == "parquet":
        shutil.copyfile(predictions_path, path)  # the predictions are Parquet already
        return
    with path.open("w", encoding="utf-8", newline="") as handle:
        _write_csv(pq.ParquetFile(predictions_path), handle, chunk_rows)


def _write_csv(predictions: pq.ParquetFile, handle: IO[str], chunk_rows: int) -> None:
    header = True
    for batch in predictions.iter_batches(batch_size=chunk_rows):
        batch.to_pandas().to_csv(handle, header=header, index=False)
        header = False
    if header:  # no rows: still write the header, so the file says what it would hold
        predictions.schema_arrow.empty_table().to_pandas().to_csv(handle, index=False)


_PROTECTED_TABLES = frozenset({*Base.metadata.tables, "alembic_version"})


def _sql_type(arrow_type: pa.DataType, column: str) -> sa.types.TypeEngine[Any]:
    if pa.types.is_boolean(arrow_type):
        return sa.Boolean()
    if pa.types.is_integer(arrow_type):
        return sa.BigInteger()
    if pa.types.is_floating(arrow_type):
        return sa.Double()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type):
        return sa.Text()
    if pa.types.is_timestamp(arrow_type):
        return sa.DateTime(timezone=arrow_type.tz is not None)
    if pa.types.is_date(arrow_type):
        return sa.Date()
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return sa.LargeBinary()
    raise InvalidInput(f"column {column!r} has type {arrow_type}, which a database table cannot hold")


def _write_table(
    settings: Settings, predictions: pq.ParquetFile, target: OutputTarget, chunk_rows: int
) -> str:
    """Fill a staging table, then drop the old table and rename the staging one, all in one transaction:
    readers see the old rows or the new ones, and a failure anywhere leaves the database as it was."""
    where = f"{target.describe()} in {redact(settings.database_url)}"
    with Registry(settings.database_url) as registry:  # also creates the schema on a fresh database
        dataset_tables = {record.table_name for record in registry.list_datasets()}
    columns = [sa.Column(f.name, _sql_type(f.type, f.name)) for f in predictions.schema_arrow]
    engine = create_engine_for(settings.database_url)
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            default_schema = sa.inspect(connection).default_schema_name
            if target.schema in (None, default_schema) and target.location in (
                _PROTECTED_TABLES | dataset_tables
            ):
                raise InvalidInput(
                    f"--output {target.describe()}: {target.location} is a table of the modelyard registry; "
                    "choose another name"
                )
            staging = sa.Table(
                f"_modelyard_scoring_{uuid.uuid4().hex[:12]}", sa.MetaData(), *columns, schema=target.schema
            )
            with connection.begin():
                staging.create(connection)
                for batch in predictions.iter_batches(batch_size=chunk_rows):
                    rows = batch.to_pylist()
                    if rows:
                        connection.execute(staging.insert(), rows)
                sa.Table(target.location, sa.MetaData(), schema=target.schema).drop(
                    connection, checkfirst=True
                )
                quote = connection.dialect.identifier_preparer
                connection.exec_driver_sql(
                    f"ALTER TABLE {quote.format_table(staging)} RENAME TO {quote.quote(target.location)}"
                )
    except sa.exc.OperationalError as exc:
        raise StorageError(f"cannot write {where}: {database_reason(exc)}") from exc
    except sa.exc.DBAPIError as exc:
        raise InvalidInput(f"cannot write {where}: {database_reason(exc)}") from exc
    finally:
        engine.dispose()
    return target.describe()


# ---------------------------------------------------------------- the whole run, in this process


@dataclass(frozen=True)
class ScoringSummary:
    """What a scoring run did: the pipeline's output, and `modelyard score`'s."""

    model: str  # name@version
    stage: str
    storage_uri: str
    input: str
    output: str
    rows: int
    class_counts: dict[str, int]
    columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(
    settings: Settings,
    model_ref: str,
    input_uri: str,
    output_uri: str,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int, int], None] | None = None,
) -> ScoringSummary:
    """Score ``input_uri`` with the version ``model_ref`` names and write the predictions to ``output_uri``,
    in this process: the same steps the pipeline runs as tasks. ``progress(done, total)`` reports rows
    scored (see :func:`score_to_parquet`)."""
    check_request(model_ref, input_uri, output_uri, chunk_rows)
    with tempfile.TemporaryDirectory(prefix="modelyard-score-") as scratch:
        bundle_dir = Path(scratch) / "bundle"
        record = fetch_model(settings, model_ref, bundle_dir)
        predictions = Path(scratch) / "predictions.parquet"
        outcome = score_to_parquet(
            settings,
            bundle_dir,
            input_uri,
            predictions,
            model_name=record.name,
            model_version=record.version,
            chunk_rows=chunk_rows,
            progress=progress,
        )
        location = write_predictions(settings, predictions, output_uri, chunk_rows=chunk_rows)
    return summarise(record_json(record), outcome, input_uri, location)


def record_json(record: ModelVersionRecord) -> str:
    return json.dumps({"ref": record.ref, "stage": record.stage.value, "storage_uri": record.storage_uri})


def summarise(model_json: str, outcome: ScoreOutcome, input_uri: str, output: str) -> ScoringSummary:
    model = json.loads(model_json)
    return ScoringSummary(
        model=model["ref"],
        stage=model["stage"],
        storage_uri=model["storage_uri"],
        input=input_uri,
        output=output,
        rows=outcome.rows,
        class_counts=outcome.class_counts,
        columns=outcome.columns,
    )


# ---------------------------------------------------------------- what the components call


@task_events("fetch-model")
def fetch_step(
    model_ref: str, input_uri: str, output_uri: str, chunk_rows: int, bundle_path: str
) -> ModelVersionRecord:
    """Check the request's syntax, then resolve the version and put its verified bundle at ``bundle_path``."""
    check_request(model_ref, input_uri, output_uri, chunk_rows)
    return fetch_model(load_settings(), model_ref, Path(bundle_path))


@task_events("score-input")
def score_step(
    bundle_path: str,
    input_uri: str,
    model_name: str,
    model_version: int,
    chunk_rows: int,
    predictions_path: str,
) -> ScoreOutcome:
    """Score the input with the fetched bundle into the predictions Dataset (Parquet)."""
    return score_to_parquet(
        load_settings(),
        Path(bundle_path),
        input_uri,
        Path(predictions_path),
        model_name=model_name,
        model_version=model_version,
        chunk_rows=chunk_rows,
    )


@task_events("write-predictions")
def write_step(
    predictions_path: str, output_uri: str, model_json: str, score_json: str, input_uri: str, chunk_rows: int
) -> str:
    """Write the predictions to the output; return the run's summary as JSON."""
    location = write_predictions(load_settings(), Path(predictions_path), output_uri, chunk_rows=chunk_rows)
    summary = summarise(model_json, ScoreOutcome.from_json(score_json), input_uri, location)
    return json.dumps(summary.to_dict())
