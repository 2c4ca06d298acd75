"""The Registry: datasets and model versions, their numbering, stages, promotion and rollback.

Version numbers come from a counter row per (kind, name), bumped in the same transaction that inserts
the version. The transaction holds that row's lock (Postgres) or the database write lock (SQLite, opened
with BEGIN IMMEDIATE) until it commits, so concurrent publishers of one name take turns, and a publish
that fails rolls the counter back with it: numbers have no gaps and no duplicates.

Stage changes lock the name's version rows first, so concurrent promotions and rollbacks of one name
take turns too; a partial unique index keeps one production version per name even against other writers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from numbers import Real
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from modelyard.errors import Conflict, InvalidInput, NotFound
from modelyard.registry import db
from modelyard.registry.db import create_engine_for, read_session, redact, write_session
from modelyard.registry.records import DatasetColumn, DatasetRecord, ModelVersionRecord
from modelyard.registry.refs import ModelRef
from modelyard.registry.tables import (
    RUN_ID_LENGTH,
    CounterKind,
    Dataset,
    ModelVersion,
    Promotion,
    Stage,
    VersionCounter,
    utc_now,
)
from modelyard.spec import NAME_PATTERN

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_STAGES = ", ".join(stage.value for stage in Stage)


def check_name(name: str, *, kind: str) -> str:
    """Model and dataset names follow the ModelSpec rule: a DNS label (also a valid KServe name)."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: use 1 to 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def parse_stage(stage: str | Stage) -> Stage:
    try:
        return Stage(stage)
    except ValueError:
        raise InvalidInput(f"unknown stage {stage!r}: use one of {_STAGES}") from None


def _check_sha256(value: str, *, what: str) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise InvalidInput(f"{what} must be 64 lowercase hexadecimal characters (a sha256), got {value!r}")
    return value


def _clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    cleaned: dict[str, float | None] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"metric names must be non-empty strings, got {key!r}")
        if value is None:
            cleaned[key] = None
        elif isinstance(value, Real) and not isinstance(value, bool):
            number = float(value)
            # An undefined score (e.g. roc_auc on one class) is stored as null: JSON has no NaN.
            cleaned[key] = number if math.isfinite(number) else None
        else:
            raise InvalidInput(f"metric {key!r} must be a number, got {value!r}")
    return cleaned


def _clean_params(params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(dict(params), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"params must be plain JSON (str, number, bool, list, dict): {exc}") from None
    plain: dict[str, Any] = json.loads(text)
    return plain


def _lock_counter(session: Session, kind: CounterKind, name: str) -> int:
    """Create the (kind, name) counter if missing, lock it, and return its last version."""
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    create_if_missing = (
        insert(VersionCounter)
        .values(kind=kind.value, name=name, last_version=0)
        .on_conflict_do_nothing(index_elements=["kind", "name"])
    )
    session.execute(create_if_missing)
    locked = (
        select(VersionCounter.last_version)
        .where(VersionCounter.kind == kind.value, VersionCounter.name == name)
        .with_for_update()
    )
    return session.execute(locked).scalar_one()


def _set_counter(session: Session, kind: CounterKind, name: str, last_version: int) -> None:
    session.execute(
        update(VersionCounter)
        .where(VersionCounter.kind == kind.value, VersionCounter.name == name)
        .values(last_version=last_version)
    )


class VersionReservation:
    """The next version of a model, held for the duration of a ``with registry.reserve_version(...)``.

    Upload the bundle under ``.version`` inside the block, then call ``record(...)`` last. The row and the
    number are committed when the block exits; if the block raises, or never calls ``record``, nothing is
    recorded and the number is handed out again.
    """

    def __init__(self, session: Session, name: str, version: int) -> None:
        self._session = session
        self.name = name
        self.version = version
        self._open = True
        self.recorded: ModelVersionRecord | None = None

    def record(
        self,
        *,
        storage_uri: str,
        sha256: str,
        metrics: Mapping[str, Any],
        params: Mapping[str, Any],
        algorithm: str,
        dataset_id: int | None = None,
        dataset_fingerprint: str | None = None,
        stage: str | Stage = Stage.STAGING,
        run_id: str | None = None,
    ) -> ModelVersionRecord:
        if not self._open:
            raise Conflict(
                f"the reservation of {self.name}@{self.version} has ended: record inside the block"
            )
        if self.recorded is not None:
            raise Conflict(f"{self.name}@{self.version} is already recorded by this reservation")
        if not isinstance(storage_uri, str) or not storage_uri.strip():
            raise InvalidInput("storage_uri must name where the bundle is stored, got an empty value")
        if not isinstance(algorithm, str) or not 0 < len(algorithm) <= 64:
            raise InvalidInput(f"algorithm must be a name of 1 to 64 characters, got {algorithm!r}")
        if run_id is not None and not 0 < len(run_id) <= RUN_ID_LENGTH:
            raise InvalidInput(f"run_id must be 1 to {RUN_ID_LENGTH} characters, got {run_id!r}")
        target_stage = parse_stage(stage)
        row = ModelVersion(
            name=self.name,
            version=self.version,
            storage_uri=storage_uri,
            sha256=_check_sha256(sha256, what="sha256"),
            metrics=_clean_metrics(metrics),
            params=_clean_params(params),
            algorithm=algorithm,
            dataset_fingerprint=(
                None
                if dataset_fingerprint is None
                else _check_sha256(dataset_fingerprint, what="dataset_fingerprint")
            ),
            created_at=utc_now(),
            stage=Stage.NONE.value if target_stage is Stage.PRODUCTION else target_stage.value,
            run_id=run_id,
        )
        if dataset_id is not None:
            dataset = self._session.get(Dataset, dataset_id)
            if dataset is None:
                raise NotFound(f"dataset id {dataset_id} does not exist in the registry")
            row.dataset = dataset
            # The caller's fingerprint (e.g. of the frame it trained on) wins; else the dataset's own.
            row.dataset_fingerprint = row.dataset_fingerprint or dataset.fingerprint
        self._session.add(row)
        _set_counter(self._session, CounterKind.MODEL, self.name, self.version)
        self._session.flush()
        if target_stage is Stage.PRODUCTION:
            _promote(self._session, _lock_versions(self._session, self.name), row)
        self.recorded = ModelVersionRecord.from_row(row)
        return self.recorded


class DatasetReservation:
    """The next version of a dataset, or the version that already holds this content.

    ``existing`` is set when (name, fingerprint) is already registered: nothing is allocated then. Otherwise
    create and fill the table on ``connection`` (the reservation's own transaction), then ``record(...)``.
    """

    def __init__(
        self, session: Session, name: str, fingerprint: str, version: int, existing: DatasetRecord | None
    ) -> None:
        self._session = session
        self.name = name
        self.fingerprint = fingerprint
        self.version = version
        self.existing = existing
        self._open = True
        self.recorded: DatasetRecord | None = None

    @property
    def connection(self) -> Connection:
        """The connection whose transaction the dataset row will be committed in."""
        return self._session.connection()

    def record(
        self, *, row_count: int, columns: Sequence[DatasetColumn], table_name: str, source: str
    ) -> DatasetRecord:
        if self.existing is not None:
            raise Conflict(f"dataset {self.name!r} already holds this content as {self.existing.ref}")
        if not self._open:
            raise Conflict(
                f"the reservation of {self.name}@{self.version} has ended: record inside the block"
            )
        if self.recorded is not None:
            raise Conflict(f"{self.name}@{self.version} is already recorded by this reservation")
        if not columns:
            raise InvalidInput(f"dataset {self.name!r} must have at least one column")
        row = Dataset(
            name=self.name,
            version=self.version,
            fingerprint=self.fingerprint,
            row_count=row_count,
            columns=[column.to_dict() for column in columns],
            table_name=table_name,
            source=source,
            created_at=utc_now(),
        )
        self._session.add(row)
        _set_counter(self._session, CounterKind.DATASET, self.name, self.version)
        self._session.flush()
        self.recorded = DatasetRecord.from_row(row)
        return self.recorded


def _lock_versions(session: Session, name: str) -> list[ModelVersion]:
    """Every version of ``name``, locked until the transaction ends (Postgres; SQLite holds the db lock)."""
    query = select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version)
    return list(session.scalars(query.with_for_update(of=ModelVersion)))


def _active_promotions(session: Session, name: str) -> list[Promotion]:
    """Promotions of ``name`` not undone, newest first: the chain rollback walks."""
    query = (
        select(Promotion)
        .join(ModelVersion, Promotion.model_version_id == ModelVersion.id)
        .where(ModelVersion.name == name, Promotion.reverted_at.is_(None))
        .order_by(Promotion.id.desc())
    )
    return list(session.scalars(query))


def _promote(session: Session, versions: list[ModelVersion], target: ModelVersion) -> None:
    current = next((row for row in versions if row.stage == Stage.PRODUCTION.value), None)
    if current is target:
        return
    now = utc_now()
    if current is not None:
        current.stage = Stage.ARCHIVED.value
        # Flushed on its own: the one-production index must never see two production rows.
        session.flush()
    target.stage = Stage.PRODUCTION.value
    target.promoted_at = now
    session.add(Promotion(model_version_id=target.id, promoted_at=now))
    session.flush()


def _revert_latest_promotions(session: Session, row: ModelVersion) -> list[Promotion]:
    """Undo the newest promotions of ``row`` (the top of the chain); return what remains below them."""
    chain = _active_promotions(session, row.name)
    now = utc_now()
    while chain and chain[0].model_version_id == row.id:
        chain.pop(0).reverted_at = now
    return chain


class Registry:
    """Datasets and model versions in one database (SQLite file or Postgres).

    The schema is migrated on construction unless ``ensure_schema=False``. Safe to share between threads;
    every method runs in its own transaction. On SQLite, writes from several processes take turns (each
    waits up to 30 s for the lock), and a write inside an open ``reserve_version`` block of the same
    thread would wait for itself: record, then write.
    """

    def __init__(self, database_url: str, *, ensure_schema: bool = True) -> None:
        self.engine: Engine = create_engine_for(database_url)
        if ensure_schema:
            try:
                self.schema_revision: str | None = db.ensure_schema(self.engine)
            except BaseException:
                self.engine.dispose()
                raise
        else:
            self.schema_revision = None

    def __repr__(self) -> str:
        return f"Registry({redact(self.engine.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ datasets

    @contextmanager
    def reserve_dataset_version(self, name: str, fingerprint: str) -> Iterator[DatasetReservation]:
        """Allocate the next version of dataset ``name`` unless this content (fingerprint) is already in.

        Everything done on ``reservation.connection`` inside the block commits with the dataset row, or
        not at all: a block that raises (or records nothing) leaves no row, no table and no used number.
        """
        check_name(name, kind="dataset")
        _check_sha256(fingerprint, what="fingerprint")
        with write_session(self.engine) as session:
            last_version = _lock_counter(session, CounterKind.DATASET, name)
            # Looked up under the lock: a concurrent load of the same content has committed by now.
            same_content = session.scalars(
                select(Dataset).where(Dataset.name == name, Dataset.fingerprint == fingerprint)
            ).one_or_none()
            existing = None if same_content is None else DatasetRecord.from_row(same_content)
            version = existing.version if existing is not None else last_version + 1
            reservation = DatasetReservation(session, name, fingerprint, version, existing)
            try:
                yield reservation
            finally:
                reservation._open = False
            if reservation.recorded is None:
                session.rollback()

    def register_dataset(
        self,
        name: str,
        *,
        fingerprint: str,
        row_count: int,
        columns: Sequence[DatasetColumn],
        table_name: str,
        source: str,
    ) -> DatasetRecord:
        """Record a dataset whose rows are already in ``table_name``. Conflict if the content is known."""
        with self.reserve_dataset_version(name, fingerprint) as reservation:
            return reservation.record(
                row_count=row_count, columns=columns, table_name=table_name, source=source
            )

    def get_dataset(self, name: str, version: int | None = None) -> DatasetRecord:
        """A dataset version, or its latest when ``version`` is None."""
        with read_session(self.engine) as session:
            query = select(Dataset).where(Dataset.name == name)
            if version is not None:
                row = session.scalars(query.where(Dataset.version == version)).one_or_none()
            else:
                row = session.scalars(query.order_by(Dataset.version.desc()).limit(1)).first()
            if row is not None:
                return DatasetRecord.from_row(row)
            latest = session.scalars(
                select(Dataset.version).where(Dataset.name == name).order_by(Dataset.version.desc())
            ).first()
        if latest is None:
            raise NotFound(
                f"dataset {name!r} not found (load it with `modelyard data load FILE --name {name}`)"
            )
        raise NotFound(f"dataset {name}@{version} not found (the latest version is {name}@{latest})")

    def list_datasets(self, name: str | None = None) -> list[DatasetRecord]:
        """Dataset versions by name, newest version first; all names unless ``name`` is given."""
        query = select(Dataset).order_by(Dataset.name, Dataset.version.desc())
        if name is not None:
            query = query.where(Dataset.name == name)
        with read_session(self.engine) as session:
            return [DatasetRecord.from_row(row) for row in session.scalars(query)]

    # ------------------------------------------------------------ model versions

    @contextmanager
    def reserve_version(self, name: str) -> Iterator[VersionReservation]:
        """Allocate the next version of model ``name`` for a publish; see VersionReservation.

        Concurrent reservations of one name wait for each other (a row lock on Postgres, the write lock
        on SQLite) until the block ends, so upload inside it and keep it short.
        """
        check_name(name, kind="model")
        with write_session(self.engine) as session:
            version = _lock_counter(session, CounterKind.MODEL, name) + 1
            reservation = VersionReservation(session, name, version)
            try:
                yield reservation
            finally:
                reservation._open = False
            if reservation.recorded is None:
                session.rollback()

    def list_versions(self, name: str | None = None) -> list[ModelVersionRecord]:
        """Model versions by name, newest version first; all names unless ``name`` is given."""
        query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version.desc())
        if name is not None:
            query = query.where(ModelVersion.name == name)
        with read_session(self.engine) as session:
            return [ModelVersionRecord.from_row(row) for row in session.scalars(query)]

    def get_version(
        self, name: str, version: int | None = None, stage: str | Stage | None = None
    ) -> ModelVersionRecord:
        """One version of ``name``: by number, the latest in ``stage``, or else the latest of all."""
        wanted_stage = None if stage is None else parse_stage(stage)
        query = select(ModelVersion).where(ModelVersion.name == name)
        if version is not None:
            query = query.where(ModelVersion.version == version)
        elif wanted_stage is not None:
            query = query.where(ModelVersion.stage == wanted_stage.value)
        with read_session(self.engine) as session:
            found = session.scalars(query.order_by(ModelVersion.version.desc()).limit(1)).first()
            if found is not None:
                record = ModelVersionRecord.from_row(found)
                if wanted_stage is not None and record.stage is not wanted_stage:
                    raise NotFound(
                        f"model {name}@{version} is in stage {record.stage.value!r}, "
                        f"not {wanted_stage.value!r}"
                    )
                return record
            latest = _latest_version(session, name)
        if latest is None:
            raise NotFound(f"model {name!r} not found")
        if version is not None:
            raise NotFound(f"model {name}@{version} not found (the latest version is {name}@{latest})")
        assert wanted_stage is not None
        raise NotFound(f"model {name!r} has no version in stage {wanted_stage.value!r}")

    def resolve(self, ref: ModelRef) -> ModelVersionRecord:
        """The version ``ref`` names (see modelyard.registry.refs); NotFound naming what is missing."""
        if ref.version is not None:
            return self.get_version(ref.name, ref.version)
        if ref.stage is not None:
            return self.get_version(ref.name, stage=ref.stage)
        if ref.latest:
            return self.get_version(ref.name)
        return self.production(ref.name) or self.get_version(ref.name)

    def production(self, name: str) -> ModelVersionRecord | None:
        """The production version of ``name``; None if it has none. NotFound if the model is unknown."""
        try:
            return self.get_version(name, stage=Stage.PRODUCTION)
        except NotFound:
            self.get_version(name)  # raises NotFound naming the model when it has no versions at all
            return None

    def promote(self, name: str, version: int) -> ModelVersionRecord:
        """Put ``name@version`` in production and archive the version that was.

        Any stage can be promoted, archived included. Promoting the current production version changes
        nothing and returns it (so retries and declarative tools can repeat the call safely).
        """
        with write_session(self.engine) as session:
            versions = _lock_versions(session, name)
            target = _find(versions, name, version)
            _promote(session, versions, target)
            return ModelVersionRecord.from_row(target)

    def set_stage(self, name: str, version: int, stage: str | Stage) -> ModelVersionRecord:
        """Move ``name@version`` to ``stage``. ``production`` means promote(); taking a version out of
        production also takes its promotion out of the rollback chain (it was withdrawn, not superseded).
        """
        target_stage = parse_stage(stage)
        if target_stage is Stage.PRODUCTION:
            return self.promote(name, version)
        with write_session(self.engine) as session:
            target = _find(_lock_versions(session, name), name, version)
            if target.stage == Stage.PRODUCTION.value:
                _revert_latest_promotions(session, target)
            target.stage = target_stage.value
            session.flush()
            return ModelVersionRecord.from_row(target)

    def rollback(self, name: str) -> ModelVersionRecord:
        """Archive the production version and put back the version that was in production before it.

        Repeated rollbacks keep walking back through earlier promotions. Conflict when there is no
        production version, or no earlier one to return to.
        """
        with write_session(self.engine) as session:
            versions = _lock_versions(session, name)
            if not versions:
                raise NotFound(f"model {name!r} not found")
            current = next((row for row in versions if row.stage == Stage.PRODUCTION.value), None)
            if current is None:
                raise Conflict(f"cannot roll back model {name!r}: no version is in production")
            chain = _revert_latest_promotions(session, current)
            if not chain:
                raise Conflict(
                    f"cannot roll back model {name!r}: no version was in production before "
                    f"{name}@{current.version}"
                )
            previous = next(row for row in versions if row.id == chain[0].model_version_id)
            current.stage = Stage.ARCHIVED.value
            session.flush()
            previous.stage = Stage.PRODUCTION.value
            previous.promoted_at = utc_now()
            session.flush()
            return ModelVersionRecord.from_row(previous)


def _find(versions: list[ModelVersion], name: str, version: int) -> ModelVersion:
    for row in versions:
        if row.version == version:
            return row
    if not versions:
        raise NotFound(f"model {name!r} not found")
    raise NotFound(f"model {name}@{version} not found (the latest version is {name}@{versions[-1].version})")


def _latest_version(session: Session, name: str) -> int | None:
    query = select(ModelVersion.version).where(ModelVersion.name == name)
    return session.scalars(query.order_by(ModelVersion.version.desc()).limit(1)).first()
