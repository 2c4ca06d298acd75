"""The README stays true: its two commands, every configuration variable, every CLI command."""

from __future__ import annotations

from pathlib import Path

import typer

from modelyard.cli import app
from modelyard.settings import (
    ConsoleSettings,
    MonitoringSettings,
    OperatorSettings,
    PipelineSettings,
    S3Settings,
    ServingSettings,
    Settings,
)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]


def test_every_setting_is_documented() -> None:
    groups = {"s3", "serving", "pipeline", "monitoring", "operator", "console"}
    names = [f"MODELYARD_{field.upper()}" for field in Settings.model_fields if field not in groups]
    names += [f"MODELYARD_SERVING__{field.upper()}" for field in ServingSettings.model_fields]
    names += [f"MODELYARD_PIPELINE__{field.upper()}" for field in PipelineSettings.model_fields]
    names += [f"AWS_{field.upper()}" for field in S3Settings.model_fields]
    names += [f"MODELYARD_MONITORING__{field.upper()}" for field in MonitoringSettings.model_fields]
    names += [f"MODELYARD_OPERATOR__{field.upper()}" for field in OperatorSettings.model_fields]
    names += [f"MODELYARD_CONSOLE__{field.upper()}" for field in ConsoleSettings.model_fields]
    undocumented = [name for name in names if f"`{name}`" not in README]
    assert not undocumented, f"README lacks: {undocumented}"


def _command_paths(group: typer.Typer, prefix: str = "") -> list[str]:
    paths = [f"{prefix}{c.name or c.callback.__name__}".strip() for c in group.registered_commands]  # type: ignore[union-attr]
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        paths += _command_paths(sub.typer_instance, f"{prefix}{sub.name} ")
    return paths


def test_every_command_is_documented() -> None:
    paths = _command_paths(app)
    assert {"train", "data load", "models promote", "db upgrade"} <= set(paths)
    undocumented = [path for path in paths if f"`modelyard {path}" not in README]
    assert not undocumented, f"README lacks: {undocumented}"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
