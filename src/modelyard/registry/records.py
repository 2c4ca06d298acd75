"""What the registry hands out: plain frozen records, detached from the database session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelyard.registry.tables import Dataset, ModelVersion, Stage


def as_utc(moment: datetime) -> datetime:
    # SQLite keeps no time zone; every timestamp the registry writes is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@dataclass(frozen=True)
class DatasetColumn:
    """One column of a loaded dataset: its name in the file and its dtype (int64, float64, bool, string)."""

    name: str
    dtype: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "dtype": self.dtype}


@dataclass(frozen=True)
class DatasetRecord:
    id: int
    name: str
    version: int
    fingerprint: str
    row_count: int
    columns: tuple[DatasetColumn, ...]
    table_name: str
    source: str
    created_at: datetime

    @property
    def ref(self) -> str:
        """``name@version``, the form specs use in ``data.dataset``."""
        return f"{self.name}@{self.version}"

    @classmethod
    def from_row(cls, row: Dataset) -> DatasetRecord:
        return cls(
            id=row.id,
            name=row.name,
            version=row.version,
            fingerprint=row.fingerprint,
            row_count=row.row_count,
            columns=tuple(DatasetColumn(name=c["name"], dtype=c["dtype"]) for c in row.columns),
            table_name=row.table_name,
            source=row.source,
            created_at=as_utc(row.created_at),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "row_count": self.row_count,
            "columns": [column.to_dict() for column in self.columns],
            "table_name": self.table_name,
            "source": self.source,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class ModelVersionRecord:
    id: int
    name: str
    version: int
    stage: Stage
    storage_uri: str
    sha256: str
    metrics: dict[str, float | None]
    params: dict[str, Any]
    algorithm: str
    dataset_id: int | None
    dataset: str | None  # name@version of the dataset it was trained on, if loaded with `data load`
    dataset_fingerprint: str | None
    created_at: datetime
    promoted_at: datetime | None
    run_id: str | None = None  # the run that published it, when one said so

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def from_row(cls, row: ModelVersion) -> ModelVersionRecord:
        dataset_ref = None if row.dataset is None else f"{row.dataset.name}@{row.dataset.version}"
        return cls(
            id=row.id,
            name=row.name,
            version=row.version,
            stage=Stage(row.stage),
            storage_uri=row.storage_uri,
            sha256=row.sha256,
            metrics=dict(row.metrics),
            params=dict(row.params),
            algorithm=row.algorithm,
            dataset_id=row.dataset_id,
            dataset=dataset_ref,
            dataset_fingerprint=row.dataset_fingerprint,
            created_at=as_utc(row.created_at),
            promoted_at=None if row.promoted_at is None else as_utc(row.promoted_at),
            run_id=row.run_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "stage": self.stage.value,
            "storage_uri": self.storage_uri,
            "sha256": self.sha256,
            "metrics": dict(self.metrics),
            "params": dict(self.params),
            "algorithm": self.algorithm,
            "dataset": self.dataset,
            "dataset_fingerprint": self.dataset_fingerprint,
            "created_at": _iso(self.created_at),
            "promoted_at": _iso(self.promoted_at),
            "run_id": self.run_id,
        }
