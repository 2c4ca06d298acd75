"""Alembic environment: runs the migrations on the connection ``modelyard.registry.db`` hands over.

``modelyard.registry.db.ensure_schema`` opens the transaction (and takes the migration lock) itself and
passes its connection in ``config.attributes["connection"]``. Run without one (e.g. ``alembic revision
--autogenerate`` by a developer, with ``sqlalchemy.url`` set), it connects to that URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from modelyard.registry.tables import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite can only alter tables by copying them; batch mode does that for future migrations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from modelyard.registry.db import create_engine_for

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or migrate with modelyard.registry.db.upgrade(url)")
    engine = create_engine_for(url)
    try:
        with engine.connect() as own_connection:
            _run(own_connection)
            own_connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; use modelyard.registry.db.upgrade(url)")
_run_online()
