"""Turn a training result into a bundle, and publish a bundle: files first, verified, registry row last.

The order is the contract of DESIGN.md: a version number is reserved (a row lock, so concurrent publishes
of one name queue up), the bundle is uploaded under ``<name>/<version>/`` with its manifest last, fetched
back and verified, and only then is the registry row written. If anything fails, no row exists and the
number is handed out again; files an interrupted publish left under that number are replaced.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from modelyard.bundle import (
    EVALUATION_FILE,
    BundleMetadata,
    current_library_versions,
    fetch_bundle,
    manifest_digest,
    publish_bundle,
    verify_bundle,
    write_bundle,
)
from modelyard.data.fingerprint import fingerprint_frame
from modelyard.data.profile import reference_statistics
from modelyard.errors import BundleIntegrityError
from modelyard.monitoring.reference import drift_reference
from modelyard.onnx_export import export_onnx
from modelyard.registry import ModelVersionRecord, Registry, Stage
from modelyard.settings import Settings
from modelyard.storage import open_store
from modelyard.training.train import TrainingResult

log = logging.getLogger(__name__)


def write_training_bundle(
    result: TrainingResult,
    dest_dir: Path,
    *,
    reference_frame: pd.DataFrame,
    dataset: str | None = None,
) -> BundleMetadata:
    """Write the bundle of a training run: the winning model, its metadata, model card and report.

    ``reference_frame`` (the training rows) is profiled into the drift reference the server compares
    live traffic against. The model is also exported to ONNX and kept as ``model.onnx`` only if its
    probabilities match scikit-learn's on every holdout row; ``metadata.onnx`` records the outcome.
    """
    onnx = export_onnx(result.model, result.features, result.classes, result.holdout)
    reference_stats = reference_statistics(reference_frame, result.features, target=result.target)
    holdout = result.holdout[[f.name for f in result.features]]
    reference_stats["drift"] = drift_reference(
        reference_frame,
        result.features,
        holdout_probabilities=result.model.predict_proba(holdout),
        holdout_labels=list(result.holdout[result.target]),
        classes=result.classes,
    )
    metadata = BundleMetadata(
        name=result.spec_name,
        algorithm=result.winner.algorithm.value,
        target=result.target,
        features=result.features,
        classes=result.classes,
        metrics=result.evaluation.metrics,
        params=result.winner.best_params,
        dataset_fingerprint=result.dataset_fingerprint or fingerprint_frame(reference_frame),
        dataset=dataset,
        library_versions=current_library_versions(),
        reference_stats=reference_stats,
        created_at=datetime.now(UTC),
        files={},
        onnx=onnx.info,
    )
    return write_bundle(
        dest_dir,
        model=result.model,
        metadata=metadata,
        model_card=result.model_card_md,
        report_html=result.report_html,
        extra_files={**onnx.extra_files, EVALUATION_FILE: evaluation_json(result)},
    )


def evaluation_json(result: TrainingResult) -> bytes:
    """The holdout evaluation and every candidate's CV score, for the console's plots and tables."""
    document = {
        "evaluation": result.evaluation.to_dict(),
        "candidates": [candidate.to_dict() for candidate in result.candidates],
    }
    return json.dumps(document, indent=2, default=str).encode("utf-8")


def publish_version(
    settings: Settings,
    bundle_dir: Path,
    *,
    stage: Stage = Stage.STAGING,
    dataset_id: int | None = None,
    registry: Registry | None = None,
) -> ModelVersionRecord:
    """Publish a local bundle as the next version of its model and record it in the registry."""
    metadata = verify_bundle(bundle_dir)
    digest = manifest_digest(bundle_dir)
    store = open_store(settings.store_uri, settings.s3)
    owned = registry is None
    registry = registry or Registry(settings.database_url)
    try:
        with registry.reserve_version(metadata.name) as reservation:
            key = f"{metadata.name}/{reservation.version}"
            if store.exists(key) or store.list(key):
                # Holding the reservation means no row has this number: these are leftovers of a
                # publish that failed after uploading, never a version anyone was told about.
                log.warning("replacing files of an interrupted publish at %s", store.uri_for(key))
                store.delete_prefix(key)
            uri = publish_bundle(bundle_dir, store, key)
            _verify_published(uri, digest, settings)
            return reservation.record(
                storage_uri=uri,
                sha256=digest,
                metrics=metadata.metrics,
                params=metadata.params,
                algorithm=metadata.algorithm,
                dataset_id=dataset_id,
                dataset_fingerprint=metadata.dataset_fingerprint or None,
                stage=stage,
                run_id=settings.pipeline.run_id or None,
            )
    finally:
        if owned:
            registry.close()


def _verify_published(uri: str, expected_digest: str, settings: Settings) -> None:
    """Read the published bundle back and check every file, before the registry row makes it visible."""
    with tempfile.TemporaryDirectory(prefix="modelyard-verify-") as scratch:
        local = fetch_bundle(uri, Path(scratch) / "bundle", s3=settings.s3)
        found = manifest_digest(local)
    if found != expected_digest:
        raise BundleIntegrityError(
            f"the manifest published at {uri} has sha256 {found}, expected {expected_digest}",
            file="metadata.json",
        )
