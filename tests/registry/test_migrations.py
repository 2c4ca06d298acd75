"""Migrations create the schema the ORM declares, on an empty database, once, even when raced."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from modelyard.errors import InvalidInput, ModelyardError
from modelyard.registry import Registry, create_engine_for, upgrade
from modelyard.registry.db import (
    SCHEMA_HEAD,
    SQLITE_PAGE_SIZE,
    current_revision,
    head_revision,
    normalize_url,
)
from modelyard.registry.tables import Base
from modelyard.settings import Settings

TABLES = {
    "alembic_version",
    "datasets",
    "feedback",
    "model_versions",
    "predictions",
    "promotions",
    "retrain_triggers",
    "version_counters",
}
HEAD = "0008"


def test_upgrade_creates_the_schema_on_an_empty_database_and_is_idempotent(settings: Settings) -> None:
    engine = create_engine_for(settings.database_url)
    try:
        assert current_revision(engine) is None
        assert upgrade(settings.database_url) == head_revision() == HEAD
        assert set(inspect(engine).get_table_names()) == TABLES
        assert upgrade(settings.database_url) == HEAD
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
    finally:
        engine.dispose()


def test_orm_tables_and_migrations_agree(settings: Settings) -> None:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_the_database_itself_allows_one_production_version_per_name(settings: Settings) -> None:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    insert = text(
        "INSERT INTO model_versions (name, version, storage_uri, sha256, metrics, params, algorithm, "
        "created_at, stage) VALUES (:name, :version, 'file:///x', :sha, '{}', '{}', 'svm', "
        "CURRENT_TIMESTAMP, :stage)"
    )
    try:
        with engine.begin() as connection:
            for version, stage in enumerate(["production", "archived", "archived", "staging"], start=1):
                connection.execute(
                    insert, {"name": "iris", "version": version, "sha": "0" * 64, "stage": stage}
                )
            connection.execute(insert, {"name": "wine", "version": 1, "sha": "0" * 64, "stage": "production"})
        with pytest.raises(IntegrityError, match=r"(?i)unique"), engine.begin() as connection:
            connection.execute(insert, {"name": "iris", "version": 5, "sha": "0" * 64, "stage": "production"})
        with pytest.raises(IntegrityError, match=r"(?i)check"), engine.begin() as connection:
            connection.execute(insert, {"name": "iris", "version": 6, "sha": "0" * 64, "stage": "retired"})
    finally:
        engine.dispose()


def test_concurrent_upgrades_of_an_empty_database_apply_the_migrations_once(settings: Settings) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        revisions = list(pool.map(lambda _: upgrade(settings.database_url), range(4)))
    assert revisions == [HEAD] * 4
    with Registry(settings.database_url) as registry:
        assert registry.schema_revision == HEAD


def test_registry_migrates_on_start_unless_told_not_to(settings: Settings) -> None:
    with Registry(settings.database_url, ensure_schema=False) as registry:
        assert registry.schema_revision is None
        assert current_revision(registry.engine) is None
    with Registry(settings.database_url) as registry:
        assert current_revision(registry.engine) == HEAD


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "UPDATE alembic_version SET version_num = '9999'",
            r"schema revision '9999'.*does not know.*upgrade modelyard",
        ),
        (
            "INSERT INTO alembic_version (version_num) VALUES ('0001')",
            r"several schema revisions at once \(0001, 0008\)",
        ),
    ],
    ids=["from-a-newer-modelyard", "two-revisions-at-once"],
)
def test_a_database_at_a_revision_this_modelyard_cannot_use_is_refused(
    settings: Settings, edit: str, message: str
) -> None:
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(edit))
        with pytest.raises(ModelyardError, match=message):
            Registry(settings.database_url)
    finally:
        engine.dispose()


def test_the_head_known_without_alembic_is_alembics_head() -> None:
    assert SCHEMA_HEAD == head_revision() == HEAD


def test_sqlite_creates_the_folder_and_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'registry.db'}"
    assert upgrade(url) == HEAD
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert connection.exec_driver_sql("PRAGMA page_size").scalar() == SQLITE_PAGE_SIZE
    finally:
        engine.dispose()


def test_postgres_urls_use_psycopg_3() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"):
        assert normalize_url(url).drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/registry", r"unsupported database URL 'mysql://root@localhost/registry'"),
        (
            "postgresql+psycopg2://u:secret@h/db",
            r"unsupported database URL 'postgresql\+psycopg2://u:\*\*\*@h/db'",
        ),
        ("sqlite://", "an in-memory SQLite database cannot hold the registry"),
        ("sqlite:///:memory:", "an in-memory SQLite database cannot hold the registry"),
        ("not a url", "invalid database URL"),
    ],
)
def test_bad_database_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        create_engine_for(url)


def test_an_unreachable_postgres_is_reported_with_the_url_redacted(tmp_path: Path) -> None:
    url = f"postgresql://me:hunter2@/nowhere?host={tmp_path}"
    with pytest.raises(ModelyardError, match=r"cannot migrate the registry database .*me:\*\*\*@") as caught:
        upgrade(url)
    assert "hunter2" not in caught.value.message
