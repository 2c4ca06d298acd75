"""The model bundle: write, verify (before unpickling), load, publish and fetch from both stores."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelyard.bundle import (
    MANIFEST_NAME,
    MODEL_CARD_FILE,
    MODEL_FILE,
    REPORT_FILE,
    BundleMetadata,
    current_library_versions,
    fetch_bundle,
    load_bundle,
    manifest_digest,
    publish_bundle,
    verify_bundle,
    write_bundle,
)
from modelyard.errors import BundleIntegrityError, Conflict, InvalidInput, NotFound
from modelyard.settings import Settings
from modelyard.storage import open_store

FEATURES = ["length", "width"]
MODELYARD_VERSION = current_library_versions()["modelyard"]


@pytest.fixture(scope="module")
def training_data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 2)), columns=FEATURES)
    labels = pd.Series(np.where(frame["length"] + frame["width"] > 0, "large", "small"), name="size")
    return frame, labels


@pytest.fixture(scope="module")
def model(training_data: tuple[pd.DataFrame, pd.Series]) -> Any:
    frame, labels = training_data
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, labels)


@pytest.fixture
def metadata(model: Any) -> BundleMetadata:
    return BundleMetadata(
        name="sizes",
        algorithm="logistic_regression",
        target="size",
        features=[{"name": name, "type": "numeric"} for name in FEATURES],
        classes=model.classes_,  # a numpy array: stored as plain strings
        metrics={"f1_macro": np.float64(0.95), "accuracy": 0.9},
        params={"C": 1.0, "max_iter": np.int64(100)},
        dataset_fingerprint="sha256:abc123",
        dataset="sizes@1",
        reference_stats={"length": {"mean": np.float32(0.1), "quantiles": np.array([0.0, 0.5])}},
    )


@pytest.fixture
def bundle_dir(tmp_path: Path, model: Any, metadata: BundleMetadata) -> Path:
    dest = tmp_path / "bundle"
    write_bundle(dest, model=model, metadata=metadata, model_card="# sizes\n", report_html="<html></html>")
    return dest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- write, verify, load


def test_write_verify_load_round_trip(
    tmp_path: Path, model: Any, metadata: BundleMetadata, training_data: tuple[pd.DataFrame, pd.Series]
) -> None:
    dest = tmp_path / "out" / "sizes-1"
    written = write_bundle(
        dest,
        model=model,
        metadata=metadata,
        model_card="# sizes\n",
        report_html="<html>report</html>",
        extra_files={"model.onnx": b"onnx bytes"},
    )
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [MODEL_FILE, MANIFEST_NAME, MODEL_CARD_FILE, REPORT_FILE, "model.onnx"]
    )
    assert written.files == {name: sha256(dest / name) for name in written.files}
    assert sorted(written.files) == sorted([MODEL_FILE, MODEL_CARD_FILE, REPORT_FILE, "model.onnx"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["sizes-1"]  # no partial folder left

    on_disk = json.loads((dest / MANIFEST_NAME).read_text())
    assert on_disk["classes"] == ["large", "small"]
    assert on_disk["features"] == [
        {"name": "length", "type": "numeric"},
        {"name": "width", "type": "numeric"},
    ]
    assert on_disk["params"] == {"C": 1.0, "max_iter": 100}
    assert on_disk["reference_stats"]["length"]["quantiles"] == [0.0, 0.5]
    assert on_disk["created_at"].endswith("Z")
    assert on_disk["library_versions"] == current_library_versions()

    assert verify_bundle(dest) == written
    loaded = load_bundle(dest)
    assert loaded.metadata == written
    assert loaded.path == dest
    frame, _ = training_data
    assert (loaded.model.predict(frame) == model.predict(frame)).all()
    assert manifest_digest(dest) == sha256(dest / MANIFEST_NAME)


def test_write_refuses_a_non_empty_destination(tmp_path: Path, model: Any, metadata: BundleMetadata) -> None:
    dest = tmp_path / "bundle"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(
        Conflict, match=re.escape(f"cannot write a bundle into {dest}: it exists and is not empty")
    ):
        write_bundle(dest, model=model, metadata=metadata, model_card="", report_html="")
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder (e.g. a KFP output path) is fine
    write_bundle(empty, model=model, metadata=metadata, model_card="", report_html="")
    verify_bundle(empty)


def test_write_leaves_nothing_when_the_model_cannot_be_pickled(
    tmp_path: Path, metadata: BundleMetadata
) -> None:
    dest = tmp_path / "bundle"
    with pytest.raises(InvalidInput, match=re.escape(f"cannot pickle the model for {dest}")):
        write_bundle(dest, model=lambda x: x, metadata=metadata, model_card="", report_html="")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({MODEL_FILE: b"x"}, "extra file 'model.joblib' would replace a standard bundle file"),
        ({MANIFEST_NAME: b"x"}, "extra file 'metadata.json' would replace a standard bundle file"),
        ({"../escape": b"x"}, "extra file name '../escape' must not contain '..'"),
        ({"notes.txt": "text"}, "extra file 'notes.txt' must be bytes, got str"),
    ],
)
def test_write_refuses_bad_extra_files(
    tmp_path: Path, model: Any, metadata: BundleMetadata, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        write_bundle(
            tmp_path / "b", model=model, metadata=metadata, model_card="", report_html="", extra_files=extra
        )
    assert list(tmp_path.iterdir()) == []


def test_a_tampered_model_is_refused_before_it_is_unpickled(bundle_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(marker), "w"))  # unpickling this creates the marker file

    expected = sha256(bundle_dir / MODEL_FILE)
    (bundle_dir / MODEL_FILE).write_bytes(pickle.dumps(Payload()))
    actual = sha256(bundle_dir / MODEL_FILE)
    with pytest.raises(
        BundleIntegrityError,
        match=re.escape(f"model.joblib was altered: expected sha256 {expected}, found {actual}"),
    ) as caught:
        load_bundle(bundle_dir)
    assert caught.value.file == MODEL_FILE
    assert not marker.exists()


def test_a_missing_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / REPORT_FILE).unlink()
    with pytest.raises(
        BundleIntegrityError, match=re.escape("report.html is listed in metadata.json but missing")
    ) as caught:
        verify_bundle(bundle_dir)
    assert caught.value.file == REPORT_FILE


def test_an_unlisted_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "sub").mkdir()
    (bundle_dir / "sub" / "notes.txt").write_text("sneaked in")
    with pytest.raises(
        BundleIntegrityError, match=re.escape("sub/notes.txt is not listed in metadata.json")
    ) as caught:
        load_bundle(bundle_dir)
    assert caught.value.file == "sub/notes.txt"


def test_every_problem_is_reported(bundle_dir: Path) -> None:
    (bundle_dir / MODEL_CARD_FILE).write_text("edited")
    (bundle_dir / REPORT_FILE).unlink()
    with pytest.raises(BundleIntegrityError) as caught:
        verify_bundle(bundle_dir)
    assert "model-card.md was altered" in caught.value.message
    assert "report.html is listed in metadata.json but missing" in caught.value.message


def rewrite_metadata(bundle_dir: Path, **changes: Any) -> None:
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    raw.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del raw[key]
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda d: (d / MANIFEST_NAME).unlink(),
            "has no metadata.json: without its manifest a bundle is incomplete",
        ),
        (lambda d: (d / MANIFEST_NAME).write_text("{not json"), "metadata.json is not valid JSON"),
        (lambda d: (d / MANIFEST_NAME).write_bytes(b"\xff\xfe"), "metadata.json is not valid JSON"),
        (
            lambda d: (d / MANIFEST_NAME).write_text("[1, 2]"),
            "metadata.json must hold a JSON object, got list",
        ),
        (lambda d: rewrite_metadata(d, format_version=None), "has no integer format_version (found None)"),
        (
            lambda d: rewrite_metadata(d, format_version=99),
            f"has format_version 99, but this modelyard ({MODELYARD_VERSION}) reads only format_version 1",
        ),
        (lambda d: rewrite_metadata(d, classes=None), "metadata.json is invalid: classes: Field required"),
        (
            lambda d: rewrite_metadata(d, features=[{"name": "length", "type": "image"}]),
            "metadata.json is invalid: features.0.type: Input should be 'numeric', 'categorical' or 'text'",
        ),
        (
            lambda d: rewrite_metadata(d, surprise=1),
            "metadata.json is invalid: surprise: Extra inputs are not permitted",
        ),
        (
            lambda d: rewrite_metadata(d, files={"../../etc/passwd": "0" * 64}),
            "metadata.json is invalid: files: file name '../../etc/passwd' must not contain '..'",
        ),
        (
            lambda d: rewrite_metadata(d, files={MODEL_FILE: "not-a-digest"}),
            "model.joblib: 'not-a-digest' is not a lowercase hex sha256 digest",
        ),
        (
            lambda d: rewrite_metadata(d, files={MODEL_FILE: sha256(d / MODEL_FILE)}),
            "model-card.md is not listed in metadata.json",
        ),
    ],
)
def test_a_bad_manifest_is_refused(bundle_dir: Path, corrupt: Any, message: str) -> None:
    corrupt(bundle_dir)
    with pytest.raises(BundleIntegrityError, match=re.escape(message)):
        load_bundle(bundle_dir)


def test_verify_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=re.escape(f"no bundle at {tmp_path / 'absent'}: not a directory")):
        verify_bundle(tmp_path / "absent")
    with pytest.raises(BundleIntegrityError, match=re.escape("has no metadata.json")):
        manifest_digest(tmp_path)


def test_the_manifest_digest_pins_the_metadata(bundle_dir: Path) -> None:
    before = manifest_digest(bundle_dir)
    rewrite_metadata(bundle_dir, classes=["small", "large"])  # still verifies: metadata is the root of trust
    verify_bundle(bundle_dir)
    assert manifest_digest(bundle_dir) != before  # ...which is why the registry records this digest


def test_load_warns_when_scikit_learn_differs(
    tmp_path: Path, model: Any, metadata: BundleMetadata, caplog: pytest.LogCaptureFixture
) -> None:
    old = metadata.model_copy(
        update={"library_versions": {**metadata.library_versions, "scikit-learn": "0.0.1"}}
    )
    write_bundle(tmp_path / "b", model=model, metadata=old, model_card="", report_html="")
    with caplog.at_level(logging.WARNING, logger="modelyard.bundle"):
        load_bundle(tmp_path / "b")
    installed = current_library_versions()["scikit-learn"]
    assert f"was trained with scikit-learn 0.0.1 but this process has {installed}" in caplog.text


def test_load_refuses_an_object_without_predict(tmp_path: Path, metadata: BundleMetadata) -> None:
    write_bundle(tmp_path / "b", model={"not": "a model"}, metadata=metadata, model_card="", report_html="")
    with pytest.raises(
        BundleIntegrityError, match=re.escape("model.joblib holds a dict, which has no predict()")
    ):
        load_bundle(tmp_path / "b")


# ---------------------------------------------------------------- metadata validation


def metadata_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "sizes",
        "algorithm": "logistic_regression",
        "target": "size",
        "features": [{"name": "length", "type": "numeric"}],
        "classes": ["large", "small"],
        "dataset_fingerprint": "abc",
    }
    fields.update(changes)
    return fields


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Not A Name"}, "name\n  String should match pattern"),
        ({"features": []}, "features\n  List should have at least 1 item"),
        ({"features": [{"name": "a", "type": "numeric"}] * 2}, "features: declared more than once: a"),
        ({"features": [{"name": "size", "type": "numeric"}]}, "the target 'size' cannot also be a feature"),
        ({"classes": [True, False]}, "class labels must be strings or integers, got True"),
        ({"classes": ["a", "a"]}, "class labels must be unique"),
        ({"dataset": "sizes"}, "dataset\n  String should match pattern"),
        ({"created_at": datetime(2026, 1, 1)}, "created_at must carry a timezone"),
        ({"reference_stats": {"x": object()}}, "reference_stats.x: object is not JSON-serialisable"),
        ({"format_version": 2}, "format_version 2 is not supported (this modelyard reads: 1)"),
    ],
)
def test_metadata_names_each_bad_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        BundleMetadata(**metadata_fields(**changes))


def test_metadata_keeps_integer_classes_and_records_nan_metrics() -> None:
    metadata = BundleMetadata(
        **metadata_fields(classes=np.array([0, 1, 2]), metrics={"roc_auc": float("nan")})
    )
    again = BundleMetadata.model_validate_json(metadata.to_json_bytes())
    assert again.classes == [0, 1, 2]
    assert np.isnan(again.metrics["roc_auc"])
    assert again.created_at == metadata.created_at
    assert again.feature_names == ["length"]


# ---------------------------------------------------------------- publish and fetch, on both stores


def test_fetch_from_the_store_then_load_and_predict(
    settings: Settings,
    bundle_dir: Path,
    tmp_path: Path,
    training_data: tuple[pd.DataFrame, pd.Series],
    model: Any,
) -> None:
    store = open_store(settings.store_uri, settings.s3)
    uri = publish_bundle(bundle_dir, store, "sizes/1")
    assert uri == f"{settings.store_uri}/sizes/1"

    local = fetch_bundle(uri, tmp_path / "fetched", settings.s3)
    loaded = load_bundle(local)
    frame, _ = training_data
    assert (loaded.model.predict(frame) == model.predict(frame)).all()
    assert manifest_digest(local) == manifest_digest(bundle_dir)
    if uri.startswith("file://"):
        assert local == Path(uri.removeprefix("file://"))  # already local: verified in place
    else:
        assert local == tmp_path / "fetched"
        assert fetch_bundle(uri, local, settings.s3) == local  # already there: reused after verification
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial-")] == []
        other = tmp_path / "other"
        other.mkdir()
        (other / "x").write_text("x")
        with pytest.raises(Conflict, match=re.escape(f"cannot fetch {uri} into {other}: it is not empty")):
            fetch_bundle(uri, other, settings.s3)


def test_fetch_refuses_an_unpublished_version(settings: Settings, tmp_path: Path) -> None:
    store = open_store(settings.store_uri, settings.s3)
    store.put_bytes("sizes/2/model.joblib", b"half a publish")  # files without the manifest
    uri = store.uri_for("sizes/2")
    message = f"no published bundle at {uri}: {uri}/metadata.json does not exist"
    with pytest.raises(NotFound, match=re.escape(message)):
        fetch_bundle(uri, tmp_path / "fetched", settings.s3)
    with pytest.raises(NotFound, match=re.escape(message.replace("sizes/2", "sizes/3"))):
        fetch_bundle(store.uri_for("sizes/3"), tmp_path / "fetched", settings.s3)
    assert not (tmp_path / "fetched").exists()


def test_fetch_refuses_a_tampered_remote_bundle(settings: Settings, bundle_dir: Path, tmp_path: Path) -> None:
    store = open_store(settings.store_uri, settings.s3)
    uri = publish_bundle(bundle_dir, store, "sizes/1")
    store.put_bytes("sizes/1/model.joblib", b"swapped after publishing")
    with pytest.raises(
        BundleIntegrityError, match=re.escape(f"bundle {uri} failed verification: model.joblib")
    ):
        fetch_bundle(uri, tmp_path / "fetched", settings.s3)
    assert not (tmp_path / "fetched").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial-")] == []


def test_publish_bundle_verifies_first(settings: Settings, bundle_dir: Path) -> None:
    store = open_store(settings.store_uri, settings.s3)
    (bundle_dir / MODEL_FILE).write_bytes(b"corrupted before publishing")
    with pytest.raises(BundleIntegrityError, match=re.escape("model.joblib was altered")):
        publish_bundle(bundle_dir, store, "sizes/1")
    assert store.list() == []


def test_library_versions_name_the_stack_a_model_depends_on() -> None:
    import sklearn

    versions = current_library_versions()
    assert set(versions) >= {"python", "modelyard", "scikit-learn", "numpy", "scipy", "pandas", "joblib"}
    assert versions["scikit-learn"] == sklearn.__version__
