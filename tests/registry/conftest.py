"""A Registry on each backend (SQLite file, real Postgres), and a helper that publishes versions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modelyard.registry import ModelVersionRecord, Registry
from modelyard.settings import Settings

Publish = Callable[..., ModelVersionRecord]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with Registry(settings.database_url) as opened:
        yield opened


@pytest.fixture
def publish(registry: Registry) -> Publish:
    """publish(name, **record_fields): reserve the next version and record it, as publishing code does."""

    def _publish(name: str, **overrides: Any) -> ModelVersionRecord:
        with registry.reserve_version(name) as reservation:
            fields: dict[str, Any] = {
                "storage_uri": f"file:///store/{name}/{reservation.version}",
                "sha256": _sha(f"{name}-{reservation.version}"),
                "metrics": {"f1_macro": 0.9, "accuracy": 0.95},
                "params": {"C": 1.0, "kernel": "rbf"},
                "algorithm": "svm",
            }
            fields.update(overrides)
            return reservation.record(**fields)

    return _publish
