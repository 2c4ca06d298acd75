"""Dataset rows in the registry: one version per distinct content, numbered per name."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

from modelyard.errors import Conflict, InvalidInput, NotFound
from modelyard.registry import DatasetColumn, DatasetRecord, Registry

COLUMNS = [DatasetColumn("sepal_length", "float64"), DatasetColumn("species", "string")]


def fingerprint(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def register(registry: Registry, name: str, content: str, rows: int = 150) -> DatasetRecord:
    return registry.register_dataset(
        name,
        fingerprint=fingerprint(content),
        row_count=rows,
        columns=COLUMNS,
        table_name=f"external_{name.replace('-', '_')}_{rows}",
        source=f"/data/{name}.csv",
    )


def test_each_new_content_gets_the_next_version(registry: Registry) -> None:
    first = register(registry, "iris", "a")
    second = register(registry, "iris", "b", rows=151)
    other = register(registry, "wine", "a")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert registry.get_dataset("iris") == second
    assert registry.get_dataset("iris", 1) == first
    assert [d.ref for d in registry.list_datasets()] == ["iris@2", "iris@1", "wine@1"]
    assert [d.ref for d in registry.list_datasets("wine")] == ["wine@1"]
    assert registry.list_datasets("nothing") == []


def test_a_dataset_record_round_trips(registry: Registry) -> None:
    record = register(registry, "iris", "a")
    assert record.to_dict() == {
        "name": "iris",
        "version": 1,
        "fingerprint": fingerprint("a"),
        "row_count": 150,
        "columns": [{"name": "sepal_length", "dtype": "float64"}, {"name": "species", "dtype": "string"}],
        "table_name": "external_iris_150",
        "source": "/data/iris.csv",
        "created_at": record.created_at.isoformat(),
    }
    assert record.created_at.tzinfo is not None


def test_the_same_content_is_not_registered_twice(registry: Registry) -> None:
    register(registry, "iris", "a")
    with pytest.raises(Conflict, match="dataset 'iris' already holds this content as iris@1"):
        register(registry, "iris", "a")
    with registry.reserve_dataset_version("iris", fingerprint("a")) as reservation:
        assert reservation.existing is not None and reservation.existing.ref == "iris@1"
        assert reservation.version == 1
    assert register(registry, "iris", "b").version == 2


def test_work_done_in_a_failed_reservation_is_undone(registry: Registry) -> None:
    with (
        pytest.raises(RuntimeError, match="copy failed"),
        registry.reserve_dataset_version("iris", fingerprint("a")) as reservation,
    ):
        assert reservation.version == 1
        reservation.connection.execute(text("CREATE TABLE half_loaded (x INTEGER)"))
        raise RuntimeError("copy failed")
    with registry.engine.connect() as connection:
        remaining = connection.execute(text("SELECT COUNT(*) FROM datasets")).scalar_one()
        with pytest.raises(Exception, match="half_loaded"):
            connection.execute(text("SELECT * FROM half_loaded"))
    assert remaining == 0
    assert register(registry, "iris", "a").version == 1


def test_get_dataset_names_what_was_not_found(registry: Registry) -> None:
    register(registry, "iris", "a")
    with pytest.raises(NotFound, match=r"dataset 'wine' not found \(load it with `modelyard data load FILE"):
        registry.get_dataset("wine")
    with pytest.raises(NotFound, match=r"dataset iris@3 not found \(the latest version is iris@1\)"):
        registry.get_dataset("iris", 3)


@pytest.mark.parametrize("name", ["Iris", "iris_data", "iris-", ""])
def test_bad_dataset_names_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(InvalidInput, match=f"invalid dataset name '{name}': use 1 to 63 lowercase letters"):
        register(registry, name, "a")


def test_a_bad_fingerprint_is_refused(registry: Registry) -> None:
    with (
        pytest.raises(InvalidInput, match="fingerprint must be 64 lowercase hexadecimal characters"),
        registry.reserve_dataset_version("iris", "md5:abc"),
    ):
        pass


def test_a_dataset_needs_columns(registry: Registry) -> None:
    with (
        pytest.raises(InvalidInput, match="dataset 'iris' must have at least one column"),
        registry.reserve_dataset_version("iris", fingerprint("a")) as reservation,
    ):
        reservation.record(row_count=0, columns=[], table_name="t", source="x.csv")
