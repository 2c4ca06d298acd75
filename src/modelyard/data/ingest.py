"""`modelyard data load`: copy a CSV into the registry database as a versioned dataset.

A dataset version is identified by the sha256 of the file's bytes: loading the same content again reuses
its version, new content gets the next one. The rows go to a table of their own (``ds_<name>_v<N>``),
created, filled and registered in one transaction, so a file that fails halfway leaves nothing behind.

Column types (int64, float64, bool, string; BIGINT, DOUBLE PRECISION, BOOLEAN, TEXT in the database) are
inferred from the first rows with pandas; every value must then parse the same way on both backends:
Postgres gets the file streamed through ``COPY ... FROM STDIN`` in 1 MiB chunks, SQLite gets batches of
converted rows. Neither reads the whole file into memory. Empty fields, quoted or not, are NULL.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd
import psycopg
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    Identity,
    Integer,
    MetaData,
    Table,
    Text,
    select,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.types import TypeEngine

from modelyard.errors import Conflict, InvalidInput, NotFound
from modelyard.registry import DatasetColumn, DatasetRecord, DatasetReservation, Registry
from modelyard.registry.service import check_name

ProgressCallback = Callable[[int, int], None]

SAMPLE_ROWS = 10_000  # rows read to infer column types
COPY_CHUNK_BYTES = 1 << 20
INSERT_BATCH_ROWS = 5_000
# A column every dataset table gets, numbering rows in file order so reads return them in that order.
ROW_COLUMN = "_modelyard_row"
MAX_IDENTIFIER_BYTES = 63  # Postgres truncates longer names silently

INT64, FLOAT64, BOOL, STRING = "int64", "float64", "bool", "string"
_SQL_TYPES: dict[str, TypeEngine[Any]] = {
    INT64: BigInteger(),
    FLOAT64: Double(),
    BOOL: Boolean(),
    STRING: Text(),
}
# What Postgres, Python and this module all read the same way (surrounding blanks allowed by all).
_BLANK = "[ \t\r\n\f\v]*"
_INT_TEXT = rf"{_BLANK}[+-]?[0-9]+{_BLANK}"
_FLOAT_TEXT = rf"{_BLANK}[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|nan|inf|infinity){_BLANK}"
_INT_PATTERN = re.compile(_INT_TEXT)
_FLOAT_PATTERN = re.compile(_FLOAT_TEXT, re.IGNORECASE)
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TYPE_HINT = f"column types are inferred from the first {SAMPLE_ROWS:,} rows"


# ---------------------------------------------------------------- public API


def load_csv_dataset(
    registry_or_url: Registry | str,
    path: str | Path,
    name: str,
    *,
    progress: ProgressCallback | None = None,
) -> tuple[DatasetRecord, bool]:
    """Load a CSV as dataset ``name``; return its record and whether a new version was created.

    ``progress(done_bytes, total_bytes)`` is called as the file is copied.
    """
    check_name(name, kind="dataset")
    file = Path(path).expanduser()
    total_bytes = _check_file(file)
    columns = _infer_columns(file, _read_header(file))
    fingerprint = file_sha256(file)
    with _new_dataset_table(registry_or_url, name, fingerprint, columns, str(file)) as (reservation, table):
        if table is None:
            assert reservation.existing is not None
            return reservation.existing, False
        connection = reservation.connection
        copy_rows = _copy_into_postgres if connection.dialect.name == "postgresql" else _insert_into_sqlite
        row_count, digest = copy_rows(connection, table, columns, file, total_bytes, progress)
        if digest != fingerprint:
            raise Conflict(f"{file} changed while it was being loaded; load it again")
        record = reservation.record(
            row_count=row_count, columns=columns, table_name=table.name, source=str(file.resolve())
        )
    return record, True


def register_frame(
    registry_or_url: Registry | str, frame: pd.DataFrame, name: str, *, fingerprint: str, source: str
) -> tuple[DatasetRecord, bool]:
    """Snapshot a loaded frame as dataset ``name``, keyed by its content ``fingerprint``.

    The training pipeline's ingest step uses it for every kind of source (file, S3, table, query), so each
    run's data is a dataset version that `read_dataset` returns as it was. The same content reuses its
    version; the table and the row commit together or not at all.
    """
    check_name(name, kind="dataset")
    columns = [DatasetColumn(name=str(column), dtype=_frame_dtype(frame[column])) for column in frame.columns]
    with _new_dataset_table(registry_or_url, name, fingerprint, columns, source) as (reservation, table):
        if table is None:
            assert reservation.existing is not None
            return reservation.existing, False
        connection = reservation.connection
        plain = frame.astype(object).where(frame.notna(), None)
        for column in columns:
            if column.dtype == STRING:
                plain[column.name] = plain[column.name].map(lambda v: v if v is None else str(v))
        names = [column.name for column in columns]
        for start in range(0, len(plain), INSERT_BATCH_ROWS):
            batch = plain.iloc[start : start + INSERT_BATCH_ROWS]
            connection.execute(
                table.insert(), [dict(zip(names, row, strict=True)) for row in batch.itertuples(False)]
            )
        record = reservation.record(
            row_count=len(frame), columns=columns, table_name=table.name, source=source
        )
    return record, True


@contextmanager
def _new_dataset_table(
    registry_or_url: Registry | str, name: str, fingerprint: str, columns: list[DatasetColumn], source: str
) -> Iterator[tuple[DatasetReservation, Table | None]]:
    """Reserve the dataset version for this content and create its empty table in the same transaction.

    Yields no table when the content is already registered (``reservation.existing``).
    """
    with (
        _open_registry(registry_or_url) as registry,
        registry.reserve_dataset_version(name, fingerprint) as reservation,
    ):
        if reservation.existing is not None:
            yield reservation, None
            return
        connection = reservation.connection
        table = dataset_table(dataset_table_name(name, reservation.version), columns, connection)
        if sa_inspect(connection).has_table(table.name):
            raise Conflict(
                f"cannot load {source}: table {table.name} already exists in the registry database"
            )
        table.create(connection)
        yield reservation, table


def _frame_dtype(values: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(values):
        return BOOL
    if pd.api.types.is_integer_dtype(values):
        return INT64
    if pd.api.types.is_float_dtype(values):
        return FLOAT64
    return STRING


def read_dataset(registry_or_url: Registry | str, name: str, version: int | None = None) -> pd.DataFrame:
    """The rows of dataset ``name`` (latest version unless given), in file order, columns as in the file.

    Dtypes follow what ``pandas.read_csv`` gives for the same file: an integer column with missing values
    comes back as float64, a bool column with missing values as object.
    """
    with _open_registry(registry_or_url) as registry:
        record = registry.get_dataset(name, version)
        with registry.engine.connect() as connection:
            if not sa_inspect(connection).has_table(record.table_name):
                raise NotFound(
                    f"dataset {record.ref}: its table {record.table_name} is missing from the database"
                )
            table = dataset_table(record.table_name, list(record.columns), connection)
            names = [column.name for column in record.columns]
            query = select(*(table.c[column] for column in names)).order_by(table.c[ROW_COLUMN])
            rows = connection.execute(query).all()
    frame = pd.DataFrame.from_records(rows, columns=names)
    for column in record.columns:
        values = frame[column.name]
        has_missing = bool(values.isna().any())
        if column.dtype == INT64:
            frame[column.name] = values.astype("float64" if has_missing else "int64")
        elif column.dtype == FLOAT64:
            frame[column.name] = values.astype("float64")
        elif column.dtype == BOOL and not has_missing:
            frame[column.name] = values.astype("bool")
    return frame


def file_sha256(file: Path, chunk_bytes: int = COPY_CHUNK_BYTES) -> str:
    """sha256 of the file's bytes, read in chunks: a dataset's fingerprint."""
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_table_name(name: str, version: int) -> str:
    """``ds_<name>_v<version>`` with '-' as '_'; long names are cut and given a hash to stay unique."""
    base = name.replace("-", "_")
    table = f"ds_{base}_v{version}"
    if len(table) > MAX_IDENTIFIER_BYTES:
        table = f"ds_{base[:40]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}_v{version}"
    return table


def dataset_table(table_name: str, columns: list[DatasetColumn], connection: Connection) -> Table:
    """The Table a dataset's rows live in: a row number (file order), then the file's columns."""
    if connection.dialect.name == "sqlite":
        # INTEGER PRIMARY KEY is SQLite's rowid itself: numbered on insert at no cost.
        row_number = Column(ROW_COLUMN, Integer, primary_key=True)
    else:
        # An identity without an index: COPY numbers rows in file order and does not maintain a b-tree.
        row_number = Column(ROW_COLUMN, BigInteger, Identity(always=True), nullable=False)
    data_columns = [Column(column.name, _SQL_TYPES[column.dtype]) for column in columns]
    return Table(table_name, MetaData(), row_number, *data_columns)


# ---------------------------------------------------------------- checking the file


def _check_file(file: Path) -> int:
    if not file.exists():
        raise NotFound(f"data file not found: {file}")
    if not file.is_file():
        raise InvalidInput(f"{file} is not a file")
    size = file.stat().st_size
    if size == 0:
        raise InvalidInput(f"{file} is empty: a CSV needs a header row and at least one data row")
    return size


def _read_header(file: Path) -> list[str]:
    with file.open("r", encoding="utf-8-sig", newline="") as handle:
        try:
            header = next(csv.reader(handle), None)
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{file} is not UTF-8 text ({exc.reason} in the header)") from None
        except csv.Error as exc:
            raise InvalidInput(f"{file} line 1 (the header) is not valid CSV: {exc}") from None
    if not header or all(not field.strip() for field in header):
        raise InvalidInput(f"{file} has no header row: its first line must name the columns")
    problems = []
    for position, column in enumerate(header, start=1):
        if not column.strip():
            problems.append(f"column {position} has no name")
        elif len(column.encode()) > MAX_IDENTIFIER_BYTES:
            problems.append(f"column {position} name {column!r} is longer than {MAX_IDENTIFIER_BYTES} bytes")
        elif column.lower() == ROW_COLUMN:
            problems.append(f"column {position} name {column!r} is reserved by modelyard")
    first_seen: dict[str, int] = {}
    for position, column in enumerate(header, start=1):
        # Case-insensitive: SQLite column names are, so "Age" and "age" cannot both be kept.
        key = column.lower()
        if key in first_seen and column.strip():
            problems.append(f"duplicate column name {column!r} (columns {first_seen[key]} and {position})")
        first_seen.setdefault(key, position)
    if problems:
        raise InvalidInput(f"{file} has a bad header: " + "; ".join(problems))
    return header


def _infer_columns(file: Path, header: list[str]) -> list[DatasetColumn]:
    try:
        sample = pd.read_csv(
            file,
            nrows=SAMPLE_ROWS,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            index_col=False,
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{file} is not UTF-8 text ({exc.reason})") from None
    except (pd.errors.ParserError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise InvalidInput(f"{file} is not valid CSV: {reason}") from None
    if sample.empty:
        raise InvalidInput(f"{file} has a header but no data rows")
    columns = []
    for position, column in enumerate(header):
        values = sample.iloc[:, position]
        columns.append(DatasetColumn(name=column, dtype=_infer_dtype(values[values != ""])))
    return columns


def _infer_dtype(values: pd.Series) -> str:
    if values.empty:
        return STRING
    lowered = values.str.strip().str.lower()
    if lowered.isin(_TRUE | _FALSE).all() and lowered.isin({"true", "false", "t", "f", "yes", "no"}).any():
        return BOOL
    if values.str.fullmatch(_INT_TEXT).all():
        as_numbers = pd.to_numeric(values, errors="coerce")
        if as_numbers.notna().all() and as_numbers.between(_INT64_MIN, _INT64_MAX).all():
            return INT64
        return STRING
    if values.str.fullmatch(_FLOAT_TEXT, case=False).all():
        return FLOAT64
    return STRING


# ---------------------------------------------------------------- Postgres: COPY


def _copy_into_postgres(
    connection: Connection,
    table: Table,
    columns: list[DatasetColumn],
    file: Path,
    total_bytes: int,
    progress: ProgressCallback | None,
) -> tuple[int, str]:
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    names = sql.SQL(", ").join(sql.Identifier(column.name) for column in columns)
    statement = sql.SQL("COPY {table} ({names}) FROM STDIN (FORMAT csv, HEADER true, FORCE_NULL ({names}))")
    digest = hashlib.sha256()
    done = 0
    held_back = b""
    try:
        with driver.cursor() as cursor:
            with (
                cursor.copy(statement.format(table=sql.Identifier(table.name), names=names)) as copy,
                file.open("rb") as handle,
            ):
                while chunk := handle.read(COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    done += len(chunk)
                    # Line breaks at the end of a chunk wait for the next one: trailing blank lines at
                    # the end of the file are dropped, as csv readers do, instead of failing COPY.
                    data = held_back + chunk
                    body = data.rstrip(b"\r\n")
                    held_back = data[len(body) :]
                    if body:
                        copy.write(body)
                    if progress is not None:
                        progress(done, total_bytes)
            row_count = cursor.rowcount
    except psycopg.errors.DataError as exc:
        raise InvalidInput(_copy_error_message(file, exc)) from None
    return row_count, digest.hexdigest()


def _copy_error_message(file: Path, exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    context = exc.diag.context or ""
    where = re.search(r"line (\d+)(?:, column ([^:]+))?", context)
    if where is None:
        return f"cannot load {file}: {primary}"
    location = f"line {where.group(1)}" + (f", column {where.group(2)!r}" if where.group(2) else "")
    hint = f" ({_TYPE_HINT})" if "invalid input syntax" in primary or "out of range" in primary else ""
    return f"cannot load {file}: {location}: {primary}{hint}"


# ---------------------------------------------------------------- SQLite: batched inserts


class _HashingReader(io.RawIOBase):
    """Reads a binary file, hashing the bytes and reporting progress as they go by."""

    def __init__(self, handle: IO[bytes], total_bytes: int, progress: ProgressCallback | None) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self._total = total_bytes
        self._progress = progress
        self.done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer))
        count = len(data)
        buffer[:count] = data
        self._digest.update(data)
        self.done += count
        if count and self._progress is not None:
            self._progress(self.done, self._total)
        return count

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _to_int(text: str) -> int:
    if not _INT_PATTERN.fullmatch(text):
        raise ValueError("not an integer")
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError("out of the int64 range")
    return value


def _to_float(text: str) -> float:
    # Checked first: Python alone would also take "1_000.5" or non-ASCII digits, Postgres would not.
    if not _FLOAT_PATTERN.fullmatch(text):
        raise ValueError("not a number")
    return float(text)


def _to_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("not a boolean")


def _to_str(text: str) -> str:
    return text


_CONVERTERS: dict[str, Callable[[str], object]] = {
    INT64: _to_int,
    FLOAT64: _to_float,
    BOOL: _to_bool,
    STRING: _to_str,
}


def _insert_into_sqlite(
    connection: Connection,
    table: Table,
    columns: list[DatasetColumn],
    file: Path,
    total_bytes: int,
    progress: ProgressCallback | None,
) -> tuple[int, str]:
    quote = connection.dialect.identifier_preparer.quote
    statement = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(column.name) for column in columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    converters = [_CONVERTERS[column.dtype] for column in columns]
    width = len(columns)
    row_count = 0
    with file.open("rb") as handle:
        raw = _HashingReader(handle, total_bytes, progress)
        text = io.TextIOWrapper(io.BufferedReader(raw, COPY_CHUNK_BYTES), encoding="utf-8-sig", newline="")
        for batch in _converted_batches(file, text, converters, columns, width):
            connection.exec_driver_sql(statement, batch)
            row_count += len(batch)
        return row_count, raw.hexdigest()


def _converted_batches(
    file: Path,
    text: IO[str],
    converters: list[Callable[[str], object]],
    columns: list[DatasetColumn],
    width: int,
) -> Iterator[list[tuple[object, ...]]]:
    reader = csv.reader(text, strict=True)
    batch: list[tuple[object, ...]] = []
    blank_line: int | None = None
    try:
        next(reader)  # the header, checked already
        for fields in reader:
            line = reader.line_num
            if not fields:
                blank_line = blank_line or line
                continue
            if blank_line is not None:
                raise InvalidInput(f"cannot load {file}: line {blank_line} is blank")
            if len(fields) != width:
                raise InvalidInput(
                    f"cannot load {file}: line {line} has {len(fields)} fields, expected {width}"
                )
            try:
                batch.append(
                    tuple(None if v == "" else c(v) for c, v in zip(converters, fields, strict=True))
                )
            except ValueError:
                raise InvalidInput(_conversion_error(file, line, fields, converters, columns)) from None
            if len(batch) >= INSERT_BATCH_ROWS:
                yield batch
                batch = []
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"cannot load {file}: not UTF-8 text after line {reader.line_num} ({exc.reason})"
        ) from None
    except csv.Error as exc:
        raise InvalidInput(f"cannot load {file}: line {reader.line_num} is not valid CSV: {exc}") from None
    if batch:
        yield batch


def _conversion_error(
    file: Path,
    line: int,
    fields: list[str],
    converters: list[Callable[[str], object]],
    columns: list[DatasetColumn],
) -> str:
    for value, convert, column in zip(fields, converters, columns, strict=True):
        try:
            if value != "":
                convert(value)
        except ValueError:
            return (
                f"cannot load {file}: line {line}, column {column.name!r}: {value!r} is not a valid "
                f"{column.dtype} ({_TYPE_HINT})"
            )
    return f"cannot load {file}: line {line} has a value that cannot be converted"


# ---------------------------------------------------------------- helpers


@contextmanager
def _open_registry(registry_or_url: Registry | str) -> Iterator[Registry]:
    if isinstance(registry_or_url, Registry):
        yield registry_or_url
        return
    registry = Registry(registry_or_url)
    try:
        yield registry
    finally:
        registry.close()
