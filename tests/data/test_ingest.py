"""`data load`: a CSV copied into the registry database, on SQLite and on real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import inspect, text

from modelyard.data.ingest import SAMPLE_ROWS, dataset_table_name, load_csv_dataset, read_dataset
from modelyard.errors import Conflict, InvalidInput, NotFound
from modelyard.registry import Registry
from modelyard.settings import Settings

IRIS = """sepal_length,petal_count,species,is_setosa,note
5.1,3,setosa,true,"plain"
4.9,,setosa,True,"with, a comma"
6.3,5,virginica,false,
5.8,4,virginica,FALSE,"two
lines"
"""


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with Registry(settings.database_url) as opened:
        yield opened


def write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def dataset_tables(registry: Registry) -> list[str]:
    return sorted(t for t in inspect(registry.engine).get_table_names() if t.startswith("ds_"))


def dataset_rows(registry: Registry) -> int:
    with registry.engine.connect() as connection:
        return int(connection.execute(text("SELECT COUNT(*) FROM datasets")).scalar_one())


def values(column: pd.Series) -> list[object]:
    """A column's values with every missing marker (None, NaN, NA) as None."""
    return [None if pd.isna(value) else value for value in column.tolist()]


def long_csv(rows: int, bad_row: int | None = None, bad_line: str = "") -> str:
    """``rows`` data rows; the row numbered ``bad_row`` (1-based, file line bad_row + 1) replaced."""
    lines = ["id,score,label"]
    for index in range(1, rows + 1):
        lines.append(bad_line if index == bad_row else f"{index},{index / 7:.4f},{'ab'[index % 2]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- loading


def test_a_csv_becomes_a_dataset_with_its_rows_columns_and_types(registry: Registry, tmp_path: Path) -> None:
    path = write(tmp_path, IRIS)
    record, created = load_csv_dataset(registry, path, "iris")
    assert created
    assert (record.ref, record.row_count, record.table_name) == ("iris@1", 4, "ds_iris_v1")
    assert [(c.name, c.dtype) for c in record.columns] == [
        ("sepal_length", "float64"),
        ("petal_count", "int64"),
        ("species", "string"),
        ("is_setosa", "bool"),
        ("note", "string"),
    ]
    assert record.source == str(path.resolve())
    assert registry.get_dataset("iris") == record
    frame = read_dataset(registry, "iris")
    expected = pd.read_csv(path)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert frame["petal_count"].dtype == np.float64  # an int column with a gap, as read_csv gives it
    assert frame["is_setosa"].dtype == np.bool_
    assert values(frame["note"]) == ["plain", "with, a comma", None, "two\nlines"]


def test_loading_the_same_content_again_reuses_its_version(registry: Registry, tmp_path: Path) -> None:
    first, _ = load_csv_dataset(registry, write(tmp_path, IRIS), "iris")
    again, created = load_csv_dataset(registry, write(tmp_path, IRIS, "copy-elsewhere.csv"), "iris")
    assert not created and again == first
    assert [d.ref for d in registry.list_datasets("iris")] == ["iris@1"]
    assert dataset_tables(registry) == ["ds_iris_v1"]


def test_changed_content_becomes_the_next_version(registry: Registry, tmp_path: Path) -> None:
    load_csv_dataset(registry, write(tmp_path, IRIS), "iris")
    changed, created = load_csv_dataset(
        registry, write(tmp_path, IRIS + "7.0,2,versicolor,false,x\n"), "iris"
    )
    assert created and changed.ref == "iris@2" and changed.row_count == 5
    assert dataset_tables(registry) == ["ds_iris_v1", "ds_iris_v2"]
    assert len(read_dataset(registry, "iris")) == 5
    assert len(read_dataset(registry, "iris", 1)) == 4


def test_rows_come_back_in_file_order_across_batches(registry: Registry, tmp_path: Path) -> None:
    record, _ = load_csv_dataset(registry, write(tmp_path, long_csv(12_000)), "long")
    assert record.row_count == 12_000
    frame = read_dataset(registry, "long")
    assert frame["id"].tolist() == list(range(1, 12_001))
    assert frame["id"].dtype == np.int64 and frame["score"].dtype == np.float64


def test_a_database_url_works_as_well_as_a_registry(settings: Settings, tmp_path: Path) -> None:
    record, created = load_csv_dataset(settings.database_url, write(tmp_path, IRIS), "iris")
    assert created and record.ref == "iris@1"
    assert len(read_dataset(settings.database_url, "iris", 1)) == 4


def test_progress_reports_bytes_up_to_the_file_size(registry: Registry, tmp_path: Path) -> None:
    path = write(tmp_path, long_csv(3_000))
    calls: list[tuple[int, int]] = []
    load_csv_dataset(registry, path, "long", progress=lambda done, total: calls.append((done, total)))
    size = path.stat().st_size
    assert calls and calls[-1] == (size, size)
    assert all(total == size for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_empty_fields_are_null_and_values_keep_their_text(registry: Registry, tmp_path: Path) -> None:
    content = 'code,name,"a column"\n007,"",x\n,Zoë,\n" 12",NA,nan\n'
    record, _ = load_csv_dataset(registry, write(tmp_path, content), "odd")
    # 007 stays an int; "NA" and "nan" are text here, not missing markers (as Postgres COPY sees them).
    assert [c.dtype for c in record.columns] == ["int64", "string", "string"]
    frame = read_dataset(registry, "odd")
    assert values(frame["code"]) == [7, None, 12]
    assert values(frame["name"]) == [None, "Zoë", "NA"]
    assert values(frame["a column"]) == ["x", None, "nan"]


def test_trailing_blank_lines_and_crlf_line_ends_are_fine(registry: Registry, tmp_path: Path) -> None:
    content = b"a,b\r\n1,x\r\n2,y\r\n\r\n\r\n"
    record, _ = load_csv_dataset(registry, write(tmp_path, content), "crlf")
    assert record.row_count == 2
    assert read_dataset(registry, "crlf")["b"].tolist() == ["x", "y"]


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(registry: Registry, tmp_path: Path) -> None:
    record, _ = load_csv_dataset(registry, write(tmp_path, "\ufeffa,b\n1,2\n".encode()), "bom")
    assert [c.name for c in record.columns] == ["a", "b"]


def test_long_names_get_a_short_unique_table(registry: Registry, tmp_path: Path) -> None:
    name = "a-very-long-dataset-name-that-goes-on-and-on-for-sixty-chars"
    record, _ = load_csv_dataset(registry, write(tmp_path, IRIS), name)
    assert len(record.table_name) <= 63
    assert record.table_name == dataset_table_name(name, 1)
    assert dataset_table_name(name, 1) != dataset_table_name(name.replace("a-", "b-", 1), 1)
    assert len(read_dataset(registry, name)) == 4


# ---------------------------------------------------------------- failures leave nothing behind


def test_a_malformed_row_halfway_leaves_no_table_and_no_row(registry: Registry, tmp_path: Path) -> None:
    bad_row = SAMPLE_ROWS + 2_000  # past the rows read to infer types: found while copying
    path = write(tmp_path, long_csv(SAMPLE_ROWS + 4_000, bad_row, f"{bad_row},0.5,a,extra"))
    line = bad_row + 1
    with pytest.raises(InvalidInput, match=rf"cannot load {path}: line {line}"):
        load_csv_dataset(registry, path, "long")
    assert dataset_tables(registry) == []
    assert dataset_rows(registry) == 0
    assert registry.list_datasets() == []
    record, _ = load_csv_dataset(registry, write(tmp_path, long_csv(10), "good.csv"), "long")
    assert record.ref == "long@1"


def test_a_value_of_the_wrong_type_halfway_names_line_and_column(registry: Registry, tmp_path: Path) -> None:
    bad_row = SAMPLE_ROWS + 500
    path = write(tmp_path, long_csv(SAMPLE_ROWS + 1_000, bad_row, "12x,0.5,a"))
    pattern = (
        rf"cannot load {path}: line {bad_row + 1}, column 'id': .*12x.*"
        r"column types are inferred from the first 10,000 rows"
    )
    with pytest.raises(InvalidInput, match=pattern):
        load_csv_dataset(registry, path, "long")
    assert dataset_tables(registry) == [] and dataset_rows(registry) == 0


def test_a_blank_line_between_rows_is_an_error(registry: Registry, tmp_path: Path) -> None:
    path = write(tmp_path, long_csv(SAMPLE_ROWS + 20, SAMPLE_ROWS + 10, ""))
    with pytest.raises(InvalidInput, match=rf"cannot load {path}: line {SAMPLE_ROWS + 11}"):
        load_csv_dataset(registry, path, "long")
    assert dataset_tables(registry) == [] and dataset_rows(registry) == 0


def test_a_progress_callback_that_fails_aborts_the_load(registry: Registry, tmp_path: Path) -> None:
    def interrupted(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_csv_dataset(registry, write(tmp_path, IRIS), "iris", progress=interrupted)
    assert dataset_tables(registry) == [] and dataset_rows(registry) == 0


# ---------------------------------------------------------------- bad input, each named


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty: a CSV needs a header row and at least one data row"),
        ("\n\n1,2\n", "has no header row: its first line must name the columns"),
        ("a,b\n", "has a header but no data rows"),
        ("a,b,a\n1,2,3\n", r"has a bad header: duplicate column name 'a' \(columns 1 and 3\)"),
        ("Age,age\n1,2\n", r"duplicate column name 'age' \(columns 1 and 2\)"),
        ("a,,c\n1,2,3\n", "has a bad header: column 2 has no name"),
        ("a,_modelyard_row\n1,2\n", "column 2 name '_modelyard_row' is reserved by modelyard"),
        (f"{'x' * 64},b\n1,2\n", "column 1 name 'x{64}' is longer than 63 bytes"),
        ("a,b\n1,2\n3,4,5\n", r"is not valid CSV: .*Expected 2 fields in line 3, saw 3"),
        (b"a,b\n1,\xff\xfe\n", "is not UTF-8 text"),
    ],
)
def test_bad_files_are_named_with_their_problem(
    registry: Registry, tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(InvalidInput, match=rf"{path}.*{message}"):
        load_csv_dataset(registry, path, "bad")
    assert dataset_rows(registry) == 0


def test_a_missing_file_or_a_folder_is_named(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=f"data file not found: {tmp_path / 'nope.csv'}"):
        load_csv_dataset(registry, tmp_path / "nope.csv", "iris")
    with pytest.raises(InvalidInput, match=f"{tmp_path} is not a file"):
        load_csv_dataset(registry, tmp_path, "iris")


@pytest.mark.parametrize("name", ["Iris", "iris_data", "-iris", "iris.csv"])
def test_a_bad_dataset_name_is_named(registry: Registry, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match=rf"invalid dataset name '{name}': use 1 to 63 lowercase letters"):
        load_csv_dataset(registry, write(tmp_path, IRIS), name)


def test_reading_a_dataset_that_is_not_there(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="dataset 'iris' not found"):
        read_dataset(registry, "iris")
    load_csv_dataset(registry, write(tmp_path, IRIS), "iris")
    with pytest.raises(NotFound, match=r"dataset iris@2 not found \(the latest version is iris@1\)"):
        read_dataset(registry, "iris", 2)
    with registry.engine.begin() as connection:
        connection.execute(text("DROP TABLE ds_iris_v1"))
    with pytest.raises(NotFound, match="dataset iris@1: its table ds_iris_v1 is missing from the database"):
        read_dataset(registry, "iris")


def test_a_table_in_the_way_is_a_conflict_and_is_left_alone(registry: Registry, tmp_path: Path) -> None:
    with registry.engine.begin() as connection:
        connection.execute(text("CREATE TABLE ds_iris_v1 (mine INTEGER)"))
    with pytest.raises(Conflict, match="table ds_iris_v1 already exists in the registry database"):
        load_csv_dataset(registry, write(tmp_path, IRIS), "iris")
    assert dataset_tables(registry) == ["ds_iris_v1"] and dataset_rows(registry) == 0
