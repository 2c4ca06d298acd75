"""load_frame against real files, a real S3 (SeaweedFS) and a real PostgreSQL: every source, every error."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from modelyard.data.loading import MISSING_TOKENS, load_frame, parse_dataset_ref, read_file
from modelyard.data.validation import infer_features
from modelyard.errors import InvalidInput, NotFound, StorageError
from modelyard.settings import Settings, load_settings
from modelyard.spec import DataSource, FeatureSpec, FeatureType


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("MODELYARD_DATABASE_URL", raising=False)
    return load_settings(home=tmp_path / "home")


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "petal_length": [1.4, 4.7, 6.0, 1.3],
            "count": [3, 1, 4, 1],
            "region": ["EU", "NA", "APAC", "EU"],  # "NA" is North America, not a missing value
            "note": ["a short note", "another one", "third note here", "last"],
            "species": ["setosa", "versicolor", "virginica", "setosa"],
        }
    )


def load(settings: Settings, **source: str) -> pd.DataFrame:
    return load_frame(DataSource(**source), settings)


# ---------------------------------------------------------------- local files


def test_csv_from_disk_keeps_values_and_types(
    tmp_path: Path, frame: pd.DataFrame, local_settings: Settings
) -> None:
    path = tmp_path / "iris.csv"
    frame.to_csv(path, index=False)

    loaded = load(local_settings, path=str(path))

    pd.testing.assert_frame_equal(loaded, frame)
    assert loaded.loc[1, "region"] == "NA"


def test_parquet_from_disk(tmp_path: Path, frame: pd.DataFrame, local_settings: Settings) -> None:
    path = tmp_path / "iris.parquet"
    frame.to_parquet(path, index=False)

    pd.testing.assert_frame_equal(load(local_settings, path=str(path)), frame)


def test_file_uri_tsv_and_gzip_are_read(
    tmp_path: Path, frame: pd.DataFrame, local_settings: Settings
) -> None:
    tsv = tmp_path / "data.tsv"
    frame.to_csv(tsv, sep="\t", index=False)
    packed = tmp_path / "data.csv.gz"
    packed.write_bytes(gzip.compress(frame.to_csv(index=False).encode()))

    pd.testing.assert_frame_equal(load(local_settings, path=tsv.as_uri()), frame)
    pd.testing.assert_frame_equal(load(local_settings, path=str(packed)), frame)


def test_explicit_format_overrides_an_unknown_suffix(
    tmp_path: Path, frame: pd.DataFrame, local_settings: Settings
) -> None:
    path = tmp_path / "export.dat"
    frame.to_parquet(path, index=False)

    pd.testing.assert_frame_equal(load(local_settings, path=str(path), format="parquet"), frame)


def test_csv_missing_values_only_empty_cells_and_tokens_in_number_columns(
    tmp_path: Path, local_settings: Settings
) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("size,code,label\n1.5,NA,a\nNA,null,b\n,US,\n2,None,c\n")

    loaded = read_file(path)

    # a numbers-only column: "NA" can only mean missing, so it is NaN and the column is numeric
    assert loaded["size"].dtype == "float64"
    assert loaded["size"].isna().tolist() == [False, True, True, False]
    # a column of words keeps its tokens as categories; only the empty cell is missing
    assert loaded["code"].tolist() == ["NA", "null", "US", "None"]
    assert loaded["label"].isna().tolist() == [False, False, True, False]
    assert {"NA", "null", "None"} <= MISSING_TOKENS


def test_header_only_csv_gives_an_empty_frame_with_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("a,b,species\n")

    loaded = read_file(path)

    assert loaded.empty
    assert list(loaded.columns) == ["a", "b", "species"]


def test_missing_file_names_the_path(tmp_path: Path, local_settings: Settings) -> None:
    missing = tmp_path / "nope" / "iris.csv"
    with pytest.raises(NotFound, match=r"data file not found: .*nope/iris\.csv"):
        load(local_settings, path=str(missing))


def test_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(InvalidInput, match=r"is a directory, not a file: .*folder\.csv"):
        read_file(folder)


def test_unknown_suffix_is_refused_rather_than_guessed(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"a": 1}')
    with pytest.raises(InvalidInput, match=r"cannot tell the format of '.*data\.json'.*set data\.format"):
        read_file(path)


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.touch()
    with pytest.raises(InvalidInput, match=r"data file is empty \(0 bytes\): .*empty\.csv"):
        read_file(path)


def test_blank_csv_has_no_header(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("\n\n")
    with pytest.raises(InvalidInput, match=r"data file has no header and no rows: .*blank\.csv"):
        read_file(path)


def test_ragged_csv_names_the_parser_problem(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3,4,5,6\n")
    with pytest.raises(InvalidInput, match=r"could not read .*ragged\.csv as CSV: .*line 3"):
        read_file(path)


def test_binary_file_read_as_csv_is_not_utf8(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "really-parquet.csv"
    frame.to_parquet(path)
    with pytest.raises(
        InvalidInput, match=r"really-parquet\.csv as CSV: not UTF-8 text .*data\.format: parquet"
    ):
        read_file(path)


def test_corrupt_parquet_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(InvalidInput, match=r"could not read .*broken\.parquet as Parquet: "):
        read_file(path)


def test_unsupported_scheme_is_refused(local_settings: Settings) -> None:
    with pytest.raises(InvalidInput, match=r"unsupported data location 'https://example\.com/x\.csv'"):
        load(local_settings, path="https://example.com/x.csv")


# ---------------------------------------------------------------- S3


@pytest.fixture
def bucket(s3_env: Any) -> str:
    return str(s3_env.create_bucket())


def test_csv_and_parquet_from_s3(s3_env: Any, bucket: str, frame: pd.DataFrame) -> None:
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="data/iris.csv", Body=frame.to_csv(index=False).encode())
    client.put_object(Bucket=bucket, Key="data/iris.parquet", Body=frame.to_parquet(index=False))
    settings = load_settings()  # reads the AWS_* variables s3_env set

    pd.testing.assert_frame_equal(load(settings, path=f"s3://{bucket}/data/iris.csv"), frame)
    pd.testing.assert_frame_equal(load(settings, path=f"s3://{bucket}/data/iris.parquet"), frame)


def test_missing_s3_key_is_not_found(s3_env: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/missing/iris.csv"
    with pytest.raises(NotFound, match=rf"S3 object not found: {uri}$"):
        load(load_settings(), path=uri)


def test_missing_s3_bucket_is_not_found(s3_env: Any) -> None:
    with pytest.raises(NotFound, match=r"S3 bucket not found: s3://no-such-bucket-7f3a"):
        load(load_settings(), path="s3://no-such-bucket-7f3a/iris.csv")


def test_empty_s3_object_is_empty(s3_env: Any, bucket: str) -> None:
    s3_env.client().put_object(Bucket=bucket, Key="empty.csv", Body=b"")
    with pytest.raises(InvalidInput, match=rf"data file is empty \(0 bytes\): s3://{bucket}/empty\.csv"):
        load(load_settings(), path=f"s3://{bucket}/empty.csv")


def test_s3_uri_without_key_is_invalid(local_settings: Settings) -> None:
    with pytest.raises(InvalidInput, match=r"needs a bucket and an object key, got 's3://bucket-only/'"):
        load(local_settings, path="s3://bucket-only/")


def test_wrong_s3_credentials_are_a_storage_error(
    s3_env: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_env.client().put_object(Bucket=bucket, Key="iris.csv", Body=b"a,b\n1,2\n")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError, match=rf"S3 refused to read s3://{bucket}/iris\.csv: "):
        load(load_settings(), path=f"s3://{bucket}/iris.csv")


def test_unreachable_s3_endpoint_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # port 9 is "discard": nothing listens there, so the connection is refused at once
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    for key, value in {**env, "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(
        StorageError, match=r"could not read s3://b/k\.csv from http://127\.0\.0\.1:9: Could not"
    ):
        load(load_settings(), path="s3://b/k.csv")


# ---------------------------------------------------------------- databases


def test_postgres_table_and_query(postgres_url: str, frame: pd.DataFrame) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        frame.to_sql("flowers", connection, index=False)
    engine.dispose()
    settings = load_settings(database_url=postgres_url)

    pd.testing.assert_frame_equal(load(settings, table="flowers"), frame)
    picked = load(
        settings, query="SELECT species, petal_length FROM flowers WHERE petal_length > 2 ORDER BY 2"
    )
    assert picked.to_dict("list") == {"species": ["versicolor", "virginica"], "petal_length": [4.7, 6.0]}
    # Plain str names: scikit-learn ignores str subclasses (SQLAlchemy's quoted_name) as feature names.
    assert {type(column) for column in load(settings, table="flowers").columns} == {str}


def test_postgres_column_types_become_pandas_types(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("CREATE TABLE t (price numeric(6,2), ok boolean, name text, seen timestamptz)")
        )
        rows = "(1.50, true, 'a', now()), (NULL, NULL, NULL, NULL), (2.25, false, 'b', now())"
        connection.execute(sa.text(f"INSERT INTO t VALUES {rows}"))
    engine.dispose()

    loaded = load(load_settings(database_url=postgres_url), table="t")

    assert loaded["price"].tolist()[::2] == [1.5, 2.25]  # NUMERIC arrives as float, not Decimal
    assert loaded["ok"].tolist() == [True, None, False]
    assert loaded["name"].isna().tolist() == [False, True, False]
    assert str(loaded["seen"].dtype).startswith("datetime64")
    assert infer_features(loaded, "name") == [
        FeatureSpec(name="price", type=FeatureType.NUMERIC),
        FeatureSpec(name="ok", type=FeatureType.CATEGORICAL),
    ]


def test_postgres_schema_table_with_a_name_that_needs_quoting(
    postgres_url: str, frame: pd.DataFrame, local_settings: Settings
) -> None:
    awkward = 'Iris "v2"; DROP TABLE x'
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA lab"))
        frame.to_sql(awkward, connection, schema="lab", index=False)
    engine.dispose()

    # the source's own database_url wins over settings.database_url (SQLite here)
    loaded = load(local_settings, table=f"lab.{awkward}", database_url=postgres_url)

    pd.testing.assert_frame_equal(loaded, frame)


def test_missing_table_names_the_table(postgres_url: str) -> None:
    with pytest.raises(NotFound, match=r"table 'public.no_such_table' not found in postgresql\+psycopg://"):
        load(load_settings(database_url=postgres_url), table="public.no_such_table")


def test_table_name_with_too_many_parts_is_invalid(postgres_url: str) -> None:
    with pytest.raises(InvalidInput, match=r"data.table must be NAME or SCHEMA.NAME, got 'a.b.c'"):
        load(load_settings(database_url=postgres_url), table="a.b.c")


def test_bad_sql_names_the_problem(postgres_url: str) -> None:
    settings = load_settings(database_url=postgres_url)
    with pytest.raises(InvalidInput, match=r'data.query failed: syntax error at or near "SELEC"'):
        load(settings, query="SELEC 1")
    with pytest.raises(InvalidInput, match=r'data.query failed: relation "ghosts" does not exist'):
        load(settings, query="SELECT * FROM ghosts")


def test_a_query_cannot_change_the_database(postgres_url: str, frame: pd.DataFrame) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        frame.to_sql("flowers", connection, index=False)
    settings = load_settings(database_url=postgres_url)

    with pytest.raises(InvalidInput, match=r"cannot execute DELETE in a read-only transaction"):
        load(settings, query="DELETE FROM flowers RETURNING *")

    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM flowers")).scalar_one() == len(frame)
    engine.dispose()


def test_unreachable_postgres_is_a_storage_error(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@/nodb?host={tmp_path}"
    with pytest.raises(StorageError, match=r"could not read table 'flowers' from postgresql\+psycopg://"):
        load(load_settings(database_url=url), table="flowers")


def test_sqlite_table_from_the_settings_database(local_settings: Settings, frame: pd.DataFrame) -> None:
    local_settings.home.mkdir(parents=True)
    engine = sa.create_engine(local_settings.database_url)
    with engine.begin() as connection:
        frame.to_sql("flowers", connection, index=False)
    engine.dispose()

    pd.testing.assert_frame_equal(load(local_settings, table="flowers"), frame)
    with pytest.raises(InvalidInput, match=r"data.query failed: no such table: ghosts"):
        load(local_settings, query="SELECT * FROM ghosts")


def test_database_url_without_driver_or_shape_is_invalid(local_settings: Settings) -> None:
    with pytest.raises(InvalidInput, match=r"no database driver for URL nosuchdb://"):
        load(local_settings, table="t", database_url="nosuchdb://host/db")
    with pytest.raises(InvalidInput, match=r"invalid database URL: Could not parse SQLAlchemy URL"):
        load(local_settings, table="t", database_url="not a url")


# ---------------------------------------------------------------- registry data sets


def test_dataset_from_the_registry_matches_the_file(
    settings: Settings, tmp_path: Path, frame: pd.DataFrame
) -> None:
    from modelyard.data.ingest import load_csv_dataset

    first, second = tmp_path / "v1.csv", tmp_path / "v2.csv"
    frame.to_csv(first, index=False)
    frame.iloc[:2].to_csv(second, index=False)
    load_csv_dataset(settings.database_url, first, "flowers")
    load_csv_dataset(settings.database_url, second, "flowers")

    pd.testing.assert_frame_equal(load(settings, dataset="flowers@1"), read_file(first))
    pd.testing.assert_frame_equal(load(settings, dataset="flowers"), read_file(second))
    with pytest.raises(NotFound, match=r"dataset flowers@3 not found"):
        load(settings, dataset="flowers@3")


@pytest.mark.parametrize(
    ("ref", "expected"), [("iris", ("iris", None)), ("iris@3", ("iris", 3)), ("my-data@12", ("my-data", 12))]
)
def test_dataset_reference_parses(ref: str, expected: tuple[str, int | None]) -> None:
    assert parse_dataset_ref(ref) == expected


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("iris@", r"data.dataset 'iris@': the version after '@' must be a positive integer"),
        ("iris@latest", r"data.dataset 'iris@latest': the version after '@' must be a positive integer"),
        ("iris@0", r"data.dataset 'iris@0': the version after '@' must be a positive integer"),
        ("@2", r"data.dataset must be NAME or NAME@VERSION, got '@2'"),
    ],
)
def test_bad_dataset_reference_is_invalid(ref: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_dataset_ref(ref)
