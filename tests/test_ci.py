"""Under CI=true a real service that cannot start fails its tests; elsewhere they are skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRAPE_TEST = "tests/serving/test_metrics.py::test_a_real_prometheus_scrapes_the_metrics"


def _run_without_prometheus(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "CI"}
    environment["PATH"] = str(Path(sys.executable).parent)  # the venv's tools, no /usr/bin/prometheus
    if ci is not None:
        environment["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            SCRAPE_TEST,
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path}/t",
            "-rfs",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(("ci", "outcome"), [(None, "1 skipped"), ("true", "1 error")])
def test_a_missing_service_skips_on_a_laptop_and_fails_under_ci(
    tmp_path: Path, ci: str | None, outcome: str
) -> None:
    result = _run_without_prometheus(tmp_path, ci)
    assert outcome in result.stdout, result.stdout + result.stderr
    assert "the prometheus binary is not installed (Debian: apt-get install prometheus)" in result.stdout
    if ci == "true":  # an error at setup: the fixture that finds the service fails
        assert "under CI=true a service that cannot start fails its tests" in result.stdout
