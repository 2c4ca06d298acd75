"""The training pipeline end to end on kfp.local, as `modelyard train` runs it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.pipeline.local import PipelineFailed, run_training_locally
from modelyard.registry import Registry
from modelyard.settings import Settings
from modelyard.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = ["search.trials=2", "cv_folds=3", "algorithms=[logistic_regression, knn]", "gate.min_score=0.5"]

pytestmark = pytest.mark.slow


@pytest.fixture
def iris_copy(tmp_path: Path) -> Path:
    data = tmp_path / "iris.csv"
    shutil.copy(EXAMPLES / "data" / "iris.csv", data)
    return data


SQLITE_ONLY = pytest.mark.parametrize("settings", ["sqlite-file"], indirect=True)


@pytest.mark.parametrize("settings", ["postgres-s3"], indirect=True)
def test_pipeline_publishes_on_postgres_and_s3(settings: Settings) -> None:
    run = run_training_locally(settings, load_spec(EXAMPLES / "iris.yaml", [*TINY, "algorithms=[knn]"]))
    published = run.summary["published"]
    assert published["storage_uri"] == f"{settings.store_uri}/iris/1"
    with Registry(settings.database_url) as registry:
        assert registry.get_version("iris", 1).dataset == "iris@1"


@SQLITE_ONLY
def test_pipeline_publishes_then_reuses_its_cache_until_the_data_changes(
    settings: Settings, iris_copy: Path
) -> None:
    spec = load_spec(EXAMPLES / "iris.yaml", [*TINY, f"data.path={iris_copy}"])
    first = run_training_locally(settings, spec)
    assert first.summary["gate"]["passed"] is True
    published = first.summary["published"]
    assert (published["name"], published["version"], published["stage"]) == ("iris", 1, "staging")
    assert published["storage_uri"] == f"{settings.store_uri}/iris/1"
    assert {c["algorithm"] for c in first.summary["candidates"]} == {"logistic_regression", "knn"}
    assert first.cached_tasks == []
    executed = [(e.task, e.item) for e in first.events if e.state == "succeeded"]
    assert sorted(executed) == [
        ("decide", ""),
        ("fingerprint", ""),
        ("prepare", ""),
        ("publish", ""),
        ("tune", "knn"),
        ("tune", "logistic_regression"),
    ]

    second = run_training_locally(settings, spec)
    assert sorted(second.cached_tasks) == ["prepare", "tune", "tune"]
    assert [e.task for e in second.events if e.state == "started"] == ["fingerprint", "decide", "publish"]

    # The same path, new content: never served from the cache.
    rows = iris_copy.read_text().splitlines()
    iris_copy.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    third = run_training_locally(settings, spec)
    assert "prepare" not in third.cached_tasks
    with Registry(settings.database_url) as registry:
        assert [d.version for d in registry.list_datasets("iris")] == [2, 1]


@SQLITE_ONLY
def test_rejected_gate_publishes_nothing_and_says_why(settings: Settings) -> None:
    spec = load_spec(EXAMPLES / "iris.yaml", [*TINY, "algorithms=[knn]", "gate.min_score=1.01"])
    run = run_training_locally(settings, spec)
    assert run.summary["published"] is None
    assert run.summary["gate"]["passed"] is False
    assert "below the minimum 1.0100" in run.summary["gate"]["reason"]
    assert "reject" in [e.task for e in run.events]
    with Registry(settings.database_url) as registry:
        assert registry.list_versions() == []


@SQLITE_ONLY
def test_invalid_data_fails_with_the_problem_list(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sepal_length,sepal_width,petal_length,petal_width,species\n" + "1,x,1,1,setosa\n" * 12)
    spec = load_spec(EXAMPLES / "iris.yaml", [*TINY, f"data.path={bad}"])
    with pytest.raises(PipelineFailed) as caught:
        run_training_locally(settings, spec)
    assert caught.value.failed_task == "prepare"
    assert caught.value.message.startswith("prepare: ")
    assert "sepal_width" in caught.value.message and "only one class" in caught.value.message
    assert caught.value.log_file.exists()
    with Registry(settings.database_url) as registry:
        assert registry.list_versions() == []


@SQLITE_ONLY
def test_cli_train_runs_the_pipeline_shows_one_line_per_task_and_auto_deploys(settings: Settings) -> None:
    sets = [arg for item in [*TINY, "algorithms=[logistic_regression]"] for arg in ("--set", item)]
    result = CliRunner().invoke(
        app, ["train", "--spec", str(EXAMPLES / "iris.yaml"), *sets, "--auto-deploy", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # KFP's own output stays in its log
    assert summary["published"]["version"] == 1
    task_lines = [line.split()[:2] for line in result.stderr.splitlines() if " done " in f"{line} "]
    assert sorted(task_lines) == [[task, "done"] for task in sorted(TASKS_OF_A_PUBLISHED_RUN)]
    unwrapped = result.stderr.replace("\n", "")  # the console wraps at 80 columns
    log_file = re.search(r"pipeline log: (\S+?kfp\.log)", unwrapped)
    assert log_file is not None and Path(log_file[1]).is_file()
    with Registry(settings.database_url) as registry:
        production = registry.production("iris")
        assert production is not None and production.version == 1


@SQLITE_ONLY
def test_cli_train_exits_1_with_the_gate_s_reason(settings: Settings) -> None:
    sets = [arg for item in [*TINY, "algorithms=[knn]", "gate.min_score=1.01"] for arg in ("--set", item)]
    result = CliRunner().invoke(app, ["train", "--spec", str(EXAMPLES / "iris.yaml"), *sets])
    assert result.exit_code == 1
    unwrapped = result.stderr.replace("\n", "")  # the console wraps at 80 columns
    assert "gate rejected: holdout f1_macro" in unwrapped and "is below the minimum 1.0100" in unwrapped
    assert "nothing was published" in unwrapped
    assert [line.split()[:2] for line in result.stderr.splitlines() if " done " in f"{line} "] == [
        ["fingerprint", "done"],
        ["prepare", "done"],
        ["tune", "done"],
        ["decide", "done"],
        ["reject", "done"],
    ]


TASKS_OF_A_PUBLISHED_RUN = ["fingerprint", "prepare", "tune", "decide", "publish", "deploy"]
