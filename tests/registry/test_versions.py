"""Publishing model versions: numbering, what a record holds, and what a failed publish leaves."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from modelyard.errors import Conflict, InvalidInput, NotFound
from modelyard.registry import DatasetColumn, Registry, Stage

FINGERPRINT = hashlib.sha256(b"iris.csv").hexdigest()


def test_versions_are_numbered_per_name_from_one(registry: Registry, publish) -> None:
    assert [publish("iris").version for _ in range(3)] == [1, 2, 3]
    assert publish("wine").version == 1
    assert [(r.name, r.version) for r in registry.list_versions()] == [
        ("iris", 3),
        ("iris", 2),
        ("iris", 1),
        ("wine", 1),
    ]
    assert [r.version for r in registry.list_versions("iris")] == [3, 2, 1]
    assert registry.list_versions("unknown") == []


def test_a_record_holds_what_was_published(registry: Registry, publish) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    record = publish(
        "iris",
        metrics={"f1_macro": 0.91, "accuracy": 0.93, "roc_auc": 0.99},
        params={"C": 0.5, "class_weight": None, "layers": [8, 4]},
        algorithm="logistic_regression",
        dataset_fingerprint=FINGERPRINT,
    )
    assert record.stage is Stage.STAGING
    assert record.created_at.tzinfo is not None and before < record.created_at <= datetime.now(UTC)
    stored = registry.get_version("iris", 1)
    assert stored == record
    assert stored.to_dict() == {
        "name": "iris",
        "version": 1,
        "stage": "staging",
        "storage_uri": "file:///store/iris/1",
        "sha256": record.sha256,
        "metrics": {"f1_macro": 0.91, "accuracy": 0.93, "roc_auc": 0.99},
        "params": {"C": 0.5, "class_weight": None, "layers": [8, 4]},
        "algorithm": "logistic_regression",
        "dataset": None,
        "dataset_fingerprint": FINGERPRINT,
        "created_at": record.created_at.isoformat(),
        "promoted_at": None,
        "run_id": None,
    }


def test_a_record_keeps_the_run_that_published_it(registry: Registry, publish) -> None:
    record = publish("iris", run_id="iris-train-0123456789")
    assert registry.get_version("iris", record.version).run_id == "iris-train-0123456789"
    assert publish("iris").run_id is None


def test_a_version_trained_on_a_loaded_dataset_names_it(registry: Registry, publish) -> None:
    dataset = registry.register_dataset(
        "iris-data",
        fingerprint=FINGERPRINT,
        row_count=150,
        columns=[DatasetColumn("sepal_length", "float64"), DatasetColumn("species", "string")],
        table_name="external_iris",
        source="/data/iris.csv",
    )
    record = publish("iris", dataset_id=dataset.id)
    assert record.dataset == "iris-data@1"
    assert record.dataset_fingerprint == FINGERPRINT
    assert registry.get_version("iris").to_dict()["dataset"] == "iris-data@1"
    with pytest.raises(NotFound, match="dataset id 999 does not exist"):
        publish("iris", dataset_id=999)
    # A fingerprint the trainer computed (of the frame it read) is kept as given.
    frame_fingerprint = "f" * 64
    kept = publish("iris", dataset_id=dataset.id, dataset_fingerprint=frame_fingerprint)
    assert (kept.dataset, kept.dataset_fingerprint) == ("iris-data@1", frame_fingerprint)


def test_a_failed_publish_records_nothing_and_consumes_no_number(registry: Registry, publish) -> None:
    publish("iris")
    with pytest.raises(RuntimeError, match="upload failed"), registry.reserve_version("iris") as reservation:
        assert reservation.version == 2
        raise RuntimeError("upload failed")
    # A failure after record() (e.g. the final verification) also undoes the row.
    with (
        pytest.raises(RuntimeError, match="verification failed"),
        registry.reserve_version("iris") as reservation,
    ):
        reservation.record(
            storage_uri="s3://b/iris/2", sha256="a" * 64, metrics={}, params={}, algorithm="svm"
        )
        raise RuntimeError("verification failed")
    # A block that never records gives its number back too.
    with registry.reserve_version("iris") as reservation:
        assert reservation.version == 2
    assert [r.version for r in registry.list_versions("iris")] == [1]
    assert publish("iris").version == 2


def test_a_reservation_records_once_and_only_inside_its_block(registry: Registry) -> None:
    fields = {"storage_uri": "file:///x", "sha256": "a" * 64, "metrics": {}, "params": {}, "algorithm": "svm"}
    with registry.reserve_version("iris") as reservation:
        reservation.record(**fields)
        with pytest.raises(Conflict, match="iris@1 is already recorded by this reservation"):
            reservation.record(**fields)
    with pytest.raises(Conflict, match="the reservation of iris@1 has ended: record inside the block"):
        reservation.record(**fields)
    assert [r.version for r in registry.list_versions("iris")] == [1]


def test_undefined_metrics_are_stored_as_null(registry: Registry, publish) -> None:
    record = publish(
        "iris", metrics={"f1_macro": 0.8, "roc_auc": float("nan"), "neg_log_loss": float("-inf")}
    )
    assert (
        registry.get_version("iris", 1).metrics
        == record.metrics
        == {
            "f1_macro": 0.8,
            "roc_auc": None,
            "neg_log_loss": None,
        }
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sha256": "abc"}, r"sha256 must be 64 lowercase hexadecimal characters \(a sha256\), got 'abc'"),
        ({"sha256": "A" * 64}, "sha256 must be 64 lowercase hexadecimal characters"),
        ({"dataset_fingerprint": "xyz"}, "dataset_fingerprint must be 64 lowercase hexadecimal characters"),
        ({"storage_uri": " "}, "storage_uri must name where the bundle is stored"),
        ({"algorithm": ""}, "algorithm must be a name of 1 to 64 characters, got ''"),
        ({"metrics": {"f1_macro": "high"}}, r"metric 'f1_macro' must be a number, got 'high'"),
        ({"metrics": {"f1_macro": True}}, r"metric 'f1_macro' must be a number, got True"),
        ({"metrics": {"": 0.5}}, "metric names must be non-empty strings"),
        ({"params": {"C": object()}}, r"params must be plain JSON .*not JSON serializable"),
        ({"params": {"C": float("nan")}}, r"params must be plain JSON .*Out of range float"),
        ({"stage": "retired"}, "unknown stage 'retired': use one of none, staging, production, archived"),
        ({"run_id": ""}, "run_id must be 1 to 253 characters, got ''"),
        ({"run_id": "r" * 254}, "run_id must be 1 to 253 characters"),
    ],
)
def test_bad_record_fields_are_named(registry: Registry, publish, fields: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        publish("iris", **fields)
    assert registry.list_versions("iris") == []
    assert publish("iris").version == 1


@pytest.mark.parametrize("name", ["Iris", "iris_v2", "-iris", "iris-", "", "a" * 64, "iris/1"])
def test_bad_model_names_are_refused(registry: Registry, name: str) -> None:
    refused = f"invalid model name '{name}': use 1 to 63 lowercase letters"
    with pytest.raises(InvalidInput, match=refused), registry.reserve_version(name):
        pass


def test_get_version_by_number_stage_or_latest(registry: Registry, publish) -> None:
    for _ in range(3):
        publish("iris")
    registry.promote("iris", 2)
    assert registry.get_version("iris").version == 3
    assert registry.get_version("iris", 1).version == 1
    assert registry.get_version("iris", stage="production").version == 2
    assert registry.get_version("iris", stage=Stage.STAGING).version == 3
    assert registry.get_version("iris", 2, stage="production").version == 2


def test_get_version_names_what_was_not_found(registry: Registry, publish) -> None:
    publish("iris")
    with pytest.raises(NotFound, match="model 'wine' not found"):
        registry.get_version("wine")
    with pytest.raises(NotFound, match="model 'wine' not found"):
        registry.get_version("wine", 1)
    with pytest.raises(NotFound, match=r"model iris@7 not found \(the latest version is iris@1\)"):
        registry.get_version("iris", 7)
    with pytest.raises(NotFound, match="model 'iris' has no version in stage 'production'"):
        registry.get_version("iris", stage="production")
    with pytest.raises(NotFound, match="model iris@1 is in stage 'staging', not 'production'"):
        registry.get_version("iris", 1, stage="production")
    with pytest.raises(InvalidInput, match="unknown stage 'live'"):
        registry.get_version("iris", stage="live")


def test_production_is_none_until_a_version_is_promoted(registry: Registry, publish) -> None:
    publish("iris")
    assert registry.production("iris") is None
    registry.promote("iris", 1)
    production = registry.production("iris")
    assert production is not None and production.version == 1
    with pytest.raises(NotFound, match="model 'wine' not found"):
        registry.production("wine")


def test_registries_on_one_database_see_each_others_versions(registry: Registry, publish) -> None:
    publish("iris")
    database_url = registry.engine.url.render_as_string(hide_password=False)
    with Registry(database_url) as other:
        assert other.get_version("iris").version == 1
        with other.reserve_version("iris") as reservation:
            reservation.record(
                storage_uri="file:///x", sha256="b" * 64, metrics={}, params={}, algorithm="knn"
            )
    assert registry.get_version("iris").algorithm == "knn"
