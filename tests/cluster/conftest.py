"""Fixtures for tests against the local control plane (the session's `control_plane`, tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def namespace(control_plane: Any) -> Iterator[str]:
    """A fresh namespace, deleted (in the background) after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.create_namespace(name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")
