"""`modelyard install` and `modelyard deploy` without a cluster: their inputs and their errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.deploy import chart
from modelyard.deploy.install import find_helm, install
from modelyard.errors import InvalidInput, NotFound


def test_values_files_merge_deeply_and_sets_win(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text("serving:\n  deploymentMode: Standard\n  predictionLog: true\n")
    second = tmp_path / "b.yaml"
    second.write_text("serving:\n  predictionLog: false\n")
    values = chart.load_values([first, second], ["serving.autoscaling.target=60", "image.tag=1.2.3"])
    assert values == {
        "serving": {"deploymentMode": "Standard", "predictionLog": False, "autoscaling": {"target": 60}},
        "image": {"tag": "1.2.3"},
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [("- a\n- b\n", "must hold a mapping, not list"), ("a: [\n", "is not valid YAML")],
)
def test_a_bad_values_file_is_refused_naming_it(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(InvalidInput, match=message) as caught:
        chart.load_values([path])
    assert str(path) in str(caught.value)


def test_a_missing_values_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot read values file .*missing\.yaml"):
        chart.load_values([tmp_path / "missing.yaml"])


@pytest.mark.parametrize("assignment", ["serving", "=3", "a..b=1"])
def test_a_bad_set_is_refused(assignment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape("expected KEY.PATH=VALUE")):
        chart.parse_set(assignment)


def test_an_explicit_helm_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=re.escape(f"helm binary {tmp_path / 'helm'} does not exist")):
        find_helm(tmp_path / "helm")


def test_install_refuses_a_folder_without_a_chart(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=re.escape(f"no chart at {tmp_path}")):
        install("modelyard", "ml", {}, chart_dir=tmp_path)


def test_install_refuses_a_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"kubeconfig .*nope does not exist"):
        install("modelyard", "ml", {}, kubeconfig=tmp_path / "nope")


def test_the_cli_reports_a_bad_reference_as_one_line() -> None:
    result = CliRunner().invoke(app, ["deploy", "--model", "iris@"])
    assert result.exit_code == 2
    assert "invalid model reference 'iris@'" in result.output


def test_the_cli_reports_values_the_chart_refuses_before_calling_helm(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["install", "--helm", str(tmp_path / "no-helm"), "--set", "bogus=1"])
    assert result.exit_code == 1
    assert "the chart refuses these values" in result.output
    assert "additional properties 'bogus' not allowed" in result.output
