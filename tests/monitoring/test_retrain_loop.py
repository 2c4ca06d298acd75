"""The closed loop, locally and for real: Prometheus evaluates the drift rule on a drifting model server,
Alertmanager notifies the retrain webhook (and notifies it again), and exactly one kfp.local training run
starts and publishes a new version. Also: the example Alertmanager configuration passes amtool."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from modelyard.monitoring.rules import rule_groups
from modelyard.monitoring.webhook import RetrainWebhook, serve_webhook
from modelyard.registry import Registry
from modelyard.registry.db import create_engine_for
from modelyard.registry.tables import RetrainTrigger
from modelyard.retraining import PipelineLauncher
from modelyard.settings import load_settings

from .conftest import MODEL, Predictor, frame, free_ports, send_traffic, spawn, start_prometheus, wait_until

ROOT = Path(__file__).resolve().parents[2]
needs_alertmanager = pytest.mark.usefixtures("alertmanager_binaries")


@needs_alertmanager
def test_the_example_alertmanager_config_passes_amtool() -> None:
    run = subprocess.run(
        ["amtool", "check-config", str(ROOT / "examples" / "alertmanager.yml")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


class CountingWebhook(RetrainWebhook):
    """The webhook, counting the notifications it was handed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notifications = 0

    def handle(self, document: Any) -> Any:
        self.notifications += 1
        return super().handle(document)


class CountingLauncher(PipelineLauncher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.starts = 0

    def start(self, model: str) -> str:
        self.starts += 1
        return super().start(model)


def drift_rule_file(path: Path) -> Path:
    """The checked-in drift alert, with its 15 minutes shortened to 2 seconds for the test."""
    groups = rule_groups()["groups"]
    rule = next(r for g in groups for r in g["rules"] if r["alert"] == "ModelyardFeatureDrift")
    path.write_text(yaml.safe_dump({"groups": [{"name": "drift", "rules": [{**rule, "for": "2s"}]}]}))
    return path


def alertmanager_config(path: Path, webhook_url: str) -> Path:
    """The example configuration with the test's webhook and short timers (repeat: notify again soon)."""
    config = yaml.safe_load((ROOT / "examples" / "alertmanager.yml").read_text())
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="2s")
    config["receivers"][1]["webhook_configs"][0]["url"] = webhook_url
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def training_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry, a store and a spec of the served model's name, for the retrained version."""
    home = tmp_path / "home"
    for name, value in {
        "MODELYARD_HOME": str(home),
        "MODELYARD_DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "MODELYARD_STORE_URI": f"file://{tmp_path / 'store'}",
        "MODELYARD_PIPELINE__TUNE_JOBS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    specs = tmp_path / "specs"
    specs.mkdir()
    data, labels = frame(300, 5)
    data["label"] = labels
    data.to_csv(specs / "drifty.csv", index=False)
    spec = {
        "name": MODEL,
        "data": {"path": str(specs / "drifty.csv")},
        "target": "label",
        "features": [{"name": f"f{i}", "type": "numeric"} for i in range(4)],
        "algorithms": ["logistic_regression"],
        "search": {"strategy": "random", "trials": 2},
        "cv_folds": 2,
        "metric": "accuracy",
    }
    (specs / "drifty.yaml").write_text(yaml.safe_dump(spec))
    return specs


@pytest.fixture
def webhook_server(training_env: Path) -> Iterator[tuple[CountingWebhook, CountingLauncher, str]]:
    settings = load_settings()
    from modelyard.registry.db import upgrade

    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    launcher = CountingLauncher(settings, training_env)
    webhook = CountingWebhook(engine, launcher, cooldown=timedelta(hours=1))
    server = serve_webhook(webhook, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield webhook, launcher, f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()
    server.server_close()
    webhook.wait(timeout_s=120)
    engine.dispose()


@pytest.mark.slow
@needs_alertmanager
def test_drift_alert_to_alertmanager_to_webhook_starts_one_training_run(
    predictor: Predictor,
    webhook_server: tuple[CountingWebhook, CountingLauncher, str],
    tmp_path: Path,
    prometheus_binary: str,
) -> None:
    webhook, launcher, webhook_url = webhook_server
    (am_port,) = free_ports(1)
    am_root = tmp_path / "alertmanager"
    am_root.mkdir()
    alertmanager = spawn(
        [
            "prometheus-alertmanager",
            f"--config.file={alertmanager_config(am_root / 'alertmanager.yml', webhook_url)}",
            f"--storage.path={am_root / 'data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        am_root / "alertmanager.log",
    )
    prometheus = start_prometheus(
        tmp_path / "prometheus",
        [predictor.url.removeprefix("http://")],
        prometheus_binary,
        rule_files=[drift_rule_file(tmp_path / "drift.rules.yaml")],
        alertmanager=f"127.0.0.1:{am_port}",
    )
    try:
        wait_until(lambda: prometheus.query('up{job="modelyard"} == 1'), "the first scrape", 60)
        live, _ = frame(1500, 11)
        live["f1"] = live["f1"] - 3.0
        send_traffic(predictor.url, live)
        wait_until(lambda: prometheus.query('ALERTS{alertname="ModelyardFeatureDrift",alertstate="firing"}'),
                   "the drift alert firing", 60)  # fmt: skip
        wait_until(lambda: webhook.notifications >= 2, "two notifications", 60)
        settings = load_settings()
        registry = Registry(settings.database_url)
        try:
            wait_until(lambda: registry.list_versions(MODEL), "the retrained version published", 300)
        finally:
            registry.close()
        webhook.wait(timeout_s=120)
        assert launcher.starts == 1, alertmanager.log()
        with webhook.engine.connect() as connection:
            rows = connection.execute(select(RetrainTrigger.model, RetrainTrigger.outcome)).all()
        firing = prometheus.query('ALERTS{alertname="ModelyardFeatureDrift",alertstate="firing"}')
        assert {r["metric"]["feature"] for r in firing} == {"f1"}
        assert rows == [(MODEL, "started")]
    finally:
        prometheus.process.stop()
        alertmanager.stop()
