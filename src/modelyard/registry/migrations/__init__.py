"""Alembic migrations of the registry schema, applied in code by ``modelyard.registry.db.upgrade``."""
