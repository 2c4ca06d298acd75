"""Load a model's data into a pandas DataFrame, from wherever the spec says it lives.

One entry point, :func:`load_frame`, reads a :class:`~modelyard.spec.DataSource`:

- ``path``: a CSV or Parquet file on local disk (a plain path or ``file://``), or an object at
  ``s3://bucket/key`` read with boto3 and the standard ``AWS_*`` settings (no s3fs needed);
- ``table``: every row of a table (``name`` or ``schema.name``) in a SQLAlchemy database;
- ``query``: the rows a SELECT returns; it runs in a transaction that is always rolled back, and on
  PostgreSQL that transaction is also read-only, so a data source can never change the database;
- ``dataset``: ``NAME[@VERSION]``, a data set copied into the registry with ``modelyard data load``.

The format of a file comes from ``data.format`` or else from its suffix (``.csv``, ``.tsv``, ``.parquet``,
``.pq``, optionally compressed: ``.csv.gz``); any other suffix is refused rather than guessed.

Missing values in CSV: only an empty cell is missing. Tokens such as ``NA``, ``null`` or ``None`` stay
strings in a column of words, because they are real categories there (``NA`` is North America, or
sodium). In a column whose every other value is a number they can only mean "missing", so there they
become NaN and the column becomes numeric. See :data:`MISSING_TOKENS`.

Every failure is a :class:`~modelyard.errors.ModelyardError` naming the file, object, table or query:
``NotFound`` for something that does not exist, ``InvalidInput`` for something unreadable, empty or
malformed, ``StorageError`` when S3 or the database cannot be reached.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import pandas as pd
import sqlalchemy as sa

from modelyard.errors import InvalidInput, NotFound, StorageError, database_reason, first_line
from modelyard.registry.db import redact
from modelyard.settings import Settings
from modelyard.spec import DataSource

# The spellings of "missing" that common tools write (R, pandas, spreadsheets, SQL dumps).
MISSING_TOKENS: frozenset[str] = frozenset(
    {"NA", "N/A", "n/a", "na", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "Null", "None", "none"}
    | {"#N/A", "#NA", "<NA>", "NIL", "nil", "-1.#IND", "1.#QNAN", "-1.#QNAN", "#N/A N/A"}
)

_FORMAT_BY_SUFFIX = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSION_BY_SUFFIX = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zip": "zip"}
# S3 objects up to this size stay in memory; larger ones spill to a temporary file.
_SPOOL_BYTES = 64 * 1024 * 1024


def load_frame(source: DataSource, settings: Settings) -> pd.DataFrame:
    """Read the rows ``source`` points at. Raises NotFound, InvalidInput or StorageError naming it."""
    if source.path:
        return _load_path(source.path, source.format, settings)
    if source.table:
        return _load_table(source.table, source.database_url or settings.database_url)
    if source.query:
        return _load_query(source.query, source.database_url or settings.database_url)
    if source.dataset:
        return _load_dataset(source.dataset, settings)
    # DataSource itself enforces exactly one source; this guards hand-built (model_construct) objects.
    raise InvalidInput("the data source names no path, table, query or dataset")


# ---------------------------------------------------------------- files


def read_file(path: str | Path, file_format: str | None = None) -> pd.DataFrame:
    """Read a local CSV or Parquet file with the project's missing-value rules.

    ``file_format`` is ``"csv"`` or ``"parquet"``; by default it comes from the suffix.
    """
    file_path = Path(path)
    if not file_path.exists():
        raise NotFound(f"data file not found: {file_path}")
    if file_path.is_dir():
        raise InvalidInput(f"data path is a directory, not a file: {file_path}")
    fmt = file_format or _format_from_name(str(file_path))
    try:
        size = file_path.stat().st_size
        with file_path.open("rb") as stream:
            if size == 0:
                raise InvalidInput(f"data file is empty (0 bytes): {file_path}")
            return _parse(stream, fmt, str(file_path))
    except PermissionError:
        raise InvalidInput(f"cannot read data file (permission denied): {file_path}") from None


def _load_path(path: str, file_format: str | None, settings: Settings) -> pd.DataFrame:
    if path.startswith("s3://"):
        return _load_s3(path, file_format, settings)
    if path.startswith("file://"):
        return read_file(unquote(urlparse(path).path), file_format)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", path)
    if scheme:
        raise InvalidInput(f"unsupported data location {path!r}: use a local path, file:// or s3://")
    return read_file(path, file_format)


def _format_from_name(name: str) -> str:
    suffixes = [s.lower() for s in Path(name).suffixes]
    compressed = bool(suffixes) and suffixes[-1] in _COMPRESSION_BY_SUFFIX
    if compressed:
        suffixes.pop()
    fmt = _FORMAT_BY_SUFFIX.get(suffixes[-1]) if suffixes else None
    if fmt is None or (compressed and fmt == "parquet"):
        raise InvalidInput(
            f"cannot tell the format of {name!r} from its suffix: supported are .csv, .tsv and .parquet "
            "(optionally .gz/.bz2/.xz/.zst/.zip for CSV); set data.format to csv or parquet to override"
        )
    return fmt


def _parse(stream: IO[bytes], file_format: str, where: str) -> pd.DataFrame:
    """Parse a file's bytes; ``where`` (its path or URI) names it in errors and gives its suffixes."""
    if file_format == "parquet":
        return _parse_parquet(stream, where)
    if file_format == "csv":
        suffixes = [s.lower() for s in Path(where).suffixes]
        compression = _COMPRESSION_BY_SUFFIX.get(suffixes[-1]) if suffixes else None
        if compression:
            suffixes.pop()
        separator = "\t" if suffixes and suffixes[-1] == ".tsv" else ","
        return _parse_csv(stream, where, compression, separator)
    raise InvalidInput(f"unsupported data format {file_format!r} for {where}: use csv or parquet")


def _parse_parquet(stream: IO[bytes], where: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(stream)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise InvalidInput(f"could not read {where} as Parquet: {first_line(exc)}") from exc


def _parse_csv(stream: IO[bytes], where: str, compression: str | None, separator: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(
            stream,
            sep=separator,
            compression=compression,
            encoding="utf-8",
            keep_default_na=False,  # "NA" may be a real category; see the module docstring
            na_values=[""],
        )
    except pd.errors.EmptyDataError:
        raise InvalidInput(f"data file has no header and no rows: {where}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"could not read {where} as CSV: not UTF-8 text (byte {exc.start}); "
            "is it a binary file, or does it need data.format: parquet?"
        ) from None
    except (pd.errors.ParserError, ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"could not read {where} as CSV: {first_line(exc)}") from exc
    return _numeric_where_tokens_mean_missing(frame)


def _numeric_where_tokens_mean_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn a text column that holds only numbers and missing-value tokens into a numeric column."""
    for column in frame.columns:
        values = frame[column]
        if not (pd.api.types.is_string_dtype(values.dtype) or values.dtype == object):
            continue
        present = values.dropna()
        if present.empty:
            continue
        if values.dtype == object and not all(isinstance(v, str) for v in present):
            continue
        is_token = present.isin(MISSING_TOKENS)
        if is_token.all() or not is_token.any():
            # No token at all means pandas already tried (and failed) to read it as numbers.
            continue
        numbers = pd.to_numeric(present[~is_token], errors="coerce")
        if numbers.notna().all():
            frame[column] = pd.to_numeric(values.where(~values.isin(MISSING_TOKENS)), errors="coerce")
    return frame


# ---------------------------------------------------------------- S3


def _load_s3(uri: str, file_format: str | None, settings: Settings) -> pd.DataFrame:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key or key.endswith("/"):
        raise InvalidInput(f"an s3:// data path needs a bucket and an object key, got {uri!r}")
    fmt = file_format or _format_from_name(key)

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=settings.s3.endpoint_url,
        aws_access_key_id=settings.s3.access_key_id,
        aws_secret_access_key=settings.s3.secret_access_key,
        region_name=settings.s3.region,
    )
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buffer:
        try:
            response = client.get_object(Bucket=bucket, Key=key)
            shutil.copyfileobj(response["Body"], buffer)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"S3 object not found: {uri}") from None
            if code == "NoSuchBucket":
                raise NotFound(f"S3 bucket not found: s3://{bucket} (reading {uri})") from None
            raise StorageError(f"S3 refused to read {uri}: {code or 'error'}: {first_line(exc)}") from exc
        except BotoCoreError as exc:
            endpoint = settings.s3.endpoint_url or "the default AWS endpoint"
            raise StorageError(f"could not read {uri} from {endpoint}: {first_line(exc)}") from exc
        if buffer.tell() == 0:
            raise InvalidInput(f"data file is empty (0 bytes): {uri}")
        buffer.seek(0)
        return _parse(buffer, fmt, uri)


# ---------------------------------------------------------------- databases


def _engine(database_url: str) -> sa.Engine:
    try:
        return sa.create_engine(database_url)
    except sa.exc.NoSuchModuleError as exc:
        raise InvalidInput(f"no database driver for URL {redact(database_url)}: {exc}") from None
    except sa.exc.ArgumentError as exc:
        # the text is not shown: it may hold a password, and a URL that does not parse cannot be redacted
        raise InvalidInput(f"invalid database URL: {exc}") from None


def _load_table(table: str, database_url: str) -> pd.DataFrame:
    parts = table.split(".")
    if len(parts) > 2 or not all(parts):
        raise InvalidInput(f"data.table must be NAME or SCHEMA.NAME, got {table!r}")
    schema, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    engine = _engine(database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(name, schema=schema):
                raise NotFound(f"table {table!r} not found in {where}")
            # Reflection plus select() quotes the identifiers; the name never reaches SQL as text.
            reflected = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=connection)
            return _read_sql(sa.select(reflected), connection)
    except sa.exc.OperationalError as exc:
        raise StorageError(f"could not read table {table!r} from {where}: {database_reason(exc)}") from exc
    except sa.exc.DBAPIError as exc:
        raise InvalidInput(f"could not read table {table!r} from {where}: {database_reason(exc)}") from exc
    finally:
        engine.dispose()


def _load_query(query: str, database_url: str) -> pd.DataFrame:
    engine = _engine(database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            try:
                return _read_sql(sa.text(query), connection)
            finally:
                connection.rollback()
    except sa.exc.ResourceClosedError:
        raise InvalidInput(f"data.query returned no rows to read (is it a SELECT?): {query!r}") from None
    except sa.exc.OperationalError as exc:
        reason = database_reason(exc)
        # SQLite reports bad SQL as OperationalError too; only connection trouble is the server's fault.
        if engine.dialect.name == "sqlite" and "unable to open" not in reason:
            raise InvalidInput(f"data.query failed: {reason} (query: {query!r})") from exc
        raise StorageError(f"could not run data.query against {where}: {reason}") from exc
    except sa.exc.DBAPIError as exc:
        raise InvalidInput(f"data.query failed: {database_reason(exc)} (query: {query!r})") from exc
    finally:
        engine.dispose()


def _read_sql(statement: sa.Executable, connection: sa.Connection) -> pd.DataFrame:
    try:
        frame = pd.read_sql(statement, connection)
    except pd.errors.DatabaseError as exc:
        # pandas wraps the driver's error; unwrap it so callers can tell bad SQL from a lost server.
        if isinstance(exc.__cause__, sa.exc.SQLAlchemyError):
            raise exc.__cause__ from None
        raise
    # Reflected names are SQLAlchemy's quoted_name, a str subclass scikit-learn does not take for a
    # column name (it then fits without feature names and refuses named frames at predict time).
    frame.columns = [str(column) for column in frame.columns]
    return frame


# ---------------------------------------------------------------- registry data sets


def parse_dataset_ref(ref: str) -> tuple[str, int | None]:
    """Split ``NAME[@VERSION]`` into its name and version (None: the latest)."""
    name, sep, version_text = ref.partition("@")
    if not name:
        raise InvalidInput(f"data.dataset must be NAME or NAME@VERSION, got {ref!r}")
    if not sep:
        return name, None
    if not version_text.isdigit() or int(version_text) < 1:
        raise InvalidInput(f"data.dataset {ref!r}: the version after '@' must be a positive integer")
    return name, int(version_text)


def _load_dataset(ref: str, settings: Settings) -> pd.DataFrame:
    name, version = parse_dataset_ref(ref)
    # Imported here: the registry (its tables, its migrations) is only needed for this kind of source.
    from modelyard.data.ingest import read_dataset
    from modelyard.registry import Registry

    with Registry(settings.database_url) as registry:
        return read_dataset(registry, name, version)
