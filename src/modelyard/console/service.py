"""What the console shows and does, without HTTP: the registry's models and versions, a version's bundle
files, comparisons, predictions through a V2 endpoint, batch scoring, the monitoring report, and stage
changes. The page and its JSON API both call these functions; each returns plain JSON-able data or raises
a ModelyardError whose message the page shows.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from modelyard.bundle import EVALUATION_FILE, MANIFEST_NAME, MODEL_CARD_FILE, REPORT_FILE, BundleMetadata
from modelyard.errors import (
    BundleIntegrityError,
    DataValidationError,
    InvalidInput,
    ModelyardError,
    NotFound,
    NotReady,
)
from modelyard.registry import ModelVersionRecord, Registry, Stage
from modelyard.settings import Settings
from modelyard.spec import FeatureType
from modelyard.storage import open_store_from_uri

PREDICT_TIMEOUT_S = 30.0


def version_summary(record: ModelVersionRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "version": record.version,
        "ref": record.ref,
        "stage": record.stage.value,
        "algorithm": record.algorithm,
        "metrics": record.metrics,
        "params": record.params,
        "dataset": record.dataset,
        "dataset_fingerprint": record.dataset_fingerprint,
        "storage_uri": record.storage_uri,
        "sha256": record.sha256,
        "created_at": record.created_at.isoformat(),
        "promoted_at": record.promoted_at.isoformat() if record.promoted_at else None,
    }


def list_models(registry: Registry, *, live_hours: float | None = None) -> list[dict[str, Any]]:
    """Every model with its versions, its production and staging versions, and its latest metrics; with
    ``live_hours``, also the predictions and live accuracy of that many last hours (all versions)."""
    by_name: dict[str, list[ModelVersionRecord]] = {}
    for record in registry.list_versions():
        by_name.setdefault(record.name, []).append(record)
    models = []
    for name, records in sorted(by_name.items()):
        records.sort(key=lambda r: r.version)
        latest = records[-1]
        production = next((r.version for r in records if r.stage is Stage.PRODUCTION), None)
        staging = [r.version for r in records if r.stage is Stage.STAGING]
        models.append(
            {
                "name": name,
                "versions": [version_summary(r) for r in records],
                "production": production,
                "staging": staging[-1] if staging else None,
                "latest": latest.version,
                "latest_metrics": latest.metrics,
                "live": None if live_hours is None else _live(registry, name, live_hours),
            }
        )
    return models


def _live(registry: Registry, name: str, hours: float) -> dict[str, Any]:
    """Predicted and labelled rows and live accuracy over the last ``hours``: one query, no bundle read."""
    from modelyard.monitoring.accuracy import live_accuracy

    until = datetime.now(UTC)
    window = live_accuracy(registry.engine, name, since=until - timedelta(hours=hours), until=until)
    return {
        "hours": hours,
        "predicted_rows": window.predicted_rows,
        "labelled_rows": window.labelled_rows,
        "accuracy": window.accuracy,
    }


class BundleFiles:
    """The small files of a registered version's bundle, each checked against metadata.json's sha256."""

    def __init__(self, settings: Settings, record: ModelVersionRecord) -> None:
        self._store, self._key = open_store_from_uri(record.storage_uri, settings.s3)
        self.record = record
        self.metadata = BundleMetadata.model_validate_json(
            self._store.get_bytes(f"{self._key}/{MANIFEST_NAME}")
        )

    def read(self, name: str) -> bytes | None:
        """The file's bytes; None when this bundle has no such file (older bundles lack evaluation.json)."""
        expected = self.metadata.files.get(name)
        if expected is None:
            return None
        data = self._store.get_bytes(f"{self._key}/{name}")
        if hashlib.sha256(data).hexdigest() != expected:
            raise BundleIntegrityError(
                f"{name} of {self.record.ref} does not match the sha256 in its metadata.json", file=name
            )
        return data


def version_detail(settings: Settings, registry: Registry, name: str, version: int) -> dict[str, Any]:
    """A version's registry row plus its bundle: features, classes, evaluation, candidates, model card."""
    record = registry.get_version(name, version)
    files = BundleFiles(settings, record)
    evaluation_bytes = files.read(EVALUATION_FILE)
    evaluation = json.loads(evaluation_bytes) if evaluation_bytes is not None else {}
    card = files.read(MODEL_CARD_FILE)
    metadata = files.metadata
    return {
        **version_summary(record),
        "target": metadata.target,
        "features": [feature.model_dump(mode="json") for feature in metadata.features],
        "classes": metadata.classes,
        "library_versions": metadata.library_versions,
        "bundle_created_at": metadata.created_at.isoformat(),
        "onnx": None if metadata.onnx is None else metadata.onnx.model_dump(mode="json"),
        "evaluation": evaluation.get("evaluation"),
        "candidates": evaluation.get("candidates", []),
        "model_card": card.decode("utf-8") if card is not None else "",
        "files": sorted(metadata.files),
        "form": form_fields(metadata),
    }


def form_fields(metadata: BundleMetadata) -> list[dict[str, Any]]:
    """The predict form: a field per feature; categories offer the training data's frequent values, and
    numbers start at the training median."""
    profiles = metadata.reference_stats.get("features", {})
    fields = []
    for feature in metadata.features:
        profile = profiles.get(feature.name, {}) if isinstance(profiles, dict) else {}
        choices = sorted(profile.get("frequencies", {})) if feature.type is FeatureType.CATEGORICAL else []
        default = profile.get("quantiles", {}).get("0.5") if feature.type is FeatureType.NUMERIC else None
        fields.append(
            {"name": feature.name, "type": feature.type.value, "choices": choices, "default": default}
        )
    return fields


def report_html(settings: Settings, registry: Registry, name: str, version: int) -> str:
    record = registry.get_version(name, version)
    data = BundleFiles(settings, record).read(REPORT_FILE)
    if data is None:
        raise NotFound(f"{record.ref} has no {REPORT_FILE}")
    return data.decode("utf-8")


def parse_versions(name: str, versions: Sequence[str]) -> list[int]:
    """Versions to compare, from ``?v=1&v=2`` or ``?v=1,2``: at least two distinct positive integers."""
    numbers: list[int] = []
    for item in versions:
        for part in item.split(","):
            text = part.strip()
            if not text:
                continue
            if not text.isdigit() or int(text) < 1:
                raise InvalidInput(f"compare {name}: a version is a positive integer, got {text!r}")
            if int(text) not in numbers:
                numbers.append(int(text))
    if len(numbers) < 2:
        raise InvalidInput(f"compare {name}: choose at least two different versions, got {numbers or 'none'}")
    return sorted(numbers)


def compare(settings: Settings, registry: Registry, name: str, versions: Sequence[int]) -> dict[str, Any]:
    """Versions side by side, and the parameters and data that differ between them."""
    details = [version_detail(settings, registry, name, version) for version in versions]
    param_names = sorted({key for detail in details for key in detail["params"]})
    changed_params = {
        key: [detail["params"].get(key) for detail in details]
        for key in param_names
        if len({json.dumps(detail["params"].get(key), sort_keys=True) for detail in details}) > 1
    }
    metric_names = sorted({key for detail in details for key in detail["metrics"]})
    return {
        "name": name,
        "versions": details,
        "metrics": {key: [detail["metrics"].get(key) for detail in details] for key in metric_names},
        "changed_params": changed_params,
        "same_data": len({detail["dataset_fingerprint"] for detail in details}) == 1,
        "changed_algorithm": len({detail["algorithm"] for detail in details}) > 1,
    }


def _coerce(feature_type: FeatureType, name: str, value: Any) -> Any:
    if feature_type is FeatureType.NUMERIC:
        if isinstance(value, bool):
            raise InvalidInput(f"feature {name!r} is numeric, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"feature {name!r} is numeric, got {value!r}") from None
    if value is None:
        raise InvalidInput(f"feature {name!r} needs a value")
    return str(value)


def predict(
    settings: Settings, registry: Registry, ref_name: str, version: int, row: dict[str, Any]
) -> dict[str, Any]:
    """One row posted to the V2 endpoint (MODELYARD_CONSOLE__PREDICTOR_URL): its label and probabilities."""
    record = registry.get_version(ref_name, version)
    metadata = BundleFiles(settings, record).metadata
    missing = [
        feature.name for feature in metadata.features if feature.name not in row or row[feature.name] == ""
    ]
    if missing:
        raise InvalidInput(f"fill in every feature: missing {', '.join(missing)}")
    inputs = []
    for feature in metadata.features:
        value = _coerce(feature.type, feature.name, row[feature.name])
        datatype = "FP64" if feature.type is FeatureType.NUMERIC else "BYTES"
        inputs.append({"name": feature.name, "shape": [1], "datatype": datatype, "data": [value]})
    url = f"{settings.console.predictor_url.rstrip('/')}/v2/models/{record.name}/infer"
    answer = _post_json(url, {"inputs": inputs})
    outputs = {output["name"]: output for output in answer.get("outputs", [])}
    if "label" not in outputs:
        raise NotReady(f"the predictor at {url} answered without a 'label' output")
    label = outputs["label"]["data"][0]
    probabilities: dict[str, float] = {}
    if "probabilities" in outputs:
        values = outputs["probabilities"]["data"]
        probabilities = {str(c): float(p) for c, p in zip(metadata.classes, values, strict=False)}
    return {
        "model": record.name,
        "version": record.version,
        "predictor": url,
        "served_version": answer.get("model_version"),
        "label": label,
        "probabilities": probabilities,
    }


def _post_json(url: str, document: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=PREDICT_TIMEOUT_S) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            message = json.loads(body).get("error", body)
        except ValueError:
            message = body
        error = InvalidInput if 400 <= exc.code < 500 else NotReady
        raise error(f"the predictor at {url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotReady(f"cannot reach the predictor at {url}: {reason}") from None


def score_csv(settings: Settings, ref: str, content: bytes, scratch: Path) -> tuple[Path, dict[str, Any]]:
    """Score an uploaded CSV through the batch scoring path; return the scored CSV's path and the summary."""
    from modelyard.pipeline.scoring_steps import score

    if not content.strip():
        raise InvalidInput("the uploaded file is empty: choose a CSV with a header row and data rows")
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the uploaded file is not UTF-8 text (byte {exc.start}): upload a CSV file"
        ) from None
    source = scratch / "upload.csv"
    source.write_bytes(content)
    output = scratch / "scored.csv"
    try:
        summary = score(settings, ref, str(source), str(output))
    except DataValidationError as exc:
        raise DataValidationError(exc.problems, source="the uploaded CSV") from None
    except ModelyardError as exc:
        if str(source) not in exc.message:
            raise
        # The scratch path means nothing to the person who uploaded the file.
        raise InvalidInput(exc.message.replace(str(source), "the uploaded CSV")) from None
    except ValueError as exc:  # a parser's own error (pandas, pyarrow) names the line: the file's fault
        raise InvalidInput(f"the uploaded CSV could not be read: {exc}") from None
    return output, summary.to_dict()


def monitoring(settings: Settings, registry: Registry, name: str, since_hours: float) -> dict[str, Any]:
    """The monitoring report of ``name``'s production (else latest) version over the last hours."""
    from modelyard.monitoring.report import build_report

    if not 0 < since_hours <= 24 * 90:
        raise InvalidInput(f"hours must be between 0 and {24 * 90}, got {since_hours}")
    versions = registry.list_versions(name)
    if not versions:
        raise NotFound(f"model {name!r} is not in the registry")
    record = registry.production(name) or versions[-1]
    metadata = BundleFiles(settings, record).metadata
    numeric = [f.name for f in metadata.features if f.type is FeatureType.NUMERIC]
    report = build_report(
        registry.engine,
        name,
        since=timedelta(hours=since_hours),
        reference_stats=metadata.reference_stats,
        numeric_columns=numeric,
    )
    return {**report.to_dict(), "reference_version": record.version}


def promote(registry: Registry, name: str, version: int) -> dict[str, Any]:
    return version_summary(registry.promote(name, version))


def rollback(registry: Registry, name: str) -> dict[str, Any]:
    return version_summary(registry.rollback(name))


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="modelyard-console-")
