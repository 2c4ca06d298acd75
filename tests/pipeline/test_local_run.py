"""The training pipeline end to end on kfp.local, as `modelyard train` runs it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.pipeline.local import PipelineFailed, _captured_stdout, _LineTap, run_training_locally
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
    executed = [e.task for e in first.events if e.status == "SUCCESS"]
    assert executed.count("tune") == 2 and "publish" in executed and "reject" not in executed

    second = run_training_locally(settings, spec)
    assert sorted(second.cached_tasks) == [
        "evaluate",
        "ingest",
        "select",
        "split",
        "tune",
        "tune",
        "validate",
    ]

    # The same path, new content: never served from the cache.
    rows = iris_copy.read_text().splitlines()
    iris_copy.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    third = run_training_locally(settings, spec)
    assert "ingest" not in third.cached_tasks
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
@pytest.mark.parametrize("warm_tasks", [True, False], ids=["warm-tasks", "a-process-per-task"])
def test_invalid_data_fails_with_the_problem_list(
    settings: Settings, tmp_path: Path, warm_tasks: bool
) -> None:
    settings.pipeline.warm_tasks = warm_tasks
    bad = tmp_path / "bad.csv"
    bad.write_text("sepal_length,sepal_width,petal_length,petal_width,species\n" + "1,x,1,1,setosa\n" * 12)
    spec = load_spec(EXAMPLES / "iris.yaml", [*TINY, f"data.path={bad}"])
    with pytest.raises(PipelineFailed) as caught:
        run_training_locally(settings, spec)
    assert caught.value.failed_task == "validate"
    assert caught.value.message.startswith("validate: ")
    assert "sepal_width" in caught.value.message and "only one class" in caught.value.message
    assert caught.value.log_file.exists()
    with Registry(settings.database_url) as registry:
        assert registry.list_versions() == []


@SQLITE_ONLY
def test_cli_train_runs_the_pipeline_and_auto_deploys(settings: Settings) -> None:
    sets = [arg for item in [*TINY, "algorithms=[logistic_regression]"] for arg in ("--set", item)]
    result = CliRunner().invoke(
        app, ["train", "--spec", str(EXAMPLES / "iris.yaml"), *sets, "--auto-deploy", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["published"]["version"] == 1
    assert "publish" in result.stderr and "pipeline log:" in result.stderr
    with Registry(settings.database_url) as registry:
        production = registry.production("iris")
        assert production is not None and production.version == 1


def test_root_logger_is_left_as_found_when_a_task_thread_leaks_its_handler(tmp_path: Path) -> None:
    # kfp.local's per-task logger swap races across loop threads; one may leave a handler bound to the tap
    root = logging.getLogger()
    before, level = root.handlers[:], root.level
    with (tmp_path / "run.log").open("w", encoding="utf-8") as log:
        tap = _LineTap(log, lambda _event: None)
        with _captured_stdout(tap):
            root.addHandler(logging.StreamHandler(sys.stdout))
            root.setLevel(logging.DEBUG)
    assert root.handlers == before and root.level == level
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        logging.getLogger("modelyard.test").warning("after the run")
    assert "Logging error" not in stderr.getvalue()
