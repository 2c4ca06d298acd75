"""The model and dataset registry: SQLAlchemy 2 tables, Alembic migrations and the Registry API.

registry = Registry("sqlite:///.modelyard/modelyard.db")   # or postgresql://...
with registry.reserve_version("iris") as reservation:
    ...upload the bundle under reservation.version...
    record = reservation.record(storage_uri=..., sha256=..., metrics=..., params=..., algorithm=...)
registry.promote("iris", record.version)
"""

from modelyard.registry.db import create_engine_for, upgrade
from modelyard.registry.records import DatasetColumn, DatasetRecord, ModelVersionRecord
from modelyard.registry.refs import ModelRef, parse_model_ref
from modelyard.registry.service import DatasetReservation, Registry, VersionReservation
from modelyard.registry.tables import Stage

__all__ = [
    "DatasetColumn",
    "DatasetRecord",
    "DatasetReservation",
    "ModelRef",
    "ModelVersionRecord",
    "Registry",
    "Stage",
    "VersionReservation",
    "create_engine_for",
    "parse_model_ref",
    "upgrade",
]
