"""Fixtures for the console: trained versions in a real registry, a real predictor, the console as
`modelyard console` runs it, and Debian's Chromium driven by Playwright.

The registry is SQLite with a file:// store; the tests that read or change it run on the embedded
PostgreSQL as well.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelyard.bundle import fetch_bundle
from modelyard.console.security import CONSOLE_HEADER
from modelyard.registry import Registry
from modelyard.settings import Settings, load_settings
from modelyard.spec import parse_spec
from modelyard.workflow import run_training

from ..conftest import PostgresService, unavailable
from ..serving.conftest import ServerProcess, free_ports, http_status, server_env, start_server

ROOT = Path(__file__).resolve().parents[2]
IRIS_CSV = ROOT / "examples" / "data" / "iris.csv"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Two versions that differ in algorithm and parameters, so Compare has something to show.
UPLOAD_LIMIT_MB = 1  # small, so the tests can send a file over it
# The header console.js sends with every request: without it (or a JSON body) a POST is refused.
FROM_THE_PAGE = {CONSOLE_HEADER: "1"}
RUNS = [
    {"algorithms": ["logistic_regression"], "search": {"strategy": "random", "trials": 2}},
    {"algorithms": ["random_forest"], "search": {"strategy": "random", "trials": 2}},
]


def iris_spec(run: dict[str, Any]) -> Any:
    raw = {
        "name": "iris",
        "data": {"path": str(IRIS_CSV)},
        "target": "species",
        "features": [
            {"name": name, "type": "numeric"}
            for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")
        ],
        "cv_folds": 3,
        "metric": "f1_macro",
        "gate": {"min_score": 0.5, "compare_to_production": False},
        "holdout": 0.2,
        "seed": 7,
        **run,
    }
    return parse_spec(raw, base_dir=ROOT)


@dataclass
class Console:
    url: str
    settings: Settings
    predictor: ServerProcess
    process: subprocess.Popen[bytes]
    log_path: Path

    def registry(self) -> Registry:
        return Registry(self.settings.database_url, ensure_schema=False)


# The console runs on SQLite for every browser test; the tests that read or change the registry (marked
# ON_BOTH_REGISTRIES) run on the embedded PostgreSQL too, where its SQL and JSON differ.
ON_BOTH_REGISTRIES = pytest.mark.parametrize("console", ["sqlite-file", "postgres"], indirect=True)


@pytest.fixture(scope="module", params=["sqlite-file"])
def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp(f"console-{request.param}")
    variables = {"MODELYARD_HOME": str(root / "home")}
    if request.param == "postgres":
        postgres: PostgresService = request.getfixturevalue("postgres")
        variables["MODELYARD_DATABASE_URL"] = postgres.create_database()
    settings = load_settings(home=root / "home", database_url=variables.get("MODELYARD_DATABASE_URL", ""))
    for run in RUNS:
        outcome = run_training(settings, iris_spec(run))
        assert outcome.published is not None, outcome.verdict
    with Registry(settings.database_url) as registry:
        first = registry.get_version("iris", 1)
    bundle = fetch_bundle(first.storage_uri, root / "predictor-bundle", s3=settings.s3)
    # The predictor logs its predictions to the console's registry: the Monitoring page reads them there.
    predictor_env = server_env(root / "predictor-home", MODELYARD_DATABASE_URL=settings.database_url)
    predictor = start_server(bundle, root / "predictor-home", "--model-version", "1", env=predictor_env)
    variables["MODELYARD_CONSOLE__PREDICTOR_URL"] = predictor.url
    variables["MODELYARD_CONSOLE__MAX_UPLOAD_MB"] = str(UPLOAD_LIMIT_MB)
    variables["MODELYARD_PIPELINE__TUNE_JOBS"] = "1"  # a run from the page: no CV worker processes to start
    try:
        url, process, log_path = start_console(root, variables)
    except BaseException:
        predictor.stop()
        raise
    yield Console(url, settings, predictor, process, log_path)
    stop_console(process)
    predictor.stop()


def start_console(root: Path, variables: dict[str, str]) -> tuple[str, subprocess.Popen[bytes], Path]:
    """`modelyard console` on a free port with MODELYARD_HOME under ``root``; returns once it answers."""
    (port,) = free_ports(1)
    env = server_env(root / "home", **variables)
    log_path = root / f"console-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "console", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while http_status(url + "/healthz", timeout=10.0) != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(20)
            raise RuntimeError(f"the console did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    return url, process, log_path


def stop_console(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(20)


# Playwright's sync API runs an event loop on this thread while it is open: close it with the module (the
# console's tests are one), or every later test that calls asyncio.run() would find a loop already running.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        unavailable(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    yield opened
    context.close()
