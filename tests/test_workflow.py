"""The in-process training run: the gate against production, and atomic publishing."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.errors import BundleIntegrityError
from modelyard.publishing import publish_version
from modelyard.registry import Registry, Stage
from modelyard.settings import Settings
from modelyard.spec import load_spec
from modelyard.storage import open_store
from modelyard.workflow import run_training

IRIS = Path(__file__).resolve().parent.parent / "examples" / "iris.yaml"
FAST = ["search.trials=2", "cv_folds=3", "algorithms=[logistic_regression]", "gate.min_score=0.5"]


def test_a_worse_model_never_replaces_production(settings: Settings) -> None:
    good = run_training(settings, load_spec(IRIS, FAST), stage=Stage.PRODUCTION)
    assert good.published is not None and good.published.stage is Stage.PRODUCTION

    # One weak feature: still above the spec's minimum of 0, but worse than production on the same rows.
    weak_spec = load_spec(IRIS, [*FAST, "gate.min_score=0", "features=[{name: sepal_width, type: numeric}]"])
    weak = run_training(settings, weak_spec)
    assert weak.published is None
    assert not weak.verdict.passed
    assert weak.verdict.production_version == 1
    assert weak.verdict.production_score is not None and weak.verdict.score < weak.verdict.production_score
    assert "is worse than production iris@1" in weak.verdict.reason
    with Registry(settings.database_url) as registry:
        assert [v.version for v in registry.list_versions("iris")] == [1]
        production = registry.production("iris")
        assert production is not None and production.version == 1


def test_an_equal_or_better_model_passes_against_production(settings: Settings) -> None:
    run_training(settings, load_spec(IRIS, FAST), stage=Stage.PRODUCTION)
    again = run_training(settings, load_spec(IRIS, FAST))
    assert again.verdict.passed, again.verdict.reason
    assert "no worse than production iris@1" in again.verdict.reason
    assert again.published is not None and again.published.version == 2
    assert again.published.stage is Stage.STAGING


@pytest.fixture
def published_bundle(settings: Settings) -> Path:
    """A local copy of a trained bundle, ready to publish again."""
    outcome = run_training(settings, load_spec(IRIS, FAST))
    assert outcome.published is not None
    store = open_store(settings.store_uri, settings.s3)
    local = settings.home / "bundle-copy"
    store.download_dir("iris/1", local)
    return local


def test_leftovers_of_an_interrupted_publish_are_replaced(settings: Settings, published_bundle: Path) -> None:
    store = open_store(settings.store_uri, settings.s3)
    store.put_bytes("iris/2/model.joblib", b"half-written by a publish that crashed")
    record = publish_version(settings, published_bundle)
    assert record.version == 2
    assert store.get_bytes("iris/2/model.joblib") == (published_bundle / "model.joblib").read_bytes()


def test_a_tampered_bundle_is_refused_and_consumes_no_version(
    settings: Settings, published_bundle: Path
) -> None:
    (published_bundle / "model.joblib").write_bytes(b"not the model that was trained")
    with pytest.raises(BundleIntegrityError, match=r"model\.joblib"):
        publish_version(settings, published_bundle)
    with Registry(settings.database_url) as registry:
        assert [v.version for v in registry.list_versions("iris")] == [1]
    assert not open_store(settings.store_uri, settings.s3).exists("iris/2/metadata.json")


def test_production_that_cannot_be_scored_on_the_new_data_blocks_the_gate(
    settings: Settings, tmp_path: Path
) -> None:
    run_training(settings, load_spec(IRIS, FAST), stage=Stage.PRODUCTION)
    narrow = tmp_path / "narrow.csv"
    lines = (IRIS.parent / "data" / "iris.csv").read_text().splitlines()
    narrow.write_text(
        "\n".join(",".join(line.split(",")[1::3]) for line in lines) + "\n"
    )  # sepal_width,species
    spec = load_spec(
        IRIS,
        [*FAST, f"data.path={narrow}", "features=[{name: sepal_width, type: numeric}]", "gate.min_score=0"],
    )
    outcome = run_training(settings, spec)
    assert outcome.published is None
    assert "cannot score production iris@1 on this holdout" in outcome.verdict.reason
    assert "sepal_length, petal_length, petal_width" in outcome.verdict.reason
