"""Fixtures for the operator's tests: the Model CRD (the chart's checked-in copy) on the session's control
plane, and a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from modelyard.operator.crd import CHART_CRD, CRD_NAME


@pytest.fixture(scope="session")
def model_crd(control_plane: Any) -> Any:
    """The control plane with the Model CRD applied and established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART_CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    return control_plane


@pytest.fixture
def namespace(model_crd: Any) -> Iterator[str]:
    """A fresh namespace, deleted (in the background) after the test."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    model_crd.create_namespace(name)
    yield name
    model_crd.kubectl("delete", "namespace", name, "--wait=false")
