"""The CLI's monitoring commands: `modelyard monitor report` and `modelyard retrain-webhook`'s checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.publishing import publish_version
from modelyard.registry.db import create_engine_for, upgrade
from modelyard.registry.tables import Prediction
from modelyard.settings import Settings, load_settings

from .conftest import frame, write_drift_bundle

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELYARD_DATABASE_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("MODELYARD_STORE_URI", f"file://{tmp_path / 'store'}")
    settings = load_settings()
    upgrade(settings.database_url)
    write_drift_bundle(tmp_path / "bundle")
    publish_version(settings, tmp_path / "bundle")
    live, _ = frame(300, 4)
    live["f3"] = live["f3"] * 4
    engine = create_engine_for(settings.database_url)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        for i, row in enumerate(live.to_dict(orient="records")):
            connection.execute(
                insert(Prediction).values(
                    request_id=f"r{i}", model="drifty", version="1", rows=1,
                    features={name: [value] for name, value in row.items()}, labels=["yes"],
                    probabilities={"yes": [0.8], "no": [0.2]}, latency_ms=1.0,
                    created_at=now - timedelta(minutes=i),
                )
            )  # fmt: skip
    engine.dispose()
    return settings


def test_monitor_report_as_json_and_html(published: Settings, tmp_path: Path) -> None:
    code, out, err = invoke("monitor", "report", "--model", "drifty@1", "--since", "24h", "--json")
    assert code == 0, err
    document = json.loads(out)
    features = [d for d in document["drift"] if d["kind"] != "output"]
    assert document["rows"] == 300 and features[0]["name"] == "f3" and features[0]["psi"] > 0.2
    page = tmp_path / "report.html"
    code, _, err = invoke("monitor", "report", "--model", "drifty@1", "--since", "2h", "-o", str(page))
    assert code == 0, err
    assert "120 logged rows of drifty@1" in err.replace("\n", " ")
    assert "<h2>Drift per feature</h2>" in page.read_text()


@pytest.mark.parametrize("since", ["24", "0h", "1w", "h"])
def test_monitor_report_names_a_bad_duration(published: Settings, since: str) -> None:
    code, _, err = invoke("monitor", "report", "--model", "drifty", "--since", since)
    words = " ".join(err.replace("│", " ").split())  # typer frames usage errors in a box
    assert code == 2 and "expected a positive duration such as 30m, 24h or 7d" in words


def test_monitor_report_of_an_unknown_model(published: Settings) -> None:
    code, _, err = invoke("monitor", "report", "--model", "nope", "--json")
    assert code == 1 and "model 'nope' not found" in err


def test_retrain_webhook_needs_a_folder_of_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    code, _, err = invoke("retrain-webhook", "--specs", str(tmp_path / "missing"))
    assert code == 1 and "not a folder of ModelSpec YAML files" in " ".join(err.split())


@pytest.mark.parametrize("args", [[], ["--specs", "specs", "--models-namespace", "ml"]])
def test_retrain_webhook_takes_specs_or_a_models_namespace(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    code, _, err = invoke("retrain-webhook", *args)
    assert code == 1
    assert "give --specs DIR (train here or on KFP) or --models-namespace NS (the operator)" in " ".join(
        err.split()
    )
